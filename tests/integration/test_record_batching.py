"""Audit records leave in batches, off the hot path, and none is lost (RFC 0002 §2): the
record store lingers for a batch, sends a full batch at once, flushes on close, and
journals every queued record in its spill file, so that a store killed mid-burst loses
nothing it accepted — a restarted node publishes the rest, and the stream then holds the
bid and receipt of every receipt an originator was given, in one unbroken chain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from crankmesh.originator import Client, Job
from crankmesh.protocol.envelope import Envelope
from crankmesh.protocol.messages import Receipt, decode_message
from crankmesh.receipts import store as store_module
from crankmesh.receipts.audit import audit
from crankmesh.receipts.export import read_stream
from crankmesh.receipts.store import RecordStore, record_subject, stream_name
from crankmesh.testing import NatsServer
from crankmesh.transport import NatsOptions, connect

from ..unit.receipts import FED, clean_history
from .test_cli import CLI, DEV_ENV

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _records(n: int) -> list[Envelope]:
    h, _ = clean_history(n // 3 + 1)
    return h.envelopes[:n]


async def _submit_spaced(store: RecordStore, envs: list[Envelope], gap_s: float = 0.01) -> None:
    """Submit one record at a time, yielding to the loop in between (as jobs do)."""
    for env in envs:
        assert await store.submit(record_subject(FED, env), env.raw, env.cid) == "buffered"
        await anyio.sleep(gap_s)


@pytest.mark.parametrize(("linger_s", "batches"), [(1.0, 1), (0.0, 10)])
async def test_records_submitted_one_by_one_leave_in_one_batch_after_the_linger(
    nats_server: NatsServer, linger_s: float, batches: int
) -> None:
    envs = _records(10)
    nc = await connect(nats_server.client_options())
    try:
        store = RecordStore(nc, federation=FED, linger_s=linger_s)
        await store.ensure_stream()
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            await _submit_spaced(store, envs)
            with anyio.fail_after(10):
                await store.wait_flushed()
            tg.cancel_scope.cancel()
        # lingering: all ten in one batch; without it, one batch per record
        assert store.batches == batches
        records = await read_stream(nc, store.stream)
        assert [r.data for r in records] == [e.raw for e in envs]  # in order
    finally:
        await nc.close()


async def test_a_full_batch_leaves_at_once_and_close_flushes_the_rest(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    envs = _records(7)
    spill = tmp_path / "records.spill"
    nc = await connect(nats_server.client_options())
    try:
        store = RecordStore(nc, federation=FED, linger_s=60.0, batch_size=5, spill_path=spill)
        await store.ensure_stream()
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            await _submit_spaced(store, envs[:5])
            with anyio.fail_after(10):  # a full batch does not wait out the 60 s linger
                await store.wait_flushed()
            assert store.batches == 1
            await _submit_spaced(store, envs[5:])
            await anyio.sleep(0.2)
            assert store.pending == 2  # lingering: fewer than a batch
            assert await store.close(timeout_s=5)  # ...until the store closes
            tg.cancel_scope.cancel()
        assert store.pending == 0 and not spill.exists()
        records = await read_stream(nc, store.stream)
        assert [r.data for r in records] == [e.raw for e in envs]
    finally:
        await nc.close()


async def test_a_record_submitted_again_is_sent_once(nats_server: NatsServer) -> None:
    """The quote many jobs were assigned on is one record: repeats cost no publish."""
    env, other = _records(2)
    nc = await connect(nats_server.client_options())
    try:
        store = RecordStore(nc, federation=FED, linger_s=0)
        await store.ensure_stream()
        record = (record_subject(FED, env), env.raw, env.cid)
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            assert await store.submit_many([record, record]) == ["buffered", "duplicate"]
            with anyio.fail_after(10):
                await store.wait_flushed()
            assert await store.submit(*record) == "duplicate"  # stored: still remembered
            assert await store.submit(record_subject(FED, other), other.raw, other.cid) == (
                "buffered"
            )
            with anyio.fail_after(10):
                await store.wait_flushed()
            tg.cancel_scope.cancel()
        assert (store.stored, store.repeats) == (2, 2)  # JetStream acked two publishes
        records = await read_stream(nc, store.stream)
        assert [r.data for r in records] == [env.raw, other.raw]
    finally:
        await nc.close()


async def test_every_queued_record_is_in_the_journal_until_jetstream_has_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    envs = _records(6)
    spill = tmp_path / "records.spill"
    nc = await connect(nats_server.client_options())
    try:
        store = RecordStore(nc, federation=FED, spill_path=spill)
        await store.ensure_stream()
        outcomes = await store.submit_many([(record_subject(FED, e), e.raw, e.cid) for e in envs])
        assert outcomes == ["buffered"] * 6
        # what a store started on this file after a SIGKILL would find: all six
        assert RecordStore(nc, federation=FED, spill_path=spill).pending == 6
        assert await store.flush(timeout_s=5)
        assert spill.stat().st_size == 0  # JetStream has them all: the journal is emptied
        assert RecordStore(nc, federation=FED, spill_path=spill).pending == 0
    finally:
        await nc.close()


async def test_the_journal_holds_exactly_the_unanswered_records_after_every_batch(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 4 out of 10 records: after each, the journal is rewritten without what
    JetStream answered (compacted; here at any size) or emptied, never more, never less."""
    monkeypatch.setattr(store_module, "_WINDOW", 4)
    monkeypatch.setattr(store_module, "_COMPACT_BYTES", 1)
    envs = _records(10)
    spill = tmp_path / "records.spill"
    in_journal: list[tuple[int, int]] = []  # (records left in the file, pending)

    class Watched(RecordStore):
        def _answer(self, records: list[store_module._Pending]) -> None:
            super()._answer(records)
            in_journal.append((store_module.RecordStore._recover(spill)[0], self.pending))

    nc = await connect(nats_server.client_options())
    try:
        store = Watched(nc, federation=FED, spill_path=spill)
        await store.ensure_stream()
        await store.submit_many([(record_subject(FED, e), e.raw, e.cid) for e in envs])
        assert await store.flush(timeout_s=5)
        assert in_journal == [(6, 6), (2, 2), (0, 0)]
        # the store goes on appending after a compaction:
        more = _records(12)[10:]
        await store.submit_many([(record_subject(FED, e), e.raw, e.cid) for e in more])
        assert RecordStore._recover(spill)[0] == 2
        assert await store.close(timeout_s=5)
        records = await read_stream(nc, store.stream)
        assert [r.data for r in records] == [e.raw for e in envs + more]
    finally:
        await nc.close()


