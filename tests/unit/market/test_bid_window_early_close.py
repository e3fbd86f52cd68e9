from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crankmesh.market import Candidate, Terms, can_be_beaten, policy_from_key, select

NOW = 10_000
MS = 1000


def bid(name: str = "best", **kw: Any) -> Candidate:
    fields: dict[str, Any] = {
        "bid_cid": f"bafy-{name}",
        "executor": f"did:key:z6Mk{name}",
        "price_micros": 1000,
        "currency": "USD",
        "p50_us": 10 * MS,
        "p95_us": 20 * MS,
        "expires_ms": NOW + 60_000,
    }
    fields.update(kw)
    return Candidate(**fields)


NO_LIMITS = Terms()


def beatable(
    best: Candidate,
    policy: str,
    price: int | None,
    latency: int | None,
    terms: Terms = NO_LIMITS,
) -> bool:
    return can_be_beaten(best, terms, policy, floor_price_micros=price, floor_latency_us=latency)


def test_unknown_floors_keep_waiting() -> None:
    for policy in ("balanced", "cost", "latency", "slo"):
        assert beatable(bid(), policy, None, None)


def test_greedy_never_waits() -> None:
    assert not beatable(bid(), "greedy", None, None)
    assert not beatable(bid(), "greedy", 0, 0)


def test_custom_policy_always_waits() -> None:
    assert beatable(bid(), "my-own", 10**9, 10**9)


def test_cost() -> None:
    best = bid(price_micros=1000, p95_us=20 * MS)
    assert beatable(best, "cost", 999, None)
    assert not beatable(best, "cost", 1001, None)
    # equal price: a newcomer may still win on p95, unless its latency floor rules that out
    assert beatable(best, "cost", 1000, None)
    assert beatable(best, "cost", 1000, 19 * MS)
    assert not beatable(best, "cost", 1000, 21 * MS)
    # equal on everything the policy compares: a local newcomer would win the tie...
    assert beatable(best, "cost", 1000, 20 * MS)
    # ...unless best is local with a perfect reputation (then arrival decides: best is earlier)
    assert not beatable(bid(local=True, reputation=1.0), "cost", 1000, 20 * MS)
    assert beatable(bid(local=True, reputation=0.9), "cost", 1000, 20 * MS)
    assert beatable(bid(local=True), "cost", 1000, 20 * MS)  # unknown = prior 2/3
    # a degraded best loses a price tie to any compatible newcomer
    assert beatable(bid(degraded=True), "cost", 1000, 10**9)


def test_slo_closes_when_no_newcomer_can_meet_the_slo_or_afford_the_job() -> None:
    best = bid(price_micros=1000, p95_us=20 * MS)
    terms = Terms(slo_p95_us=50 * MS, budget_remaining_micros=5000)
    assert beatable(best, "slo", 500, 10 * MS, terms)
    assert not beatable(best, "slo", 500, 60 * MS, terms)  # nobody left meets p95 ≤ 50 ms
    assert not beatable(best, "slo", 500, 90 * MS, Terms(slo_p99_us=80 * MS))
    assert not beatable(best, "slo", 1500, 10 * MS, terms)  # nobody left is cheaper
    assert not beatable(
        best, "cost", 6000, None, Terms(budget_remaining_micros=5000)
    )  # nobody left can be afforded (any policy)
    assert not beatable(best, "latency", 6000, 0, Terms(max_price_micros=5000))


def test_latency() -> None:
    best = bid(p50_us=10 * MS, network_rtt_us=2 * MS)  # expected 12 ms
    assert beatable(best, "latency", None, 11 * MS)
    assert not beatable(best, "latency", None, 13 * MS)
    assert beatable(best, "latency", 999, 12 * MS)  # same latency, maybe cheaper
    assert not beatable(best, "latency", 1001, 12 * MS)


def test_balanced() -> None:
    assert beatable(bid(running=1, capacity=2), "balanced", 10**9, 10**9)  # an idle one may come
    idle = bid(capacity=4)
    assert beatable(idle, "balanced", 999, None)
    assert not beatable(idle, "balanced", 1001, None)
    assert beatable(idle, "balanced", None, None)


# --------------------------------------------------------------------------- soundness

_lat = st.integers(min_value=0, max_value=200 * MS)


@st.composite
def newcomer_for(draw: st.DrawFn, floor_price: int, floor_latency: int) -> Candidate:
    """Any bid consistent with the floors: price and every latency figure at or above them."""
    above = st.integers(min_value=floor_latency, max_value=floor_latency + 100 * MS)
    p50 = draw(st.none() | above)
    return Candidate(
        bid_cid="bafy-new",
        executor="did:key:z6Mknew",
        price_micros=draw(st.integers(min_value=floor_price, max_value=floor_price + 2000)),
        currency="USD",
        p50_us=p50,
        p95_us=draw(st.none() | above),
        est_latency_us=draw(st.none() | above),
        network_rtt_us=draw(st.none() | _lat),
        running=draw(st.integers(0, 4)),
        queued=draw(st.integers(0, 4)),
        capacity=draw(st.integers(1, 4)),
        local=draw(st.booleans()),
        degraded=draw(st.booleans()),
        reputation=draw(st.none() | st.floats(0, 1)),
        observed_p95_us=draw(st.none() | _lat),
        expires_ms=NOW + 1,
        arrival=99,
    )


@st.composite
def best_bids(draw: st.DrawFn) -> Candidate:
    return Candidate(
        bid_cid="bafy-best",
        executor="did:key:z6Mkbest",
        price_micros=draw(st.integers(0, 3000)),
        currency="USD",
        p50_us=draw(st.none() | _lat),
        p95_us=draw(st.none() | _lat),
        est_latency_us=draw(st.none() | _lat),
        network_rtt_us=draw(st.none() | _lat),
        running=draw(st.integers(0, 4)),
        queued=draw(st.integers(0, 4)),
        capacity=draw(st.integers(1, 4)),
        local=draw(st.booleans()),
        degraded=draw(st.booleans()),
        reputation=draw(st.none() | st.sampled_from([0.0, 0.5, 1.0])),
        expires_ms=NOW + 1,
        arrival=0,
    )


@settings(max_examples=60, deadline=None)
@given(
    best=best_bids(),
    floors=st.tuples(st.integers(0, 3000), st.integers(0, 200 * MS)),
    data=st.data(),
)
def test_when_it_says_no_no_later_bid_beats_best(
    best: Candidate, floors: tuple[int, int], data: st.DataObject
) -> None:
    floor_price, floor_latency = floors
    terms = Terms(slo_p95_us=data.draw(st.none() | _lat))
    newcomer = data.draw(newcomer_for(floor_price, floor_latency))
    for policy in ("greedy", "balanced", "cost", "latency", "slo"):
        if can_be_beaten(
            best, terms, policy, floor_price_micros=floor_price, floor_latency_us=floor_latency
        ):
            continue
        ranking = select([best, newcomer], terms, policy, NOW)
        if ranking.winner is newcomer:
            # the newcomer may only win when best was not eligible in the first place
            assert best not in ranking.candidates, policy


def test_custom_key_policy_name_is_not_known_to_early_close() -> None:
    policy = policy_from_key("cost2", lambda c: c.price_micros)
    assert beatable(bid(), policy.name, 10**9, 10**9)
