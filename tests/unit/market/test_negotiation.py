"""The per-job negotiation state machine, driven through every path without NATS."""

from __future__ import annotations

import random
from typing import Any

import pytest

from crankmesh.market import Candidate, Negotiation, Terms, sample_executors
from crankmesh.market._negotiation import (
    Announce,
    Announced,
    Assign,
    BadAccept,
    BidReceived,
    CollectBids,
    Delivered,
    DeliveryInvalid,
    Done,
    ExecutorGone,
    Failed,
    Forged,
    HandedBack,
    Limits,
    NegotiationError,
    NoAccept,
    NoBidReceived,
    NoReceipt,
    Peers,
    PeerView,
    RefreshPeers,
    Rejected,
    Sleep,
    Tick,
    Unreachable,
    Woke,
    policy_sample_key,
)
from crankmesh.protocol.errors import (
    BidsDeclined,
    BudgetExceeded,
    ExecutorsExhausted,
    NoBids,
    NoCapacity,
    NoEligibleBid,
)

T0 = 1_000_000
JOB = "bafyjob"


def did(n: str) -> str:
    return f"did:key:z6Mk{n}"


def cand(n: str, price: int = 100, *, cid: str | None = None, **kw: Any) -> Candidate:
    return Candidate(
        bid_cid=cid or f"bafy-{n}",
        executor=did(n),
        price_micros=price,
        currency="USD",
        p95_us=kw.pop("p95_us", 10_000),
        expires_ms=T0 + 60_000,
        **kw,
    )


def peer(n: str, price: int | None = 100, **kw: Any) -> PeerView:
    return PeerView(did=did(n), price_micros=price, **kw)


def neg(**kw: Any) -> Negotiation:
    limits = kw.pop("limits", Limits())
    return Negotiation(
        job_cid=JOB,
        capability="echo",
        policy=kw.pop("policy", "cost"),
        terms=kw.pop("terms", Terms()),
        limits=limits,
        started_ms=T0,
        **kw,
    )


def open_round(n: Negotiation, peers: list[PeerView], now: int = T0) -> Announce:
    assert isinstance(n.next_action(), RefreshPeers)
    n.send(Peers(now, tuple(peers)))
    a = n.next_action()
    assert isinstance(a, Announce)
    n.send(Announced(now))
    return a


def test_happy_path_closes_when_every_expected_bidder_answered() -> None:
    n = neg()
    a = open_round(n, [peer("a"), peer("b", 50)])
    assert a == Announce(1, None)
    w = n.next_action()
    assert w == CollectBids(T0 + 200)
    n.send(BidReceived(cand("a", 100)))
    assert isinstance(n.next_action(), CollectBids)  # b's advertised 50 could still beat 100
    n.send(NoBidReceived(did("b"), "full"))
    act = n.next_action()
    assert isinstance(act, Assign) and act.candidate.executor == did("a")
    assert act.attempt == 1 and act.path == "call_for_bids"
    n.send(Delivered(T0 + 5, 120))
    done = n.next_action()
    assert isinstance(done, Done)
    assert done.settle_micros == 100  # never more than the bid's price
    assert done.attempts == () and n.path == "call_for_bids"


def test_window_closes_early_when_no_outstanding_bidder_can_beat_the_best() -> None:
    n = neg()
    open_round(n, [peer("a"), peer("b", 500)])
    n.send(BidReceived(cand("a", 100)))
    assert isinstance(n.next_action(), Assign)


def test_window_deadline_closes_with_what_came() -> None:
    n = neg()
    open_round(n, [peer("a"), peer("b", 10)])
    n.send(BidReceived(cand("a", 100)))
    assert n.next_action() == CollectBids(T0 + 200)
    n.send(Tick(T0 + 200))
    assert isinstance(n.next_action(), Assign)


def test_min_window_holds_the_window_open() -> None:
    n = neg(limits=Limits(min_bid_window_ms=50))
    open_round(n, [peer("a")])
    n.send(BidReceived(cand("a")))
    assert n.next_action() == CollectBids(T0 + 50)
    n.send(Tick(T0 + 50))
    assert isinstance(n.next_action(), Assign)


