"""Reputation from audited receipts: from a report, and live, record by record."""

from __future__ import annotations

import random

import pytest

from crankmesh.market import UNKNOWN_REPUTATION, reputation_score
from crankmesh.receipts.audit import audit
from crankmesh.receipts.reputation import ReputationBook, reputation_from_report

from . import T0, History, clean_history, ident

NOW = T0 + 86_400_000


def honest_and_slow(jobs: int = 20) -> tuple[History, str, str]:
    """Two executors with the same success record and the same 2 ms p95 promise; one
    keeps it, the other is observed at ~50 ms (its meter says 1 ms: the observation less
    the 1 ms overhead estimate is what counts)."""
    h = History()
    o, honest, slow = ident("o"), ident("honest"), ident("slow")
    for i in range(jobs):
        h.job(o, honest, p95_us=2000, observed_us=1800 + 10 * i, overhead_us=1000)
        h.job(o, slow, p95_us=2000, observed_us=50_000 + 10 * i, overhead_us=1000)
    return h, honest.did, slow.did


def book_of(envelopes: list[bytes]) -> ReputationBook:
    book = ReputationBook()
    for raw in envelopes:
        book.ingest(raw)
    return book


def test_executor_far_above_its_promise_ranks_below_an_honest_one() -> None:
    h, honest, slow = honest_and_slow()
    report = audit(h.records, now_ms=NOW)
    assert report.ok, report.render()
    scores = reputation_from_report(report)
    assert scores[honest] > scores[slow]
    assert scores[honest] == pytest.approx(reputation_score(successes=20, slo_met=20))
    assert scores[slow] == pytest.approx(reputation_score(successes=20, slo_missed=20))
    assert report.executors[slow].observed_p95_us == 50_180
    assert report.executors[slow].promised_p95_us == 2000

    book = book_of([e.raw for e in h.envelopes])
    assert book.score(honest) == pytest.approx(scores[honest])
    assert book.score(slow) == pytest.approx(scores[slow])


def test_equivocation_scores_zero() -> None:
    h, people = clean_history(4)
    a, orig = people["ex-a"], people["orig-1"]
    seq, head = h.heads[a.did]
    h.job(orig, a)
    h.job(orig, a, seq=seq + 1, prev=head)
    report = audit(h.records, now_ms=NOW)
    scores = reputation_from_report(report)
    assert scores[a.did] == 0.0
    assert scores[people["ex-b"].did] > UNKNOWN_REPUTATION

    book = book_of([e.raw for e in h.envelopes])
    assert book.banned(a.did) and book.score(a.did) == 0.0
    assert not book.banned(people["ex-b"].did)


def test_overcharging_counts_as_a_failure() -> None:
    h, people = clean_history(3)
    h.job(people["orig-1"], people["ex-c"], price=1000, charge=9000)
    report = audit(h.records, now_ms=NOW)
    scores = reputation_from_report(report)
    c, b = people["ex-c"].did, people["ex-b"].did
    assert report.executors[c].misconduct == 1
    assert scores[c] < scores[b]
    book = book_of([e.raw for e in h.envelopes])
    assert book.counts(c).failures == 1
    assert book.score(c) == pytest.approx(scores[c])


def test_book_agrees_with_the_report_whatever_the_arrival_order() -> None:
    h, honest, slow = honest_and_slow(10)
    h2, people = clean_history(4)
    envelopes = [e.raw for e in h.envelopes + h2.envelopes]
    expected = reputation_from_report(audit(h.records + h2.records, now_ms=NOW))
    for seed in range(3):
        shuffled = envelopes[:]
        random.Random(seed).shuffle(shuffled)
        book = book_of(shuffled)
        got = book.scores()
        assert set(got) == set(expected)
        for did, score in expected.items():
            assert got[did] == pytest.approx(score), (seed, did)


def test_book_ignores_forgeries_repeats_and_tokens() -> None:
    h, people = clean_history(2)
    book = ReputationBook()
    receipt = next(e for e in h.envelopes if e.type == "receipt")
    tampered = bytearray(receipt.raw)
    tampered[tampered.index(b"wall_us") + 2] ^= 1
    assert not book.ingest(bytes(tampered))
    assert not book.ingest(b"\x00not an envelope")
    assert book.rejected == 2
    assert book.ingest(receipt.raw)
    assert not book.ingest(receipt.raw)  # a repeat
    token = next(e for e in h.envelopes if e.type == "token")
    assert not book.ingest(token)
    assert book.rejected == 2
    assert book.counts(receipt.signer).successes == 1
    assert book.score(ident("stranger").did) == UNKNOWN_REPUTATION


def test_book_memory_is_bounded() -> None:
    h, honest, _ = honest_and_slow(30)
    book = ReputationBook(memory=8)
    for e in h.envelopes:
        book.ingest(e.raw)
    assert len(book._jobs) <= 8 and len(book._seen) <= 32
    assert book.counts(honest).successes == 30
    with pytest.raises(ValueError):
        ReputationBook(memory=0)
