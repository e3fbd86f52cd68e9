from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from crankmesh.market import (
    BASE_FILTERS,
    POLICIES,
    Candidate,
    KeyPolicy,
    Policy,
    Ranking,
    ScoredCandidate,
    Terms,
    apply_filters,
    expected_latency_us,
    get_policy,
    policy_from_key,
    select,
)
from crankmesh.protocol.errors import NoEligibleBid, SelectionError

NOW = 10_000
MS = 1000


def did(name: str) -> str:
    return f"did:key:z6Mk{name}"


def bid(name: str, **kw: Any) -> Candidate:
    fields: dict[str, Any] = {
        "bid_cid": f"bafy-{name}",
        "executor": did(name),
        "price_micros": 1000,
        "currency": "USD",
        "expires_ms": NOW + 60_000,
    }
    fields.update(kw)
    return Candidate(**fields)


# Five executors, each best at something different:
#   policy    winner   why
#   greedy    mid      arrived first
#   balanced  idle     load 0
#   cost      cheap    800 µUSD
#   latency   fast     3 ms + 1×3/4 ms queue + 1 ms RTT = 4.75 ms
#   slo       queued   cheapest with p95 ≤ 50 ms (cheap misses it)
FIXTURE = (
    bid("mid", price_micros=1500, p50_us=10 * MS, p95_us=30 * MS, running=2, capacity=4,
        network_rtt_us=2 * MS, accuracy_ppm=995_000, arrival=0),
    bid("cheap", price_micros=800, p50_us=40 * MS, p95_us=90 * MS, running=1, capacity=4,
        network_rtt_us=1 * MS, accuracy_ppm=990_000, arrival=1),
    bid("fast", price_micros=3000, p50_us=3 * MS, p95_us=8 * MS, running=3, queued=1,
        capacity=4, network_rtt_us=1 * MS, accuracy_ppm=999_000, arrival=2),
    bid("idle", price_micros=2500, p50_us=20 * MS, p95_us=45 * MS, capacity=8,
        network_rtt_us=5 * MS, arrival=3),
    bid("queued", price_micros=1200, p50_us=2 * MS, p95_us=48 * MS, running=1, queued=5,
        network_rtt_us=1 * MS, arrival=4),
)  # fmt: skip

SLO_TERMS = Terms(slo_p95_us=50 * MS, budget_remaining_micros=10_000)


@pytest.mark.parametrize(
    ("policy", "terms", "winner"),
    [
        ("greedy", Terms(), "mid"),
        ("balanced", Terms(), "idle"),
        ("cost", Terms(), "cheap"),
        ("latency", Terms(), "fast"),
        ("slo", SLO_TERMS, "queued"),
    ],
)
def test_each_policy_picks_its_executor(policy: str, terms: Terms, winner: str) -> None:
    ranking = select(FIXTURE, terms, policy, NOW)
    assert ranking.winner is not None
    assert ranking.winner.executor == did(winner)
    assert ranking.raise_if_empty("bafy-job") is ranking.winner
    assert [s.rank for s in ranking.eligible] == list(range(1, len(ranking.eligible) + 1))


def test_full_orders() -> None:
    def order(policy: str, terms: Terms | None = None) -> list[str]:
        ranking = select(FIXTURE, terms or Terms(), policy, NOW)
        return [c.executor.removeprefix("did:key:z6Mk") for c in ranking.candidates]

    assert order("greedy") == ["mid", "cheap", "fast", "idle", "queued"]
    assert order("cost") == ["cheap", "queued", "mid", "idle", "fast"]
    assert order("balanced") == ["idle", "cheap", "mid", "fast", "queued"]
    # mid 10+2=12 ms, queued 2+5×2+1=13 ms, idle 25 ms, cheap 40+10+1=51 ms
    assert order("latency") == ["fast", "mid", "queued", "idle", "cheap"]
    assert order("slo", SLO_TERMS) == ["queued", "mid", "idle", "fast"]


def test_slo_with_accuracy_and_tighter_p95() -> None:
    terms = Terms(slo_p95_us=40 * MS, min_accuracy_ppm=996_000)
    ranking = select(FIXTURE, terms, "slo", NOW)
    assert ranking.winner is not None and ranking.winner.executor == did("fast")
    failed = {r.candidate.executor: r.filter for r in ranking.rejected}
    assert failed == {
        did("mid"): "accuracy",
        did("cheap"): "slo_p95",
        did("idle"): "slo_p95",
        did("queued"): "slo_p95",
    }


