"""Firm quotes (RFC 0001 §8.14): signing, renewal, memory, terms and the checks of an
Assignment on a quote -- all without NATS."""

from __future__ import annotations

import os
from typing import Any

import pytest

from crankmesh.directory import PeerDirectory
from crankmesh.executor.agent import Executor, ExecutorConfig
from crankmesh.executor.caps import ExecutorCaps
from crankmesh.executor.handlers import MAX_PAYLOAD_BYTES, EchoCapability
from crankmesh.executor.quotes import (
    KEEP_AFTER_EXP_MS,
    QuoteBook,
    check_quote_assignment,
    load_band,
)
from crankmesh.protocol.cid import cid_for_blob
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import (
    Advert,
    AdvertCapability,
    BidSlo,
    Constraints,
    JobSpec,
    Load,
    Quote,
    QuoteTerms,
    decode_message,
)

EXECUTOR = Identity.from_seed(bytes(32))
ORIGINATOR = Identity.from_seed(bytes(range(32)))
T0 = 1_700_000_000_000
TERMS = QuoteTerms(max_timeout_ms=30_000, max_memory_mb=512, max_output_bytes=1000)


def job(**fields: Any) -> JobSpec:
    base: dict[str, Any] = {
        "capability": "echo",
        "originator": ORIGINATOR.did,
        "created": T0,
        "nonce": os.urandom(16),
        "payload": cid_for_blob(b"p"),
        "payload_size": 1,
        "deadline": T0 + 60_000,
        "constraints": Constraints(timeout_ms=1_000, max_output_bytes=100),
    }
    base.update(fields)
    return JobSpec(**base)


def sign(book: QuoteBook, now: int = T0, **changes: Any) -> Any:
    facts: dict[str, Any] = {
        "now": now,
        "price": 100,
        "currency": "USD",
        "slo": lambda: BidSlo(p95_us=900, samples=5),
        "load": Load(capacity=4),
        "band": 0,
        "isolation": "basic",
        "terms": TERMS,
        "draining": False,
        "hardware": "h1",
    }
    facts.update(changes)
    return book.quote("echo", **facts)


def test_a_signed_quote_is_a_valid_quote_message() -> None:
    book = QuoteBook(EXECUTOR, valid_ms=15_000)
    signed = sign(book)
    env, q = decode_message(signed.raw, Quote)  # validates what build() made
    env.verify()
    assert env.cid == signed.cid and q == signed.quote
    assert q.exp == T0 + 15_000 and q.price == 100 and q.terms == TERMS and q.seq == 1
    assert q.slo.p95_us == 900 and q.isolation == "basic"


def test_the_same_facts_keep_the_quote_until_a_third_of_it_is_left() -> None:
    book = QuoteBook(EXECUTOR, valid_ms=9_000)
    first = sign(book)
    assert sign(book, now=T0 + 5_999) is first
    renewed = sign(book, now=T0 + 6_001)
    assert renewed is not first and renewed.quote.seq == 2 and renewed.quote.ts == T0 + 6_001


@pytest.mark.parametrize(
    "change",
    [
        {"price": 101},
        {"band": 2},
        {"hardware": "h2"},
        {"isolation": "strict"},
        {"terms": QuoteTerms(max_timeout_ms=1)},
        {"currency": "EUR"},
    ],
    ids=["price", "band", "hardware", "isolation", "terms", "currency"],
)
def test_a_change_of_fact_signs_a_new_quote(change: dict[str, Any]) -> None:
    book = QuoteBook(EXECUTOR)
    first = sign(book)
    again = sign(book, now=T0 + 1, **change)
    assert again is not first and again.quote.seq > first.quote.seq
    # The old one is still honoured by CID (it was published), until forgotten.
    assert book.get(first.cid, T0 + 2) is first


def test_a_draining_executor_quotes_nothing() -> None:
    book = QuoteBook(EXECUTOR)
    sign(book)
    assert sign(book, now=T0 + 1, draining=True) is None
    assert book.current("echo") is None


def test_quotes_are_forgotten_after_they_expired_for_a_while() -> None:
    book = QuoteBook(EXECUTOR, valid_ms=1_000)
    first = sign(book)
    assert book.get(first.cid, T0 + 1_000 + KEEP_AFTER_EXP_MS) is first
    assert book.get(first.cid, T0 + 1_001 + KEEP_AFTER_EXP_MS) is None


def test_load_bands() -> None:
    assert load_band(Load(capacity=4), 10) == 0
    assert load_band(Load(running=1, queued=3, capacity=4), 10) == 1
    assert load_band(Load(running=4, queued=1, capacity=4), 10) == 2
    assert load_band(Load(running=4, queued=6, capacity=4), 10) == 3


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({}, None),
        (
            {"constraints": Constraints(timeout_ms=30_001)},
            "terms: timeout 30001 ms > max_timeout_ms",
        ),
        ({"constraints": Constraints(memory_mb=513)}, "terms: memory 513 MB > max_memory_mb 512"),
        ({"constraints": Constraints(max_output_bytes=1001)}, "terms: output 1001 bytes"),
        ({"max_price": 99}, "terms: price 100 > max_price 99"),
        ({"currency": "EUR"}, "terms: currency EUR != quoted USD"),
    ],
)
def test_check_quote_assignment_terms(fields: dict[str, Any], detail: str | None) -> None:
    signed = sign(QuoteBook(EXECUTOR))
    got = check_quote_assignment(
        signed, capability="echo", job=job(**fields), now=T0, max_skew_ms=0
    )
    if detail is None:
        assert got is None
    else:
        assert got is not None and got[0] == "terms" and got[1].startswith(detail), got