def test_failover_walks_the_ranking_then_exhausts_with_every_attempt() -> None:
    n = neg()
    open_round(n, [peer("a"), peer("b"), peer("c")])
    for name, price in (("a", 10), ("b", 20), ("c", 30)):
        n.send(BidReceived(cand(name, price)))
    outcomes = [
        Rejected(reason="full", detail="queue 4/4"),
        Unreachable("no responders"),
        NoReceipt("none within 1000 ms"),
    ]
    order = []
    for outcome in outcomes:
        act = n.next_action()
        assert isinstance(act, Assign)
        order.append(act.candidate.executor)
        n.send(outcome)
    assert order == [did("a"), did("b"), did("c")]
    # round 1 brought bids: a second round goes out at once (no back-off)
    a = open_round(n, [peer("a"), peer("b"), peer("c")], T0 + 40)
    assert a.round == 2
    n.send(Tick(T0 + 240))
    assert isinstance(n.next_action(), RefreshPeers)
    n.send(Peers(T0 + 20_000, (peer("a"),)))  # busy_wait over
    f = n.next_action()
    assert isinstance(f, Failed) and isinstance(f.error, ExecutorsExhausted)
    assert [a.outcome for a in f.error.attempts] == [
        "rejected: full queue 4/4",
        "unreachable: no responders",
        "no_receipt: none within 1000 ms",
    ]


def test_attempt_outcome_lines() -> None:
    assert BadAccept("x").outcome == "bad_accept: x"
    assert DeliveryInvalid("sig").outcome == "bad_delivery: sig"
    assert ExecutorGone("ttl").outcome == "executor_gone: ttl"
    assert NoAccept("2000 ms").outcome == "no_accept: 2000 ms"
    assert HandedBack("draining", reason="shutdown").outcome == "shutdown: draining"
    assert HandedBack("", reason="paused").outcome == "paused"
    assert Rejected(reason="terms").outcome == "rejected: terms"


def test_max_attempts_ends_the_job() -> None:
    n = neg(limits=Limits(max_attempts=2))
    open_round(n, [peer("a"), peer("b"), peer("c")])
    for name in "abc":
        n.send(BidReceived(cand(name)))
    for _ in range(2):
        act = n.next_action()
        assert isinstance(act, Assign)
        n.send(BadAccept("nonsense"))
    f = n.next_action()
    assert isinstance(f, Failed) and isinstance(f.error, ExecutorsExhausted)
    assert len(f.attempts) == 2


def test_forged_bid_is_skipped_and_explained() -> None:
    n = neg()
    open_round(n, [peer("a"), peer("b")])
    n.send(BidReceived(cand("a", 10)))
    n.send(BidReceived(cand("b", 20)))
    act = n.next_action()
    assert isinstance(act, Assign) and act.candidate.executor == did("a")
    n.send(Forged(act.candidate.bid_cid))
    act = n.next_action()
    assert isinstance(act, Assign) and act.candidate.executor == did("b")
    assert act.attempt == 1  # a forged bid is no attempt
    assert n.ranking is not None
    assert [r.filter for r in n.ranking.rejected] == ["signature"]
    with pytest.raises(NegotiationError):
        n.send(Forged("bafy-other"))


def test_all_bids_filtered_raises_no_eligible_bid_and_budget_exceeded() -> None:
    n = neg(terms=Terms(max_price_micros=5))
    open_round(n, [peer("a")])
    n.send(BidReceived(cand("a", 10)))
    f = n.next_action()
    assert isinstance(f, Failed) and isinstance(f.error, NoEligibleBid)

    n = neg(terms=Terms(budget_remaining_micros=5))
    open_round(n, [peer("a")])
    n.send(BidReceived(cand("a", 10)))
    f = n.next_action()
    assert isinstance(f, Failed) and isinstance(f.error, BudgetExceeded)
    assert f.error.needed_micros == 10