def test_slo_with_no_bid_meeting_it_names_each_bid_and_constraint() -> None:
    ranking = select(FIXTURE, Terms(slo_p95_us=1 * MS), "slo", NOW)
    assert ranking.winner is None
    with pytest.raises(NoEligibleBid) as info:
        ranking.raise_if_empty("bafy-job")
    err = info.value
    assert isinstance(err, SelectionError)
    assert err.job_cid == "bafy-job"
    assert len(err.failures) == len(FIXTURE)
    text = str(err)
    assert "bafy-job" in text
    for c in FIXTURE:
        line = next(f for f in err.failures if c.bid_cid in f)
        assert c.executor in line
        assert "slo_p95" in line
        assert f"p95 {c.p95_us // MS} ms exceeds the SLO p95 ≤ 1 ms" in line  # type: ignore[operator]


def test_slo_unknown_p95_and_p99_fail_with_reason() -> None:
    terms = Terms(slo_p95_us=50 * MS, slo_p99_us=80 * MS)
    ranking = select(
        [bid("a"), bid("b", p95_us=10 * MS), bid("c", p95_us=10 * MS, p99_us=90 * MS)],
        terms,
        "slo",
        NOW,
    )
    reasons = {r.candidate.executor: (r.filter, r.reason) for r in ranking.rejected}
    assert reasons[did("a")] == ("slo_p95", "no p95 promised (SLO p95 ≤ 50 ms)")
    assert reasons[did("b")] == ("slo_p99", "no p99 promised (SLO p99 ≤ 80 ms)")
    assert reasons[did("c")] == ("slo_p99", "promised p99 90 ms exceeds the SLO p99 ≤ 80 ms")


def test_slo_judges_by_the_worse_of_promised_and_observed_p95() -> None:
    liar = bid("liar", price_micros=500, p95_us=20 * MS, observed_p95_us=70 * MS)
    honest = bid("honest", price_micros=900, p95_us=40 * MS, observed_p95_us=30 * MS, arrival=1)
    ranking = select([liar, honest], Terms(slo_p95_us=50 * MS), "slo", NOW)
    assert ranking.winner == honest
    (rej,) = ranking.rejected
    assert rej.filter == "slo_p95"
    assert rej.reason == "observed p95 70 ms (promised 20 ms) exceeds the SLO p95 ≤ 50 ms"
    # observed better than promised: the promise stands (no bonus for under-promising)
    modest = bid("modest", p95_us=60 * MS, observed_p95_us=10 * MS)
    assert select([modest], Terms(slo_p95_us=50 * MS), "slo", NOW).winner is None


def test_slo_ties_on_price_go_to_lower_effective_p95() -> None:
    a = bid("a", p95_us=30 * MS, observed_p95_us=45 * MS)
    b = bid("b", p95_us=40 * MS, arrival=1)
    assert select([a, b], Terms(slo_p95_us=50 * MS), "slo", NOW).winner == b


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_local_executor_wins_ties(policy: str) -> None:
    remote = bid("remote", p50_us=5 * MS, p95_us=9 * MS, arrival=0)
    local = bid("local", p50_us=5 * MS, p95_us=9 * MS, local=True, arrival=0)
    ranking = select([remote, local], Terms(slo_p95_us=10 * MS), policy, NOW)
    assert ranking.winner == local


def test_local_does_not_override_the_policy_score() -> None:
    remote = bid("remote", price_micros=900)
    local = bid("local", price_micros=1000, local=True)
    assert select([local, remote], Terms(), "cost", NOW).winner == remote


def test_latency_counts_zero_rtt_for_local() -> None:
    remote = bid("remote", p50_us=5 * MS, network_rtt_us=2 * MS)
    local = bid("local", p50_us=6 * MS, network_rtt_us=2 * MS, local=True, arrival=1)
    assert expected_latency_us(local) == 6 * MS
    assert expected_latency_us(remote) == 7 * MS
    assert select([remote, local], Terms(), "latency", NOW).winner == local


def test_expected_latency() -> None:
    # est_latency_us already includes the executor's queue: nothing is added
    assert expected_latency_us(bid("a", est_latency_us=7000, p50_us=1000, queued=9)) == 7000
    # p50 + queued × p50 / capacity + RTT
    assert expected_latency_us(bid("a", p50_us=1000, queued=4, capacity=2)) == 3000
    assert expected_latency_us(bid("a", p50_us=1000, network_rtt_us=250)) == 1250
    # p95 when no p50; unknown → inf, ranked after every known latency
    assert expected_latency_us(bid("a", p95_us=4000)) == 4000
    unknown = bid("unknown", arrival=0)
    known = bid("known", p50_us=10**9, arrival=1)
    assert expected_latency_us(unknown) == float("inf")
    assert select([unknown, known], Terms(), "latency", NOW).candidates == (known, unknown)