def test_check_quote_assignment_unknown_and_expired() -> None:
    signed = sign(QuoteBook(EXECUTOR, valid_ms=1_000))
    assert (
        check_quote_assignment(None, capability="echo", job=job(), now=T0, max_skew_ms=0)[0]
        == "quote_unknown"
    )  # type: ignore[index]
    other = check_quote_assignment(signed, capability="x.y", job=job(), now=T0, max_skew_ms=0)
    assert other is not None and other[0] == "quote_unknown"
    assert (
        check_quote_assignment(
            signed, capability="echo", job=job(), now=T0 + 1_500, max_skew_ms=500
        )
        is None
    )  # within the skew
    late = check_quote_assignment(
        signed, capability="echo", job=job(), now=T0 + 1_501, max_skew_ms=500
    )
    assert late is not None and late[0] == "quote_expired"


def test_payload_and_env_profile_terms() -> None:
    terms = QuoteTerms(max_payload_bytes=10, env_profiles=["python-core"])
    assert terms.misfit(job(payload_size=11)) == "terms: payload 11 bytes > max_payload_bytes 10"
    ml = job(constraints=Constraints(env_profile="python-ml"))
    assert "env_profile 'python-ml'" in (terms.misfit(ml) or "")
    assert terms.misfit(job(constraints=Constraints(env_profile="python-core"))) is None
    assert QuoteTerms().misfit(job(payload_size=1 << 30)) is None  # no term: no limit


def test_the_executor_quotes_its_config_flat_and_resource_priced() -> None:
    caps = ExecutorCaps(max_timeout_ms=60_000, max_memory_mb=2048, default_memory_mb=512)
    flat = ExecutorConfig(default_price=700, caps=caps)
    price, terms = flat.quote_offer("echo")
    assert price == 700 and terms.max_timeout_ms == 60_000 and terms.max_memory_mb == 2048
    assert terms.max_payload_bytes == MAX_PAYLOAD_BYTES and terms.env_profiles is None
    priced = ExecutorConfig(default_price=700, caps=caps, price_per_gib_s=1_024_000)
    price, terms = priced.quote_offer("python.run", ["python-ml", "python-core"])
    # Covers jobs up to the default memory and 10 s, priced for the largest of them.
    assert terms.max_memory_mb == 512 and terms.max_timeout_ms == 10_000
    assert price == 700 + 512 * 10_000 and terms.env_profiles == ["python-core", "python-ml"]
    biggest = job(constraints=Constraints(timeout_ms=10_000, memory_mb=512))
    assert priced.price_of(biggest) == price


def test_executor_quote_for_follows_its_load_band_and_drain() -> None:
    ex = Executor(
        identity=EXECUTOR,
        federation="f",
        handlers=[EchoCapability()],
        config=ExecutorConfig(default_price=5, max_concurrency=2, queue_depth=2),
    )
    first = ex.quote_for("echo", T0)
    assert first is not None and first.quote.load.capacity == 2
    assert ex.quote_for("echo", T0 + 1) is first
    ex._reserved = 3  # three of four slots held: another band
    busier = ex.quote_for("echo", T0 + 2)
    assert busier is not None and busier is not first and busier.quote.load.queued == 3
    assert ex.quote_for("nope", T0) is None
    ex._draining = True
    assert ex.quote_for("echo", T0 + 3) is None


def test_directory_quotes_decode_once_and_skip_bad_or_expired_ones() -> None:
    book = QuoteBook(EXECUTOR, valid_ms=10_000)
    signed = sign(book, now=T0)
    other = Identity.generate()
    forged = QuoteBook(other).quote(  # a quote signed by someone else than the advert
        "echo",
        now=T0,
        price=1,
        currency="USD",
        slo=BidSlo,
        load=Load(),
        band=0,
        isolation="none",
        terms=QuoteTerms(),
        draining=False,
        hardware=None,
    )
    assert forged is not None
    directory = PeerDirectory(federation="f")
    for ident, raw in ((EXECUTOR, signed.raw), (other, b"not a quote")):
        directory.observe(
            Advert(
                signer=ident.did,
                ts=T0,
                exp=T0 + 60_000,
                capabilities=[AdvertCapability(name="echo", price=1, quote=raw)],
            ),
            now=T0,
        )
    (live,) = directory.quotes("echo", now=T0 + 1)
    assert live.did == EXECUTOR.did and live.cid == signed.cid and not live.verified
    live.verify()
    assert directory.quotes("echo", now=T0 + 2)[0] is live  # cached, still verified
    assert live.verified
    assert directory.metrics.rejection_count("quote", "decode") == 1
    assert directory.quotes("echo", now=T0 + 10_001) == []  # expired
    assert directory.quotes("other.cap", now=T0) == []
    directory.observe(
        Advert(
            signer=other.did,
            ts=T0 + 1,
            exp=T0 + 60_000,
            capabilities=[AdvertCapability(name="echo", price=1, quote=forged.raw)],
        ),
        now=T0,
    )
    assert {q.did for q in directory.quotes("echo", now=T0 + 1)} == {EXECUTOR.did, other.did}
    directory.observe(
        Advert(
            signer=other.did,
            ts=T0 + 2,
            exp=T0 + 60_000,
            capabilities=[AdvertCapability(name="echo", price=1, quote=signed.raw)],
        ),
        now=T0,
    )
    # EXECUTOR's quote inside another signer's advert is not that signer's quote.
    assert {q.did for q in directory.quotes("echo", now=T0 + 1)} == {EXECUTOR.did}
    assert directory.metrics.rejection_count("quote", "quote_mismatch") == 1