def test_busy_peers_back_off_then_no_capacity() -> None:
    n = neg(limits=Limits(busy_wait_ms=100))
    open_round(n, [peer("a", running=4, capacity=4)])
    n.send(NoBidReceived(did("a"), "full", "4/4"))
    assert isinstance(n.next_action(), RefreshPeers)  # nobody bid: still live?
    n.send(Peers(T0 + 1, (peer("a", running=4, capacity=4),)))
    s = n.next_action()
    assert s == Sleep(T0 + 1 + 20)
    n.send(Woke(T0 + 21))
    open_round(n, [peer("a", running=4, capacity=4)], T0 + 21)
    n.send(NoBidReceived(did("a"), "full", "4/4"))
    assert isinstance(n.next_action(), RefreshPeers)
    n.send(Peers(T0 + 22, (peer("a", running=4, capacity=4),)))
    assert n.next_action() == Sleep(T0 + 22 + 40)  # doubled
    n.send(Woke(T0 + 62))
    open_round(n, [peer("a", running=4, capacity=4)], T0 + 62)
    n.send(NoBidReceived(did("a"), "full", "4/4"))
    n.next_action()
    n.send(Peers(T0 + 90, (peer("a", running=4, capacity=4),)))  # 90 + 80 > 100
    f = n.next_action()
    assert isinstance(f, Failed) and isinstance(f.error, NoCapacity)
    assert "running 4, queued 0, capacity 4" in str(f.error)
    assert f.error.declines == {did("a"): "full: 4/4"}


def test_declined_for_good_stops_at_once() -> None:
    n = neg()
    open_round(n, [peer("a"), peer("b")])
    n.send(NoBidReceived(did("a"), "terms", "timeout over 1000 ms"))
    n.send(NoBidReceived(did("b"), "requirements"))
    assert isinstance(n.next_action(), RefreshPeers)
    n.send(Peers(T0 + 1, (peer("a"), peer("b"))))
    f = n.next_action()
    assert isinstance(f, Failed) and isinstance(f.error, BidsDeclined)
    assert f.error.declines[did("a")] == "terms: timeout over 1000 ms"


def test_nobody_at_all_is_no_bids() -> None:
    n = neg()
    open_round(n, [])
    assert n.next_action() == CollectBids(T0 + 200)
    n.send(Tick(T0 + 200))
    assert isinstance(n.next_action(), RefreshPeers)
    n.send(Peers(T0 + 200, ()))
    f = n.next_action()
    assert isinstance(f, Failed) and type(f.error) is NoBids


def test_new_bids_each_round_up_to_max_rounds() -> None:
    n = neg(limits=Limits(max_rounds=2))
    for r in (1, 2):
        a = open_round(n, [peer("a"), peer("b")])
        assert a.round == r
        name = "a" if r == 1 else "b"
        n.send(BidReceived(cand(name)))
        n.send(Tick(T0 + 500))
        act = n.next_action()
        assert isinstance(act, Assign) and act.candidate.executor == did(name)
        n.send(NoAccept("2000 ms"))
    f = n.next_action()
    assert isinstance(f, Failed) and isinstance(f.error, ExecutorsExhausted)


def test_pinned_job_considers_only_its_executor() -> None:
    n = neg(only_executor=did("b"))
    open_round(n, [peer("a"), peer("b")])
    n.send(BidReceived(cand("a", 1)))
    assert isinstance(n.next_action(), CollectBids)
    n.send(BidReceived(cand("b", 50)))
    act = n.next_action()
    assert isinstance(act, Assign) and act.candidate.executor == did("b")


def test_quote_path_assigns_on_the_best_quote_without_announcing() -> None:
    quotes = [cand("a", 30, cid="bafyq-a"), cand("b", 20, cid="bafyq-b")]
    n = neg(quotes=quotes)
    act = n.next_action()
    assert isinstance(act, Assign) and act.path == "quote"
    assert act.candidate.bid_cid == "bafyq-b"
    n.send(Delivered(T0 + 1, 20))
    done = n.next_action()
    assert isinstance(done, Done) and done.path == "quote" and n.path == "quote"
    assert n.quote_ranking is not None and len(n.quote_ranking.eligible) == 2