def test_latency_ranks_an_under_promiser_by_what_it_delivers() -> None:
    """Promises 10 × below the service p95 this originator measured: its estimate is scaled
    by that shortfall, and the honest executor wins; observed below the promise earns nothing."""
    liar = bid("liar", p50_us=100, p95_us=200, observed_p95_us=2000)
    honest = bid("honest", p50_us=500, p95_us=900, observed_p95_us=800, arrival=1)
    assert expected_latency_us(liar) == 1000
    assert expected_latency_us(honest) == 500
    assert select([liar, honest], Terms(), "latency", NOW).winner == honest
    fresh = bid("liar", p50_us=100, p95_us=200)  # no history yet: the promise stands
    assert select([fresh, honest], Terms(), "latency", NOW).winner == fresh


def test_reputation_breaks_ties_unknown_counts_as_prior() -> None:
    good = bid("good", reputation=0.9, arrival=2)
    unknown = bid("unknown", arrival=1)
    poor = bid("poor", reputation=0.5, arrival=0)
    ranking = select([poor, unknown, good], Terms(), "cost", NOW)
    assert ranking.candidates == (good, unknown, poor)
    # reputation never outweighs price
    cheap_poor = replace(poor, price_micros=999)
    assert select([good, cheap_poor], Terms(), "cost", NOW).winner == cheap_poor


def test_degraded_ranks_after_compatible_at_same_score() -> None:
    degraded = bid("deg", degraded=True, warnings=("gpu preferred: running on cpu",), local=True)
    ok = bid("ok", arrival=1)
    for policy in POLICIES:
        ranking = select([degraded, ok], Terms(), policy, NOW)
        if policy == "greedy":  # arrival is the score, degraded only breaks ties
            assert ranking.candidates == (degraded, ok)
        else:
            assert ranking.candidates == (ok, degraded), policy
    # a strictly better score still wins even when degraded
    cheaper = replace(degraded, price_micros=10)
    assert select([ok, cheaper], Terms(), "cost", NOW).winner == cheaper


def test_degraded_not_allowed_is_filtered() -> None:
    degraded = bid("deg", degraded=True, warnings=("no GPU",))
    ranking = select([degraded], Terms(allow_degraded=False), "cost", NOW)
    (rej,) = ranking.rejected
    assert rej.filter == "degraded"
    assert "no GPU" in rej.reason


def test_expired_and_over_budget_are_filtered_with_reasons() -> None:
    expired = bid("old", expires_ms=NOW)  # expires_ms <= now_ms
    pricey = bid("pricey", price_micros=5000)
    capped = bid("capped", price_micros=3000)
    ok = bid("ok", price_micros=1000)
    terms = Terms(max_price_micros=4000, budget_remaining_micros=2000)
    ranking = select([expired, pricey, capped, ok], terms, "cost", NOW)
    assert ranking.winner == ok
    reasons = {r.candidate.executor: (r.filter, r.reason) for r in ranking.rejected}
    assert reasons[did("old")][0] == "expired"
    assert "expired" in reasons[did("old")][1]
    assert reasons[did("pricey")] == (
        "max_price",
        "price 5000 µUSD exceeds the cap of 4000 µUSD",
    )
    assert reasons[did("capped")] == (
        "budget",
        "price 3000 µUSD exceeds the remaining budget of 2000 µUSD",
    )


def test_currency_and_reputation_filters() -> None:
    eur = bid("eur", currency="EUR")
    shady = bid("shady", reputation=0.2)
    stranger = bid("stranger")
    terms = Terms(min_reputation=0.5)
    ranking = select([eur, shady, stranger], terms, "cost", NOW)
    assert ranking.winner == stranger  # unknown = prior 0.67 >= 0.5
    reasons = {r.candidate.executor: (r.filter, r.reason) for r in ranking.rejected}
    assert reasons[did("eur")] == ("currency", "priced in EUR, the job pays in USD")
    assert reasons[did("shady")] == ("reputation", "reputation 0.20 is below the minimum 0.50")
    strict = select([stranger], Terms(min_reputation=0.8), "cost", NOW)
    assert strict.rejected[0].reason.startswith("reputation unknown (prior 0.67)")


def test_every_policy_applies_the_base_filters() -> None:
    expired = bid("old", expires_ms=0)
    for name, policy in POLICIES.items():
        ranking = policy.rank([expired], Terms(), NOW)
        assert ranking.winner is None, name
        assert ranking.rejected[0].filter == "expired"


class MostAccurate:
    """A custom policy written against the Protocol: highest accuracy wins."""

    name = "accuracy"

    def rank(self, candidates: Sequence[Candidate], terms: Terms, now_ms: int) -> Ranking:
        passed, rejected = apply_filters(candidates, terms, now_ms, BASE_FILTERS)
        ordered = sorted(passed, key=lambda c: -(c.accuracy_ppm or 0))
        return Ranking(
            policy=self.name,
            terms=terms,
            eligible=tuple(
                ScoredCandidate(candidate=c, score=-(c.accuracy_ppm or 0), rank=i)
                for i, c in enumerate(ordered, 1)
            ),
            rejected=tuple(rejected),
            criterion="most accurate bid",
        )


