"""Properties every policy must keep, on arbitrary bids and terms."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crankmesh.market import (
    BASE_FILTERS,
    POLICIES,
    SLO_FILTERS,
    Candidate,
    Terms,
    apply_filters,
    effective_p95_us,
    expected_latency_us,
    select,
)
from crankmesh.protocol.errors import NoEligibleBid

NOW = 1_000_000
_lat = st.none() | st.integers(0, 100_000)


@st.composite
def candidate_lists(draw: st.DrawFn) -> list[Candidate]:
    n = draw(st.integers(0, 6))
    out = []
    for i in range(n):
        out.append(
            Candidate(
                bid_cid=f"bafy-{i}",
                executor=f"did:key:z6Mk{draw(st.integers(0, 3))}",
                price_micros=draw(st.integers(0, 5000)),
                currency=draw(st.sampled_from(["USD", "USD", "USD", "EUR"])),
                p50_us=draw(_lat),
                p95_us=draw(_lat),
                p99_us=draw(_lat),
                accuracy_ppm=draw(st.none() | st.integers(900_000, 1_000_000)),
                running=draw(st.integers(0, 3)),
                queued=draw(st.integers(0, 3)),
                capacity=draw(st.integers(1, 3)),
                est_latency_us=draw(_lat),
                network_rtt_us=draw(_lat),
                local=draw(st.booleans()),
                degraded=draw(st.booleans()),
                reputation=draw(st.none() | st.sampled_from([0.0, 0.3, 0.7, 1.0])),
                observed_p95_us=draw(_lat),
                expires_ms=draw(st.integers(NOW - 10, NOW + 10)),
                arrival=draw(st.integers(0, 3)),  # duplicates allowed: order must stay stable
            )
        )
    return out


terms_st = st.builds(
    Terms,
    max_price_micros=st.none() | st.integers(0, 5000),
    budget_remaining_micros=st.none() | st.integers(0, 5000),
    slo_p95_us=st.none() | st.integers(0, 100_000),
    slo_p99_us=st.none() | st.integers(0, 100_000),
    min_accuracy_ppm=st.none() | st.integers(900_000, 1_000_000),
    min_reputation=st.none() | st.sampled_from([0.2, 0.5, 0.8]),
    allow_degraded=st.booleans(),
)


def check_policy(policy: str, cands: list[Candidate], terms: Terms) -> None:
    ranking = select(cands, terms, policy, NOW)
    filters = BASE_FILTERS + SLO_FILTERS if policy == "slo" else BASE_FILTERS
    passed, rejected = apply_filters(cands, terms, NOW, filters)
    # eligible is a permutation of exactly the candidates passing the filters
    assert Counter(map(id, ranking.candidates)) == Counter(map(id, passed))
    assert [r.candidate for r in ranking.rejected] == [r.candidate for r in rejected]
    assert len(ranking.eligible) + len(ranking.rejected) == len(cands)
    assert [s.rank for s in ranking.eligible] == list(range(1, len(passed) + 1))
    scores = [s.score for s in ranking.eligible]
    assert scores == sorted(scores)
    winner = ranking.winner
    if winner is None:
        assert not passed
        if cands:
            with pytest.raises(NoEligibleBid) as info:
                ranking.raise_if_empty("bafy-job")
            assert len(info.value.failures) == len(cands)
            for c, line in zip(cands, info.value.failures, strict=True):
                assert c.bid_cid in line and c.executor in line
        return
    # the winner is always eligible...
    assert winner in cands
    assert winner.expires_ms > NOW
    assert winner.currency == terms.currency
    limit = terms.price_limit_micros
    assert limit is None or winner.price_micros <= limit
    assert terms.allow_degraded or not winner.degraded
    if policy == "slo" and terms.slo_p95_us is not None:
        p95 = effective_p95_us(winner)
        assert p95 is not None and p95 <= terms.slo_p95_us
    # ...and optimal for its policy's score
    eligible = ranking.candidates
    if policy in ("cost", "slo"):
        assert winner.price_micros == min(c.price_micros for c in eligible)
    elif policy == "balanced":
        assert winner.load == min(c.load for c in eligible)
    elif policy == "greedy":
        assert winner.arrival == min(c.arrival for c in eligible)
    elif policy == "latency":
        assert expected_latency_us(winner) == min(expected_latency_us(c) for c in eligible)
    # and it always explains itself, one table row per bid
    text = ranking.explanation("bafy-job").render()
    assert text.count("\n") >= len(cands) + 5


@settings(max_examples=80, deadline=None)
@given(cands=candidate_lists(), terms=terms_st)
def test_every_policy_ranks_a_permutation_of_eligible_bids_best_first(
    cands: list[Candidate], terms: Terms
) -> None:
    for policy in POLICIES:
        check_policy(policy, cands, terms)


@settings(max_examples=30, deadline=None)
@given(cands=candidate_lists(), terms=terms_st, data=st.data())
def test_ranking_does_not_depend_on_input_order(
    cands: list[Candidate], terms: Terms, data: st.DataObject
) -> None:
    # arrival numbers are unique in practice; with them unique the order is fully determined
    cands = [
        Candidate(**{**{f: getattr(c, f) for f in c.__dataclass_fields__}, "arrival": i})
        for i, c in enumerate(cands)
    ]
    shuffled = data.draw(st.permutations(cands))
    for policy in POLICIES:
        a = select(cands, terms, policy, NOW).candidates
        b = select(shuffled, terms, policy, NOW).candidates
        assert a == b
