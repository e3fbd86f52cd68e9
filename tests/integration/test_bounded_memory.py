"""Bounded memory on a real node: deliveries kept for re-delivery live within their byte
bounds (older ones in the state dir), and every table has a gauge."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgpack
import pytest

from crankmesh.originator import Job
from crankmesh.protocol import subjects
from crankmesh.protocol.envelope import open_envelope
from crankmesh.protocol.messages import ReceiptDelivery
from crankmesh.tables import table_sizes

from .helpers import client_for, mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PAYLOAD = 4096


async def _run_and_sniff(url: str, jobs: int) -> tuple[list[tuple[str, bytes]], list[object]]:
    captured: list[tuple[str, bytes]] = []
    results: list[object] = []
    async with raw_connection(url) as sniffer:

        async def grab(msg):  # type: ignore[no-untyped-def]
            captured.append((msg.subject, msg.data))

        await sniffer.subscribe("crank.default.jobs.*.assignment.*", cb=grab)
        await sniffer.flush()
        async with client_for(url, "echo", 1) as client:
            for i in range(jobs):
                r = await client.run(Job.echo(bytes([i]) * PAYLOAD))
                assert r.ok
                results.append(r)
    return captured, results


async def _resend(url: str, subject: str, raw: bytes, job_cid: str) -> list[bytes]:
    """Send an assignment again; what is re-published on the job's receipt subject."""
    got: list[bytes] = []
    async with raw_connection(url) as nc:

        async def on(msg):  # type: ignore[no-untyped-def]
            got.append(msg.data)

        await nc.subscribe(subjects.receipt_delivery("default", job_cid), cb=on)
        reply = await nc.request(subject, raw, timeout=2)
        assert open_envelope(reply.data).type == "accept"
        await anyio.sleep(0.3)
    return got


async def test_deliveries_beyond_the_memory_bound_are_redelivered_from_the_state_dir(
    nats_server, tmp_path: Path
) -> None:
    cfg = node_config(0, state_dir=str(tmp_path), result_memory_bytes=20_000)
    async with mesh(nats_server.url, [cfg]) as (node,):
        captured, results = await _run_and_sniff(nats_server.url, 12)
        cache = node.executor.results  # type: ignore[union-attr]
        assert cache.memory_bytes <= 20_000 and cache.memory_entries < 12
        assert cache.disk_entries == 12 - cache.memory_entries
        assert len(list((tmp_path / "results").iterdir())) == cache.disk_entries
        sizes = table_sizes(node)
        assert sizes["executor_results_disk"] == cache.disk_entries
        assert sizes["executor_jobs"] == 12
        gauge = node.metrics.registry.get_sample_value(
            "crankmesh_table_entries", {"table": "executor_results_disk"}
        )
        assert gauge == cache.disk_entries
        # The first job's delivery is on disk now: a repeated assignment still gets it.
        first = results[0]
        subject, raw = captured[0]
        (again,) = await _resend(nats_server.url, subject, raw, first.job_cid)  # type: ignore[attr-defined]
        delivery = ReceiptDelivery.model_validate(msgpack.unpackb(again, raw=False))
        assert open_envelope(delivery.receipt).cid == first.receipt_cid  # type: ignore[attr-defined]


async def test_without_a_state_dir_the_oldest_deliveries_are_forgotten_and_counted(
    nats_server,
) -> None:
    cfg = node_config(0, result_memory_bytes=20_000)
    async with mesh(nats_server.url, [cfg]) as (node,):
        captured, results = await _run_and_sniff(nats_server.url, 12)
        cache = node.executor.results  # type: ignore[union-attr]
        assert cache.memory_bytes <= 20_000 and cache.disk_entries == 0
        assert cache.dropped == 12 - cache.memory_entries
        subject, raw = captured[0]
        assert await _resend(nats_server.url, subject, raw, results[0].job_cid) == []  # type: ignore[attr-defined]
        assert node.metrics.rejection_count("assignment", "result_forgotten") == 1
        # Not run again either: the idempotency record outlives the delivery.
        assert (
            node.metrics.registry.get_sample_value(
                "crankmesh_executions_started_total", {"capability": "echo"}
            )
            == 12
        )
