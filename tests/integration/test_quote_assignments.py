"""Assignments on firm quotes (RFC 0001 §8.14), on a real nats-server: an executor
honours its own live quote at exactly the quoted price in one request/reply, and
answers a signed Reject for every reason it may not."""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
import pytest

from crankmesh.directory import LiveQuote
from crankmesh.originator import Client
from crankmesh.protocol import subjects
from crankmesh.protocol.cid import cid_for_blob, cid_for_document
from crankmesh.protocol.encoding import canonical_decode
from crankmesh.protocol.envelope import open_envelope
from crankmesh.protocol.identity import Identity, seal
from crankmesh.protocol.messages import (
    Accept,
    Assignment,
    Constraints,
    JobSpec,
    Receipt,
    Reject,
    decode_message,
    job_cid_of,
)
from crankmesh.receipts.audit import audit
from crankmesh.receipts.export import read_stream
from crankmesh.receipts.store import stream_name

from .helpers import mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SLOW = {"advert_interval_s": 60.0, "advert_ttl_s": 120.0}


async def _slow(payload: bytes) -> bytes:
    await anyio.sleep(1.5)
    return payload


def _now() -> int:
    return time.time_ns() // 1_000_000


def make_job(originator: Identity, capability: str, payload: bytes, **fields: Any) -> JobSpec:
    now = _now()
    return JobSpec(
        capability=capability,
        originator=originator.did,
        created=now,
        nonce=os.urandom(16),
        payload=cid_for_blob(payload),
        payload_size=len(payload),
        deadline=now + 30_000,
        **fields,
    )


async def assign(
    nc: Any,
    originator: Identity,
    quote: LiveQuote | None,
    job: JobSpec,
    payload: bytes,
    *,
    quote_cid: str | None = None,
    executor: str | None = None,
    signer: Identity | None = None,
) -> Any:
    """Send an Assignment on ``quote`` and decode the answer: a Receipt (the quick
    path's ReceiptDelivery), an Accept or a Reject."""
    executor = executor or (quote.did if quote else "")
    signer = signer or originator
    job_cid = job_cid_of(job.to_wire())
    now = _now()
    asg = Assignment(
        signer=signer.did,
        ts=now,
        exp=now + 2_000,
        job=job_cid,
        quote=quote_cid or (quote.cid if quote else ""),
        spec=job,
        executor=executor,
        attempt=1,
        nonce=os.urandom(16),
        payload=seal(payload, executor, sender=signer),
        deadline=now + 20_000,
    ).sign(signer)
    reply = await nc.request(subjects.assignment("default", job_cid, executor), asg.raw, timeout=5)
    if reply.data[0] == 0x84:
        env = open_envelope(reply.data)
        env.verify()
        model = {"accept": Accept, "reject": Reject}[env.type]
        return decode_message(env, model)[1]
    delivery = canonical_decode(reply.data)
    return decode_message(delivery["receipt"], Receipt)[1]


async def _quote(client: Client, capability: str, did: str) -> LiveQuote:
    with anyio.fail_after(5):
        while True:
            for q in client.directory.quotes(capability):
                if q.did == did:
                    q.verify()
                    return q
            await client.directory.wait_changed()


async def test_an_assignment_on_a_live_quote_is_honoured_at_the_quoted_price(nats_server):
    async with (
        mesh(nats_server.url, [node_config(0, **SLOW, price=1234)]) as (node,),
        Client(nats=nats_server.url) as client,
        raw_connection(nats_server.url) as nc,
    ):
        me = Identity.generate()
        quote = await _quote(client, "echo", node.did)
        assert quote.quote.price == 1234
        job = make_job(me, "echo", b"on a quote", max_price=2000)
        receipt = await assign(nc, me, quote, job, b"on a quote")
        assert isinstance(receipt, Receipt)
        assert receipt.status == "ok" and receipt.result == cid_for_blob(b"on a quote")
        assert receipt.bid == quote.cid  # the receipt names the quote it was won on
        assert receipt.charge == 1234 and receipt.signer == node.did
        assert node.metrics.rejection_count() == 0


async def test_a_quote_this_executor_never_signed_is_rejected_quote_unknown(nats_server):
    async with (
        mesh(nats_server.url, [node_config(0, **SLOW)], slow=_slow) as (node,),
        Client(nats=nats_server.url) as client,
        raw_connection(nats_server.url) as nc,
    ):
        me = Identity.generate()
        job = make_job(me, "echo", b"x")
        rej = await assign(
            nc, me, None, job, b"x", quote_cid=cid_for_document(b"nope"), executor=node.did
        )
        assert isinstance(rej, Reject) and rej.reason == "quote_unknown"
        # A real quote of this executor, but for another capability.
        slow_quote = await _quote(client, "slow", node.did)
        rej = await assign(nc, me, slow_quote, make_job(me, "echo", b"x"), b"x")
        assert isinstance(rej, Reject) and rej.reason == "quote_unknown"
        assert "is for slow" in rej.detail