def test_custom_policy_via_protocol() -> None:
    policy = MostAccurate()
    assert isinstance(policy, Policy)
    ranking = select([*FIXTURE, bid("old", expires_ms=0)], Terms(), policy, NOW)
    assert ranking.winner is not None and ranking.winner.executor == did("fast")
    assert ranking.rejected[0].filter == "expired"
    explanation = ranking.explanation("bafy-job")
    assert explanation.policy == "accuracy"
    assert explanation.reason == (
        "most accurate bid: score -999000, 3000 µUSD from did:key:z6Mkfast, "
        "4 others ranked lower, 1 expired"
    )
    assert "did:key:z6Mkold" in explanation.render()


def test_custom_policy_from_key() -> None:
    # cheapest per millisecond of p95 is a bad idea, but it is the user's idea
    policy = policy_from_key("price_x_p95", lambda c: c.price_micros * (c.p95_us or 10**9))
    assert isinstance(policy, KeyPolicy)
    assert isinstance(policy, Policy)
    ranking = select(FIXTURE, Terms(), policy, NOW)
    # mid 1500×30 = 45 000, fast 3000×8 = 24 000, queued 1200×48 = 57 600
    assert ranking.winner is not None and ranking.winner.executor == did("fast")
    assert ranking.eligible[0].score == 3000 * 8 * MS
    assert ranking.explanation("j").reason.startswith("best price_x_p95 score: score 2.4e+07")


def test_custom_key_nan_counts_as_unknown() -> None:
    policy = policy_from_key("nan", lambda c: float("nan") if c.arrival == 0 else 1.0)
    a, b = bid("a", arrival=0), bid("b", arrival=1)
    assert select([a, b], Terms(), policy, NOW).candidates == (b, a)


def test_get_policy() -> None:
    assert sorted(POLICIES) == ["balanced", "cost", "greedy", "latency", "slo"]
    for name, policy in POLICIES.items():
        assert get_policy(name) is policy
        assert policy.name == name
    with pytest.raises(ValueError, match="unknown selection policy 'fastest'.*balanced, cost"):
        get_policy("fastest")
    with pytest.raises(ValueError):
        select(FIXTURE, Terms(), "fastest", NOW)
    with pytest.raises(TypeError):
        POLICIES["mine"] = get_policy("cost")  # type: ignore[index]


def test_empty_candidates() -> None:
    ranking = select([], Terms(), "slo", NOW)
    assert ranking.winner is None
    with pytest.raises(NoEligibleBid, match=r"(none)"):
        ranking.raise_if_empty("bafy-job")
    assert ranking.explanation("bafy-job").reason == "no bids to choose from"


def test_candidate_validation() -> None:
    with pytest.raises(ValueError, match="capacity"):
        bid("a", capacity=0)
    with pytest.raises(ValueError, match="price"):
        bid("a", price_micros=-1)
    with pytest.raises(ValueError, match="running and queued"):
        bid("a", queued=-1)
    with pytest.raises(ValueError, match="reputation"):
        bid("a", reputation=1.5)
    assert bid("a", running=1, queued=2, capacity=4).load == 0.75


def test_terms_price_limit() -> None:
    assert Terms().price_limit_micros is None
    assert Terms(max_price_micros=5).price_limit_micros == 5
    assert Terms(budget_remaining_micros=3).price_limit_micros == 3
    assert Terms(max_price_micros=5, budget_remaining_micros=3).price_limit_micros == 3


def test_reject_after_ranking_moves_the_bid_and_promotes_the_next() -> None:
    ranking = select(FIXTURE, Terms(), "cost", NOW)
    first, second = ranking.candidates[:2]
    after = ranking.reject(first.bid_cid, "signature", "signature does not verify")
    assert after.winner == second
    assert [s.rank for s in after.eligible] == [1, 2, 3, 4]
    assert after.rejected[-1].candidate == first
    assert ranking.winner == first  # the original is unchanged
    reason = after.explanation("bafy-job").reason
    assert reason.endswith("3 others ranked lower, 1 with an invalid signature")
    with pytest.raises(ValueError, match="not an eligible bid"):
        after.reject(first.bid_cid, "signature", "again")
    emptied = after
    for c in after.candidates:
        emptied = emptied.reject(c.bid_cid, "declined", "queue full")
    with pytest.raises(NoEligibleBid, match="declined: queue full"):
        emptied.raise_if_empty("bafy-job")