def test_quote_reject_takes_the_next_quote_then_calls_for_bids() -> None:
    quotes = [cand("a", 10, cid="bafyq-a"), cand("b", 20, cid="bafyq-b")]
    n = neg(quotes=quotes, limits=Limits(sample_k=3, explore=0.0), rng=random.Random(1))
    act = n.next_action()
    assert isinstance(act, Assign) and act.candidate.executor == did("a")
    n.send(Rejected(reason="no_capacity"))
    act = n.next_action()
    assert isinstance(act, Assign) and act.candidate.executor == did("b")
    n.send(Rejected(reason="quote_expired"))
    # no fitting quote left: a call for bids, to a sample of the peers
    peers = [peer(x, 10 + ord(x)) for x in "abcdefgh"]
    a = open_round(n, peers)
    assert a.targets is not None and len(a.targets) == 3
    # a refused quote does not rule its executor out of the call for bids
    assert n.failed == set()
    assert did("a") in a.targets  # the cheapest is always sampled (explore draws aside)
    assert n.path == "call_for_bids"
    for t in a.targets:
        n.send(NoBidReceived(t, "full") if t != a.targets[0] else BidReceived(cand(t[-1])))
    act = n.next_action()  # all k answered: the window closed
    assert isinstance(act, Assign) and act.attempt == 3 and act.path == "call_for_bids"


def test_quotes_that_fail_the_terms_go_to_a_call_for_bids() -> None:
    n = neg(quotes=[cand("a", 100, cid="bafyq-a")], terms=Terms(max_price_micros=50))
    assert isinstance(n.next_action(), RefreshPeers)
    assert n.quote_ranking is not None and n.quote_ranking.rejected
    n.send(Peers(T0, ()))
    n.next_action()
    n.send(Announced(T0))
    n.send(Tick(T0 + 200))
    n.next_action()
    n.send(Peers(T0 + 200, ()))
    f = n.next_action()
    assert isinstance(f, Failed) and isinstance(f.error, NoEligibleBid)


def test_auction_skips_quotes_and_sampling() -> None:
    n = neg(
        quotes=[cand("a", cid="bafyq-a")],
        auction=True,
        limits=Limits(sample_k=2),
        rng=random.Random(3),
    )
    assert n.path == "call_for_bids"
    a = open_round(n, [peer(x) for x in "abcde"])
    assert a.targets is None  # the broadcast subject, every compatible executor
    n = neg(limits=Limits(sample_k=2), rng=random.Random(3))
    a = open_round(n, [peer(x) for x in "abcde"])
    assert a.targets is not None and len(a.targets) == 2
    n = neg(limits=Limits(sample_k=2), rng=random.Random(3))
    assert open_round(n, [peer(x) for x in "ab"]).targets is None  # no more than k: broadcast
    n = neg(limits=Limits(sample_k=2), rng=random.Random(3), only_executor=did("c"))
    assert open_round(n, [peer(x) for x in "abcde"]).targets is None


def test_events_out_of_place_are_errors() -> None:
    n = neg()
    with pytest.raises(NegotiationError):
        n.send(Delivered(T0, 1))
    with pytest.raises(NegotiationError):
        n.send(Announced(T0))
    with pytest.raises(NegotiationError):
        n.send(Woke(T0))


def test_bids_are_kept_in_every_state() -> None:
    n = neg()
    open_round(n, [peer("a"), peer("b")])
    n.send(BidReceived(cand("a", 10)))
    n.send(Tick(T0 + 200))
    act = n.next_action()
    assert isinstance(act, Assign)
    n.send(BidReceived(cand("b", 20)))  # arrives during the attempt
    n.send(Unreachable("gone"))
    act = n.next_action()
    assert isinstance(act, Assign) and act.candidate.executor == did("b")
    assert [b.arrival for b in n.bids] == [0, 1]