async def test_an_expired_quote_is_rejected_quote_expired(nats_server):
    cfg = node_config(0, **SLOW, quote_valid_ms=300, max_skew_ms=50)
    async with (
        mesh(nats_server.url, [cfg]) as (node,),
        Client(nats=nats_server.url) as client,
        raw_connection(nats_server.url) as nc,
    ):
        me = Identity.generate()
        quote = await _quote(client, "echo", node.did)
        await anyio.sleep(max(0.0, (quote.quote.exp + 150 - _now()) / 1000))
        rej = await assign(nc, me, quote, make_job(me, "echo", b"x"), b"x")
        assert isinstance(rej, Reject) and rej.reason == "quote_expired"
        assert rej.signer == node.did


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"max_price": 999}, "terms: price 1000 > max_price 999"),
        ({"constraints": Constraints(timeout_ms=700_000)}, "terms: timeout 700000 ms"),
        ({"constraints": Constraints(memory_mb=8192)}, "terms: memory 8192 MB"),
        ({"currency": "EUR"}, "terms: currency EUR"),
    ],
    ids=["price", "timeout", "memory", "currency"],
)
async def test_a_job_beyond_the_quotes_terms_is_rejected_terms(nats_server, fields, detail):
    async with (
        mesh(nats_server.url, [node_config(0, **SLOW)]) as (node,),
        Client(nats=nats_server.url) as client,
        raw_connection(nats_server.url) as nc,
    ):
        me = Identity.generate()
        quote = await _quote(client, "echo", node.did)
        rej = await assign(nc, me, quote, make_job(me, "echo", b"x", **fields), b"x")
        assert isinstance(rej, Reject) and rej.reason == "terms"
        assert rej.detail.startswith(detail), rej.detail


async def test_a_full_executor_rejects_an_assignment_on_its_quote_no_capacity(nats_server):
    cfg = node_config(0, **SLOW, max_concurrency=1, queue_depth=0)
    async with (
        mesh(nats_server.url, [cfg], slow=_slow) as (node,),
        Client(nats=nats_server.url) as client,
        raw_connection(nats_server.url) as nc,
    ):
        me = Identity.generate()
        quote = await _quote(client, "slow", node.did)
        first = await assign(nc, me, quote, make_job(me, "slow", b"1"), b"1")
        assert isinstance(first, Accept)
        rej = await assign(nc, me, quote, make_job(me, "slow", b"2"), b"2")
        assert isinstance(rej, Reject) and rej.reason == "no_capacity"


async def test_an_assignment_signed_by_someone_else_than_the_jobs_originator(nats_server):
    async with (
        mesh(nats_server.url, [node_config(0, **SLOW)]) as (node,),
        Client(nats=nats_server.url) as client,
        raw_connection(nats_server.url) as nc,
    ):
        me, other = Identity.generate(), Identity.generate()
        quote = await _quote(client, "echo", node.did)
        rej = await assign(nc, me, quote, make_job(me, "echo", b"x"), b"x", signer=other)
        assert isinstance(rej, Reject) and rej.reason == "not_originator"


async def test_the_audit_links_a_receipt_to_the_quote_it_was_won_on(nats_server):
    async with (
        mesh(
            nats_server.url,
            [node_config(0, **SLOW, price=700, calibration_runs=5, calibration_time_s=0.5)],
        ) as (node,),
        Client(nats=nats_server.url) as client,
        raw_connection(nats_server.url) as nc,
    ):
        me = Identity.generate()
        quote = await _quote(client, "echo", node.did)
        receipt = await assign(nc, me, quote, make_job(me, "echo", b"audited"), b"audited")
        assert isinstance(receipt, Receipt) and receipt.bid == quote.cid
        assert node.record_store is not None
        assert await node.record_store.flush(5.0)
        records = await read_stream(nc, stream_name("default"))
    quotes = [r for r in records if open_envelope(r.data).type == "quote"]
    assert len(quotes) == 1 and open_envelope(quotes[0].data).cid == quote.cid
    assert quotes[0].subject == subjects.bid_records("default", node.did)
    report = audit(records, now_ms=_now())
    assert report.ok, report.findings
    assert report.counts["quote"] == 1 and report.counts["receipt"] == 1
    (summary,) = report.executors.values()
    assert summary.charged == {"USD": 700}
    # The promise the audit holds the receipt to is the quote's p95.
    assert quote.quote.slo.p95_us is not None
    assert summary.promised_p95_us == quote.quote.slo.p95_us and summary.slo_jobs == 1
    # And a receipt whose quote is missing from the stream is flagged.
    without = [r for r in records if r is not quotes[0]]
    assert any(f.kind == "missing_bid" for f in audit(without, now_ms=_now()).findings)


async def test_a_change_of_load_band_replaces_the_quote_at_once(nats_server):
    # SLOW adverts: the next timed refresh is 5 s away, so a new quote within a second
    # was put because the load band changed (idle -> full).
    cfg = node_config(0, **SLOW, max_concurrency=1, queue_depth=0)
    async with (
        mesh(nats_server.url, [cfg], slow=_slow) as (node,),
        Client(nats=nats_server.url) as client,
        raw_connection(nats_server.url) as nc,
    ):
        me = Identity.generate()
        idle = await _quote(client, "slow", node.did)
        assert idle.quote.load.running == 0
        t0 = time.monotonic()
        first = await assign(nc, me, idle, make_job(me, "slow", b"1"), b"1")
        assert isinstance(first, Accept)
        with anyio.fail_after(1.0):
            while True:
                (q,) = [x for x in client.directory.quotes("slow") if x.did == node.did]
                if q.quote.seq > idle.quote.seq:
                    break
                await client.directory.wait_changed()
        assert time.monotonic() - t0 < 1.0
        assert q.quote.load.running + q.quote.load.queued == 1 and q.quote.ts > idle.quote.ts
