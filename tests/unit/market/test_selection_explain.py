from __future__ import annotations

import json
from typing import Any

import pytest

from crankmesh.market import POLICIES, Candidate, ConsideredBid, Explanation, Terms, select

NOW = 10_000
MS = 1000
JOB = "bafyreijob"
DID_A = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


def bid(name: str, **kw: Any) -> Candidate:
    fields: dict[str, Any] = {
        "bid_cid": f"bafy-{name}",
        "executor": f"did:key:z6Mk{name}",
        "price_micros": 1000,
        "currency": "USD",
        "expires_ms": NOW + 60_000,
    }
    fields.update(kw)
    return Candidate(**fields)


BIDS = (
    bid("winner", executor=DID_A, price_micros=1200, p95_us=40 * MS, running=1, capacity=2),
    bid("slow1", price_micros=900, p95_us=80 * MS, arrival=1),
    bid("slow2", price_micros=1000, p95_us=60 * MS, observed_p95_us=90 * MS, arrival=2),
    bid("dear", price_micros=1500, p95_us=20 * MS, arrival=3),
    bid("old", price_micros=500, p95_us=10 * MS, expires_ms=NOW - 1, arrival=4),
    bid("broke", price_micros=9000, p95_us=10 * MS, arrival=5),
    bid(
        "deg",
        price_micros=1300,
        p95_us=30 * MS,
        degraded=True,
        warnings=("gpu preferred: running on cpu",),
        arrival=6,
    ),
)
TERMS = Terms(slo_p95_us=50 * MS, budget_remaining_micros=5000)


def explain(policy: str = "slo", terms: Terms = TERMS, bids: Any = BIDS) -> Explanation:
    return select(bids, terms, policy, NOW).explanation(JOB, {"capability": "email.classify"})


def test_reason_sentence_for_slo() -> None:
    e = explain()
    assert e.reason == (
        "cheapest bid meeting p95 ≤ 50 ms: 1200 µUSD from did:key:z6MkiTBz…ooWp, "
        "2 others ranked lower, 2 others cheaper but slower, 1 expired, 1 over budget"
    )
    assert e.winner is not None and e.winner.executor == DID_A
    assert e.policy == "slo"
    assert "observed" in e.algorithm


def test_considered_lists_every_bid_eligible_first() -> None:
    e = explain()
    assert {c.bid_cid for c in e.considered} == {b.bid_cid for b in BIDS}
    eligible = [c for c in e.considered if c.failed_filter is None]
    rejected = [c for c in e.considered if c.failed_filter is not None]
    assert e.considered == (*eligible, *rejected)
    assert [c.rank for c in eligible] == [1, 2, 3]
    assert [c.score for c in eligible] == [1200, 1300, 1500]
    assert all(c.rank is None and c.score is None and c.failure_reason for c in rejected)
    by_cid = {c.bid_cid: c for c in e.considered}
    assert by_cid["bafy-old"].failed_filter == "expired"
    assert by_cid["bafy-broke"].failed_filter == "budget"
    assert by_cid["bafy-slow2"].failed_filter == "slo_p95"
    assert by_cid["bafy-slow2"].failure_reason == (
        "observed p95 90 ms (promised 60 ms) exceeds the SLO p95 ≤ 50 ms"
    )
    assert by_cid[BIDS[0].bid_cid].load == 0.5
    assert by_cid["bafy-deg"].warnings == ("gpu preferred: running on cpu",)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_render_contains_every_bid_and_its_score_or_failed_filter(policy: str) -> None:
    e = explain(policy)
    text = e.render()
    lines = text.splitlines()
    assert JOB in lines[0] and repr(policy) in lines[0]
    assert "p95 ≤ 50 ms" in text and "budget left 5000 µUSD" in text
    assert "capability='email.classify'" in text
    for c in e.considered:
        # one table row per bid: short executor, price, and score or "filter: reason"
        short = "did:key:z6MkiTBz…ooWp" if c.executor == DID_A else c.executor
        row = next(line for line in lines if short in line and f"{c.price_micros} µUSD" in line)
        if c.failed_filter is None:
            assert row.lstrip().startswith(str(c.rank))
        else:
            assert row.lstrip().startswith("-")
            assert f"{c.failed_filter}: {c.failure_reason}" in row
    assert f"reason:       {e.reason}" in text
    assert "selected:" in text


def test_render_scores_and_tags() -> None:
    text = explain("cost").render()
    assert "1300  [degraded: gpu preferred: running on cpu]" in text
    assert "60 ms (seen 90 ms)" in text
    latency = explain("latency", Terms(), [bid("a", p50_us=1500), bid("b", local=True)]).render()
    assert "1.5 ms" in latency
    assert "unknown  [local]" in latency