def test_sample_is_power_of_two_choices_with_exploration() -> None:
    peers = [peer(f"{i:03d}", price=i) for i in range(100)]
    rng = random.Random(7)
    counts = [0] * 100
    for _ in range(2000):
        for d in sample_executors(peers, 3, rng, explore=0.1):
            counts[int(d[-3:])] += 1
    cheap, dear = sum(counts[:25]), sum(counts[75:])
    assert cheap > 3 * dear  # biased to good prices
    assert all(c > 0 for c in counts[90:])  # yet the worst are still explored
    picks = sample_executors(peers, 3, random.Random(1))
    assert len(set(picks)) == 3
    assert sample_executors(peers[:2], 3, rng) == (peers[0].did, peers[1].did)
    # reputation breaks price ties; quotes count before advertised prices
    a = PeerView(did="a", price_micros=10, reputation=0.1)
    b = PeerView(did="b", price_micros=10, reputation=0.9)
    c = PeerView(did="c", price_micros=100, quote_price_micros=1)
    assert sample_executors([a, b, c], 1, random.Random(0), explore=0.0) == ("c",)
    assert sample_executors([a, b], 1, random.Random(0), explore=0.0) == ("b",)
    # without exploration the best of the directory is always in the sample
    for seed in range(50):
        assert peers[0].did in sample_executors(peers, 3, random.Random(seed), explore=0.0)


def test_sampling_follows_the_policy_and_the_slo() -> None:
    fast_dear = PeerView(did="fast", price_micros=500, p95_us=1_000)
    slow_cheap = PeerView(did="slow", price_micros=10, p95_us=90_000)
    idle = PeerView(did="idle", price_micros=300, p95_us=5_000, capacity=4)
    busy = PeerView(did="busy", price_micros=200, p95_us=5_000, running=4, capacity=4)
    peers = [fast_dear, slow_cheap, idle, busy]

    def top(policy: str, terms: Terms | None = None) -> str:
        key = policy_sample_key(policy, terms or Terms())
        return sample_executors(peers, 1, random.Random(0), explore=0.0, key=key)[0]

    assert top("cost") == "slow"
    assert top("latency") == "fast"
    peers.append(PeerView(did="fastest-busy", price_micros=9, p50_us=300, queued=9))
    assert top("latency") == "fast"  # 300 µs + 9 queued ahead > 1 ms
    peers.pop()
    assert top("balanced") == "slow"  # idle ones tie on load: the cheaper
    assert top("slo", Terms(slo_p95_us=10_000)) == "busy"  # cheapest meeting the p95
    assert top("cost", Terms(max_price_micros=5)) == "slow"  # nobody fits: still the best
    peers[:] = [
        PeerView(did="rough", price_micros=10, accuracy_ppm=900_000),
        PeerView(did="acc", price_micros=900, accuracy_ppm=999_000),
    ]
    assert top("slo", Terms(min_accuracy_ppm=990_000)) == "acc"
    assert top("slo") == "rough"
    peers[:] = [fast_dear, slow_cheap, idle, busy]
    n = neg(policy="latency", limits=Limits(sample_k=1, explore=0.0), rng=random.Random(0))
    a2 = open_round(n, list(peers))
    assert a2.targets == ("fast",)


def test_a_quote_executor_that_failed_otherwise_is_out() -> None:
    n = neg(quotes=[cand("a", 10, cid="bafyq-a"), cand("b", 20, cid="bafyq-b")])
    act = n.next_action()
    assert isinstance(act, Assign)
    n.send(NoReceipt("none within 5000 ms"))
    assert n.failed == {did("a")}
    act = n.next_action()
    assert isinstance(act, Assign) and act.candidate.executor == did("b")

    n.send(Unreachable("no responders"))  # b not listening (yet): it may still bid
    assert n.failed == {did("a")}