async def test_a_torn_journal_tail_is_cut_off_and_later_records_follow_in_order(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    envs = _records(5)
    spill = tmp_path / "records.spill"
    nc = await connect(nats_server.client_options())
    try:
        first = RecordStore(nc, federation=FED, spill_path=spill)
        await first.submit_many([(record_subject(FED, e), e.raw, e.cid) for e in envs[:3]])
        whole = spill.stat().st_size
        with spill.open("ab") as f:  # a write cut short by a crash: a header, half a body
            f.write(b"\x00\x10\x00\x10\x00\x00\x10\x00partial")
        second = RecordStore(nc, federation=FED, spill_path=spill)
        assert second.pending == 3 and spill.stat().st_size == whole
        await second.ensure_stream()
        await second.submit_many([(record_subject(FED, e), e.raw, e.cid) for e in envs[3:]])
        assert second.pending == 5
        assert await second.close(timeout_s=5) and not spill.exists()
        records = await read_stream(nc, second.stream)
        assert [r.data for r in records] == [e.raw for e in envs]
    finally:
        await nc.close()


async def test_a_journal_that_cannot_be_written_is_logged_once_and_records_stay_in_memory(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    envs = _records(4)
    spill = tmp_path / "no-such-dir" / "records.spill"
    nc = await connect(nats_server.client_options())
    try:
        store = RecordStore(nc, federation=FED, spill_path=spill, buffer_limit=3)
        await store.ensure_stream()
        outcomes = await store.submit_many([(record_subject(FED, e), e.raw, e.cid) for e in envs])
        # three fit in memory; the fourth has neither room nor a journal: dropped, counted
        assert outcomes == ["buffered", "buffered", "buffered", "dropped"]
        assert store.dropped == 1
        await store.submit_many([])  # nothing to journal: no second error
        journal_errors = [
            r for r in caplog.records if "cannot write the record journal" in r.message
        ]
        assert len(journal_errors) == 1
        assert await store.close(timeout_s=5)
        records = await read_stream(nc, store.stream)
        assert [r.data for r in records] == [e.raw for e in envs[:3]]
    finally:
        await nc.close()


def _start_node(url: str, key: Path, state: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            *CLI,
            "node",
            "--nats",
            url,
            "--key",
            str(key),
            "--state-dir",
            str(state),
            "--log-level",
            "ERROR",
            "--capabilities",
            "echo",
            "--price",
            "1",
            "--max-concurrency",
            "4",
            "--no-metrics",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=DEV_ENV,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line and json.loads(line)["event"] == "ready", "node did not start"
    return proc


def _journaled(spill: Path) -> int:
    return RecordStore._recover(spill)[0] if spill.exists() else 0


async def test_a_node_sigkilled_mid_burst_loses_no_record_of_a_delivered_receipt(
    tmp_path: Path,
) -> None:
    """Deterministic: the first run has no JetStream, so every record of the burst can
    only be in the journal when the node is SIGKILLed; the restarted node (same key and
    state dir) on a JetStream server publishes them. The stream then holds the winning
    bid and the receipt of every delivery the originator got, one unbroken chain, and
    nothing else but receipts signed in the instant of the kill."""
    key, state = tmp_path / "node.key", tmp_path / "state"
    spill = state / "records.spill"
    delivered: list[tuple[str, str]] = []  # (receipt CID, bid CID)
    async with NatsServer(jetstream=False) as plain:
        proc = _start_node(plain.url, key, state)
        try:
            # call for bids: a bid record and a receipt record per job (on a quote, jobs
            # share one quote record), which the journal counts below rely on
            async with Client(nats=plain.url, use_quotes=False) as client:
                assert await client.wait_for_peers("echo", 1, wait_s=10) >= 1
                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:

                        async def one(i: int) -> None:
                            try:
                                r = await client.run(Job.echo(b"burst %d" % i))
                            except Exception:  # the executor died under it
                                return
                            assert r.ok and r.verified
                            delivered.append((r.receipt_cid, r.receipt.bid or ""))
                            if len(delivered) == 12:  # mid-burst: jobs still in flight
                                os.kill(proc.pid, signal.SIGKILL)
                                tg.cancel_scope.cancel()

                        for i in range(40):
                            tg.start_soon(one, i)
                            await anyio.sleep(0.002)
        finally:
            proc.kill()
            proc.communicate(timeout=20)
    assert len(delivered) >= 12
    # two records (bid, receipt) per delivered receipt, plus any signed at the instant
    assert _journaled(spill) >= 2 * len(delivered)
    async with NatsServer() as js_server:
        proc = _start_node(js_server.url, key, state)
        try:
            nc = await connect(NatsOptions(servers=(js_server.url,)))
            try:
                with anyio.fail_after(30):
                    while True:
                        records = await read_stream(nc, stream_name("default"))
                        ids = {r.msg_id for r in records}
                        if all(rc in ids and bc in ids for rc, bc in delivered):
                            break
                        await anyio.sleep(0.1)
            finally:
                await nc.close()
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
    receipts = sorted(
        (decode_message(r.data, Receipt)[1] for r in records if ".receipts." in r.subject),
        key=lambda x: x.seq,
    )
    cids = [r.msg_id for r in records if ".receipts." in r.subject]
    assert len(cids) == len(set(cids)) == len(receipts)  # each stored once
    assert [x.seq for x in receipts] == list(range(1, len(receipts) + 1))  # no gap, no fork
    extra = len(receipts) - len(delivered)
    assert 0 <= extra <= 4  # at most the jobs running at the kill (max concurrency 4)
    report = audit(records, now_ms=max(x.ts for x in receipts) + 1000)
    assert report.ok, report.render()
    assert not spill.exists() or _journaled(spill) == 0  # the restarted node emptied it
