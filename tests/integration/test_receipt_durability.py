"""No receipt is ever lost or forked (RFC 0002 §2.2, §5.3): a restarted executor continues its
chain from its state directory, receipts signed while JetStream is unreachable are buffered and
reach the stream once it is back, and a record published twice is stored once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NatsClient

from crankmesh.keystore import load_identity, save_identity
from crankmesh.node import Node
from crankmesh.originator import Client, ClientConfig, Job, JobResult
from crankmesh.protocol.errors import ExecutorsExhausted
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import Receipt, decode_message
from crankmesh.receipts.audit import Record, audit
from crankmesh.receipts.export import read_stream
from crankmesh.receipts.store import RecordStore, stream_name
from crankmesh.testing import NatsServer
from crankmesh.transport import NatsOptions, connect

from .helpers import client_for, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

FED = "default"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _until(predicate: Callable[[], bool], within_s: float) -> None:
    """Poll state that another task changes (no event to wait on)."""
    with anyio.fail_after(within_s):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def _stream(url: str) -> list[Record]:
    nc = await connect(NatsOptions(servers=(url,)))
    try:
        return await read_stream(nc, stream_name(FED))
    finally:
        await nc.close()


def _receipts_of(records: list[Record], did: str) -> list[tuple[str, Receipt]]:
    """(CID, receipt) of every receipt ``did`` signed, in chain order."""
    out = [
        (r.msg_id or "", decode_message(r.data, Receipt)[1])
        for r in records
        if ".receipts." in r.subject
    ]
    return sorted(((cid, x) for cid, x in out if x.signer == did), key=lambda p: p[1].seq)


def _assert_one_unbroken_chain(records: list[Record], did: str, length: int) -> None:
    chain = _receipts_of(records, did)
    assert [x.seq for _, x in chain] == list(range(1, length + 1))
    assert [x.prev for _, x in chain] == [None] + [cid for cid, _ in chain[:-1]]
    report = audit(records, now_ms=_now_ms())
    assert report.ok, report.render()
    summary = report.executors[did]
    assert (summary.first_seq, summary.last_seq, summary.receipts) == (1, length, length)
    assert not summary.equivocated


async def test_a_restarted_executor_continues_its_chain_without_a_gap_or_a_fork(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    key = save_identity(Identity.generate(), tmp_path / "node.key")
    cfg = node_config(0, state_dir=str(tmp_path))
    results: list[JobResult] = []
    for run in range(2):  # the same executor (key file, state dir), started twice
        async with Node(nats=nats_server.url, identity=load_identity(key), config=cfg) as node:
            async with client_for(nats_server.url, "echo", 1) as client:
                for i in range(3):
                    r = await client.run(Job.echo(f"run {run} job {i}".encode()))
                    assert r.ok and r.verified and r.executor == node.did
                    results.append(r)
    # the chain went on where it stopped: seq 1..6, each receipt linked to the one before
    assert [r.receipt.seq for r in results] == [1, 2, 3, 4, 5, 6]
    assert [r.receipt.prev for r in results] == [None] + [r.receipt_cid for r in results[:-1]]
    head = json.loads((tmp_path / "receipt-chain.log").read_text().splitlines()[-1])
    assert head == {"seq": 6, "cid": results[-1].receipt_cid}
    # and the stream, which an auditor reads, shows one chain: no gap, no fork
    records = await _stream(nats_server.url)
    assert {r.receipt_cid for r in results} <= {rec.msg_id for rec in records}
    _assert_one_unbroken_chain(records, node.did, 6)


async def test_an_executor_restarted_without_its_state_dir_forks_its_chain_and_the_audit_says_so(
    nats_server: NatsServer,
) -> None:
    # The contrast to the test above: the chain head is what prevents the fork.
    identity = Identity.generate()
    for _ in range(2):
        async with Node(nats=nats_server.url, identity=identity, config=node_config(0)):
            async with client_for(nats_server.url, "echo", 1) as client:
                r = await client.run(Job.echo(b"x"))
                assert r.ok and r.verified and r.receipt.seq == 1
    report = audit(await _stream(nats_server.url), now_ms=_now_ms())
    assert [f.kind for f in report.findings] == ["equivocation"]
    assert report.executors[identity.did].equivocated


async def test_receipts_signed_while_jetstream_is_unreachable_reach_the_stream_when_it_returns(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    server = nats_server
    options = NatsOptions(servers=(server.url,), reconnect_time_wait_s=0.1)
    cfg = node_config(0, capabilities=("python.run",), state_dir=str(tmp_path), max_concurrency=2)
    # The originator loses the connection too: a delivery published before it is back is
    # lost to it (the test below checks it gets that receipt from the same executor).
    # On the call-for-bids path each job leaves two records (its winning bid and its
    # receipt), which the counts below rely on; on a quote, jobs share one quote record.
    config = ClientConfig(busy_wait_s=0.5, receipt_grace_ms=500, use_quotes=False)

    def job(i: int, sleep_s: float = 0.0) -> Job:
        code = f"import time\ntime.sleep({sleep_s})\nprint(args['i'])"
        return Job.python(code, {"i": i}, timeout_sec=3)

    async with Node(nats=options, config=cfg) as node:
        store, executor = node.record_store, node.executor
        assert store is not None and executor is not None
        async with Client(nats=options, config=config) as client:
            assert await client.wait_for_peers("python.run", 1, wait_s=10) == 1
            results = [await client.run(job(i)) for i in range(3)]
            with anyio.fail_after(10):
                await store.wait_flushed()
            assert len(await _stream(server.url)) >= 6  # receipts 1..3 and their bids

            # two jobs are accepted and running when the server dies
            handles = [client.submit(job(i, sleep_s=1.0)) for i in (3, 4)]
            with anyio.fail_after(10):
                for handle in handles:
                    async for event in handle.watch():
                        if event.kind == "accepted":
                            break
            nc: NatsClient = node.nc
            server.kill()
            await _until(lambda: not nc.is_connected, within_s=5)
            # both finish while JetStream is unreachable: signed, chained, and buffered
            await _until(lambda: executor.chain.seq == 5, within_s=10)
            await _until(lambda: store.pending == 4, within_s=5)  # 2 bids + 2 receipts
            assert store.stored == 6 and not store.dropped and not store.rejected

            await server.arestart()
            with anyio.fail_after(15):
                await store.wait_flushed()
            assert store.stored == 10 and not store.dropped and not store.rejected
            for handle in handles:  # a delivery lost with the connection is no receipt lost
                try:
                    r = await handle.result()
                except ExecutorsExhausted as exc:
                    assert [a.outcome.split(":")[0] for a in exc.attempts] == ["no_receipt"]
                else:
                    assert r.ok and r.verified and r.receipt.seq in (4, 5)
                    results.append(r)
            # the chain goes on after the outage
            for i in (5, 6):
                r = await client.run(job(i))
                assert r.ok and r.verified
                results.append(r)
    assert executor.chain.seq == 7
    records = await _stream(server.url)
    assert {r.receipt_cid for r in results} <= {rec.msg_id for rec in records}
    _assert_one_unbroken_chain(records, node.did, 7)


@pytest.mark.slow
async def test_an_originator_that_missed_the_receipt_delivery_gets_it_from_the_same_executor(
    nats_server: NatsServer,
) -> None:
    server = nats_server
    # The originator reconnects more slowly than the executor: the delivery, which the
    # executor publishes as soon as it is back, finds nobody subscribed.
    node_options = NatsOptions(servers=(server.url,), reconnect_time_wait_s=0.1)
    client_options = NatsOptions(servers=(server.url,), reconnect_time_wait_s=3.0)
    config = ClientConfig(busy_wait_s=0.5, receipt_grace_ms=500)
    job = Job.python("import time\ntime.sleep(1)\nprint('done')", timeout_sec=5)
    cfg = node_config(0, capabilities=("python.run",))
    async with Node(nats=node_options, config=cfg) as node:
        executor = node.executor
        assert executor is not None
        async with Client(nats=client_options, config=config) as client:
            assert await client.wait_for_peers("python.run", 1, wait_s=10) == 1
            handle = client.submit(job)
            with anyio.fail_after(10):
                async for event in handle.watch():
                    if event.kind == "accepted":
                        break
            server.kill()
            await _until(lambda: executor.chain.seq == 1, within_s=10)  # ran, signed, waiting
            await server.arestart()
            with anyio.fail_after(15):
                r = await handle.result()  # today: ExecutorsExhausted (no_receipt)
            assert r.ok and r.verified and r.stdout == "done\n"
            assert not r.attempts and r.executor == node.did


async def test_a_record_published_twice_is_stored_once(nats_server: NatsServer) -> None:
    async with Node(nats=nats_server.url, config=node_config(0)) as node:
        store = node.record_store
        assert store is not None
        async with client_for(nats_server.url, "echo", 1) as client:
            r = await client.run(Job.echo(b"once"))
        with anyio.fail_after(10):
            await store.wait_flushed()
        before = await _stream(nats_server.url)
        (receipt,) = [rec for rec in before if rec.msg_id == r.receipt_cid]
        # the same bytes again, straight and through the executor's queued path (which
        # remembers the record and does not send it again), and through the queued path
        # of a store that does not know it (a restarted node): JetStream drops the copy
        assert await store.publish(receipt.subject, receipt.data, r.receipt_cid) == "duplicate"
        assert await store.submit(receipt.subject, receipt.data, r.receipt_cid) == "duplicate"
        nc = await connect(NatsOptions(servers=(nats_server.url,)))
        try:
            fresh = RecordStore(nc, federation=FED)
            assert await fresh.submit(receipt.subject, receipt.data, r.receipt_cid) == "buffered"
            assert await fresh.flush(timeout_s=10) and fresh.stored == 1
        finally:
            await nc.close()
        after = await _stream(nats_server.url)
    assert [rec.data for rec in after] == [rec.data for rec in before]
    report = audit(after, now_ms=_now_ms())
    assert report.ok and report.duplicates == 0, report.render()