def test_warnings_carry_degraded_and_observed_history() -> None:
    deg = bid("deg", price_micros=1, degraded=True, warnings=("no GPU", "no AVX-512"))
    e = explain("cost", Terms(), [deg, *BIDS])
    assert e.winner is not None and e.winner.degraded
    assert e.warnings[0] == "selected a degraded match from did:key:z6Mkdeg: no GPU; no AVX-512"
    assert "did:key:z6Mkslow2 promised p95 60 ms but was observed at 90 ms" in e.warnings


def test_reason_explains_ties() -> None:
    remote = bid("remote", p95_us=9 * MS)
    local = bid("local", p95_us=9 * MS, local=True, arrival=1)
    e = explain("cost", Terms(), [remote, local])
    assert e.reason == (
        "cheapest compatible bid: 1000 µUSD from did:key:z6Mklocal, won a tie with "
        "did:key:z6Mkremote as the local executor, 1 other ranked lower"
    )
    faster = bid("faster", p95_us=5 * MS, arrival=2)
    assert (
        "won a tie with did:key:z6Mklocal on a lower p95"
        in explain("cost", Terms(), [remote, local, faster]).reason
    )
    first = bid("first", arrival=0)
    second = bid("second", arrival=1)
    assert "by arriving first" in explain("cost", Terms(), [second, first]).reason
    trusted = bid("trusted", reputation=1.0, arrival=1)
    assert "on reputation" in explain("cost", Terms(), [first, trusted]).reason


def test_reason_with_no_winner() -> None:
    e = explain("slo", Terms(slo_p95_us=1), BIDS[:2])
    assert e.winner is None
    assert e.reason == "no eligible bid: 2 missing the p95 SLO"
    assert "selected:     nothing" in e.render()


def test_to_dict_is_json() -> None:
    e = explain("latency", TERMS, [*BIDS, bid("nolat", arrival=9)])
    d = e.to_dict()
    again = json.loads(json.dumps(d, allow_nan=False))
    assert again == d
    assert d["job_cid"] == JOB
    assert d["policy"] == "latency"
    assert d["terms"] == {
        "currency": "USD",
        "budget_remaining_micros": 5000,
        "slo_p95_us": 50_000,
        "allow_degraded": True,
    }
    assert d["requirements"] == {"capability": "email.classify"}
    considered = d["considered"]
    assert isinstance(considered, list) and len(considered) == len(BIDS) + 1
    nolat = next(c for c in considered if c["bid_cid"] == "bafy-nolat")
    assert nolat["score"] is None and nolat["failed_filter"] is None  # eligible, unscorable
    winner = d["winner"]
    assert isinstance(winner, dict) and winner["rank"] == 1


def test_explanation_is_frozen_and_text_requirements() -> None:
    e = select(BIDS, TERMS, "cost", NOW).explanation(JOB, "gpu: cuda ≥ 8 GiB")
    assert "requirements: gpu: cuda ≥ 8 GiB" in e.render()
    assert e.to_dict()["requirements"] == "gpu: cuda ≥ 8 GiB"
    with pytest.raises(AttributeError):
        e.reason = "x"  # type: ignore[misc]
    assert isinstance(e.considered[0], ConsideredBid)
    no_req = select(BIDS, TERMS, "cost", NOW).explanation(JOB)
    assert "requirements:" not in no_req.render()


def test_render_without_bids() -> None:
    text = select([], Terms(), "cost", NOW).explanation(JOB).render()
    assert "(no bids)" in text
    assert "no bids to choose from" in text


def test_conduct_notes_show_in_the_explanation_and_the_reputation_filter() -> None:
    """Misbehaviour the originator saw shows on the bid's row, in JSON, and in the reason an
    excluded executor's bid failed the reputation filter."""
    seen = ("2 × slo_missed",)
    ok = bid("ok", price_micros=900, conduct=seen)
    out = bid(
        "out",
        price_micros=100,
        reputation=0.0,
        conduct=("excluded: broke 4 assignments", "4 × rejected_assignment"),
        arrival=1,
    )
    exp = select([ok, out], Terms(min_reputation=0.05), "cost", NOW).explanation(JOB)
    rows = {c.executor: c for c in exp.considered}
    assert rows[ok.executor].conduct == seen
    assert rows[ok.executor].to_dict()["conduct"] == list(seen)
    assert "2 × slo_missed" in exp.render()
    reason = rows[out.executor].failure_reason or ""
    assert rows[out.executor].failed_filter == "reputation"
    assert "excluded: broke 4 assignments; 4 × rejected_assignment" in reason
