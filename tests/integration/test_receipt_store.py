"""Receipts in JetStream on a real nats-server: store, dedupe, read back, export, audit,
and no record lost while JetStream is away (RFC 0002 §2–§4)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anyio
import pytest

from crankmesh.protocol.errors import TransportError
from crankmesh.receipts.audit import audit
from crankmesh.receipts.export import (
    ExportError,
    ExportHeader,
    read_export,
    read_stream,
    write_export,
)
from crankmesh.receipts.store import RecordStore, open_record_store, record_subject, stream_name
from crankmesh.testing import NatsServer
from crankmesh.transport import connect

from ..unit.receipts import FED, T0, clean_history

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

NOW = T0 + 86_400_000


def test_stream_name_of_a_federation() -> None:
    assert stream_name("acme-eu") == "CRANKMESH_ACME_EU"
    assert stream_name(FED) == "CRANKMESH_T"
    with pytest.raises(ValueError):
        stream_name("no.dots")


async def test_publish_dedupes_by_cid_and_read_stream_returns_everything(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    h, _ = clean_history(3)
    nc = await connect(nats_server.client_options())
    try:
        store = RecordStore(nc, federation=FED)
        info = await store.ensure_stream()
        assert sorted(info.config.subjects) == [
            f"crank.{FED}.bids.*",
            f"crank.{FED}.receipts.*",
            f"crank.{FED}.settlements.*",
            f"crank.{FED}.tokens.*",
        ]
        await store.ensure_stream()  # idempotent
        outcomes = [await store.publish_envelope(env) for env in h.envelopes]
        assert set(outcomes) == {"stored"}
        assert await store.publish_envelope(h.envelopes[3]) == "duplicate"
        assert store.pending == 0

        records = await read_stream(nc, store.stream)
        assert [r.data for r in records] == [e.raw for e in h.envelopes]
        assert [r.msg_id for r in records] == [e.cid for e in h.envelopes]
        assert [r.seq for r in records] == list(range(1, len(h.envelopes) + 1))
        assert records[0].subject.startswith(f"crank.{FED}.tokens.z6Mk")
        report = audit(records, now_ms=NOW)
        assert report.ok, report.render()

        out = tmp_path / "export.jsonl"
        header = ExportHeader(federation=FED, stream=store.stream, exported_ms=NOW)
        write_export(out, records, header)
        first = json.loads(out.read_text().splitlines()[0])
        assert first["format"] == "crankmesh-export-v1" and first["records"] == len(records)
        head2, again = read_export(out)
        assert again == records
        assert (head2.federation, head2.stream, head2.records) == (FED, store.stream, len(records))
    finally:
        await nc.close()


async def test_read_stream_of_an_empty_or_missing_stream(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.client_options())
    try:
        store = RecordStore(nc, federation="empty")
        await store.ensure_stream()
        assert await read_stream(nc, store.stream) == []
        with pytest.raises(TransportError, match="no JetStream stream"):
            await read_stream(nc, "CRANKMESH_NOPE")
    finally:
        await nc.close()


async def test_records_published_while_the_server_is_down_are_flushed_after_restart(
    nats_server: NatsServer,
) -> None:
    h, _ = clean_history(4)
    envs = h.envelopes
    half = len(envs) // 2
    lost = anyio.Event()

    async def on_disconnect() -> None:
        lost.set()

    nc = await connect(
        nats_server.client_options(reconnect_time_wait_s=0.1), on_disconnect=on_disconnect
    )
    try:
        async with open_record_store(nc, federation=FED, publish_timeout_s=0.5) as store:
            for env in envs[:half]:
                assert await store.publish_envelope(env) == "stored"
            nats_server.kill()
            with anyio.fail_after(10):
                await lost.wait()
            outcomes = [await store.publish_envelope(env) for env in envs[half:]]
            assert set(outcomes) == {"buffered"}
            assert store.pending == len(envs) - half
            await nats_server.arestart()
            with anyio.fail_after(15):
                await store.wait_flushed()  # the background loop publishes them
            assert store.pending == 0
        records = await read_stream(nc, store.stream)
    finally:
        await nc.close()
    assert sorted(r.data for r in records) == sorted(e.raw for e in envs)  # none lost, no dupes
    assert audit(records, now_ms=NOW).ok


async def test_missing_stream_is_created_by_the_flush_and_overflow_spills_in_order(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    h, _ = clean_history(2)
    spill = tmp_path / "spill.bin"
    nc = await connect(nats_server.client_options())
    try:
        # no ensure_stream(): JetStream answers "no stream" until the flush creates it
        store = RecordStore(nc, federation=FED, buffer_limit=3, spill_path=spill)
        outcomes = [await store.publish_envelope(env) for env in h.envelopes]
        assert outcomes[:3] == ["buffered"] * 3
        assert set(outcomes[3:]) == {"spilled"}
        assert spill.exists() and store.pending == len(h.envelopes)
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            with anyio.fail_after(10):
                await store.wait_flushed()
            tg.cancel_scope.cancel()
        assert spill.stat().st_size == 0  # the journal is emptied once all is stored...
        assert await store.close()
        assert not spill.exists()  # ...and removed on close
        records = await read_stream(nc, store.stream)
        assert [r.data for r in records] == [e.raw for e in h.envelopes]  # in order
    finally:
        await nc.close()


async def test_the_flush_loop_pipelines_many_records_in_order_and_counts_refusals(
    nats_server: NatsServer,
) -> None:
    """Records submitted faster than acks come back are published in windows, stored
    in order, and one JetStream refuses for good (too large) is counted, not retried."""
    h, _ = clean_history(40)
    envs = h.envelopes
    nc = await connect(nats_server.client_options())
    try:
        store = RecordStore(nc, federation=FED, max_msg_size=4096)
        await store.ensure_stream()
        big = envs[5]
        oversized = (f"crank.{FED}.receipts.x", b"\x00" * 8192, "oversized-record")
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            for i, env in enumerate(envs):
                if i == 5:
                    assert await store.submit(*oversized) == "buffered"
                assert await store.submit(record_subject(FED, env), env.raw, env.cid) == "buffered"
            await store.submit(record_subject(FED, big), big.raw, big.cid)  # a re-send
            with anyio.fail_after(10):
                await store.wait_flushed()
            tg.cancel_scope.cancel()
        assert store.rejected == 1 and store.pending == 0
        records = await read_stream(nc, store.stream)
        assert [r.data for r in records] == [e.raw for e in envs]  # in order, deduplicated
    finally:
        await nc.close()


async def test_without_jetstream_records_wait_and_a_spill_file_outlives_the_store(
    tmp_path: Path,
) -> None:
    h, _ = clean_history(1)
    spill = tmp_path / "spill.bin"
    async with NatsServer(jetstream=False) as plain, NatsServer() as js_server:
        nc = await connect(plain.client_options())
        try:
            store = RecordStore(nc, federation=FED, buffer_limit=2, spill_path=spill)
            with pytest.raises(TransportError, match="JetStream"):
                await store.ensure_stream()
            outcomes = [await store.publish_envelope(env) for env in h.envelopes]
            assert outcomes == ["buffered", "buffered"] + ["spilled"] * (len(outcomes) - 2)
            assert not await store.flush(timeout_s=0.3)
            assert store.pending == len(h.envelopes)
        finally:
            await nc.close()
        # a new process finds the spill file: it journals the in-memory part too
        nc = await connect(js_server.client_options())
        try:
            store = RecordStore(nc, federation=FED, spill_path=spill)
            assert store.pending == len(h.envelopes)
            await store.ensure_stream()
            assert await store.close(timeout_s=5)
            assert not spill.exists()
            records = await read_stream(nc, store.stream)
            assert [r.data for r in records] == [e.raw for e in h.envelopes]
        finally:
            await nc.close()


def _ns(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "nats": None,
        "file": None,
        "stream": None,
        "federation": FED,
        "json": False,
        "out": None,
    }
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_export_then_audit_file_and_live(
    nats_server: NatsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crankmesh.cli._audit_cmds import cmd_audit, cmd_receipts_export

    h, people = clean_history(2)
    forged = h.job(people["orig-1"], people["ex-a"], price=1000, charge=5000)

    async def publish() -> None:
        nc = await connect(nats_server.client_options())
        try:
            store = RecordStore(nc, federation=FED)
            await store.ensure_stream()
            for env in h.envelopes:
                await store.publish_envelope(env)
        finally:
            await nc.close()

    anyio.run(publish)
    out = tmp_path / "x.jsonl"
    assert cmd_receipts_export(_ns(nats=nats_server.url, out=str(out))) == 0
    assert "exported" in capsys.readouterr().out

    assert cmd_audit(_ns(file=str(out))) == 1
    text = capsys.readouterr().out
    assert "[overcharge]" in text and forged.receipt.cid in text

    assert cmd_audit(_ns(nats=nats_server.url, json=True)) == 1
    obj = json.loads(capsys.readouterr().out)
    assert obj["ok"] is False
    assert [f["kind"] for f in obj["findings"]] == ["overcharge"]
    assert obj["findings"][0]["cid"] == forged.receipt.cid

    # usage errors: exit 2
    assert cmd_audit(_ns()) == 2
    assert cmd_audit(_ns(file=str(out), nats=nats_server.url)) == 2
    assert cmd_audit(_ns(file=str(tmp_path / "missing.jsonl"))) == 2
    (tmp_path / "junk.jsonl").write_text("hello\n")
    assert cmd_audit(_ns(file=str(tmp_path / "junk.jsonl"))) == 2
    assert cmd_audit(_ns(nats=nats_server.url, stream="NOPE")) == 2
    assert cmd_audit(_ns(nats="nats://127.0.0.1:1", connect_timeout=0.3)) == 3  # unreachable
    capsys.readouterr()

    # garbage lines in an export are findings, not crashes
    lines = out.read_text().splitlines()
    lines.insert(2, "{not json")
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(ExportError):
        read_export(tmp_path / "junk.jsonl")
    _, records = read_export(out)
    assert sum(r.defect is not None for r in records) == 2  # the line, and the count
    assert cmd_audit(_ns(file=str(out))) == 1
