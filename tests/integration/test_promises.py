"""Promises judged against service time on a real mesh (RFC 0002 §6), then audited.

An honest executor and one that promises 10 × below its real service time serve echo and
python.run jobs through a real nats-server; the audit of the stream must tell them apart by
service-time compliance, from the overhead estimates the originator signed into its
settlements, with no fixed network allowance.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from crankmesh.originator import Job
from crankmesh.protocol.envelope import open_envelope
from crankmesh.protocol.messages import BidSlo, Settlement, decode_message
from crankmesh.receipts.audit import Record, audit
from crankmesh.receipts.export import read_stream
from crankmesh.receipts.store import stream_name
from crankmesh.transport import NatsOptions, connect

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

CAPS = ("echo", "python.run")
JOBS = {"echo": 40, "python.run": 20}


def _ten_times_below(slo_for: Callable[[str], BidSlo]) -> Callable[[str], BidSlo]:
    """A dishonest executor: every latency it promises is a tenth of what it measured."""

    def lie(capability: str) -> BidSlo:
        slo = slo_for(capability)
        scaled: dict[str, Any] = {
            k: (max(1, v // 10) if v is not None else None)
            for k, v in (("p50_us", slo.p50_us), ("p95_us", slo.p95_us), ("p99_us", slo.p99_us))
        }
        return slo.model_copy(update=scaled)

    return lie


class _SlowEcho:
    """The liar's echo: really takes ~2 ms (its service time) where it promises a tenth."""

    name = "echo"
    quick = True

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def check(self, job: Any) -> str | None:
        return self._inner.check(job)  # type: ignore[no-any-return]

    async def execute(self, job: Any, payload: bytes) -> Any:
        await anyio.sleep(0.002)
        return await self._inner.execute(job, payload)


async def _stream(url: str) -> list[Record]:
    nc = await connect(NatsOptions(servers=(url,)))
    try:
        return await read_stream(nc, stream_name("default"))
    finally:
        await nc.close()


def _job(capability: str, i: int) -> Job:
    if capability == "echo":
        return Job.echo(f"ping {i}".encode())
    return Job.python("print(sum(range(args['n'])))", {"n": 1000 + i})


async def test_audit_tells_an_honest_executor_from_a_ten_times_under_promiser(nats_server):
    cfgs = [
        node_config(i, capabilities=CAPS, calibration_runs=10, calibration_time_s=5.0)
        for i in range(2)
    ]
    async with mesh(nats_server.url, cfgs) as (honest, liar):
        # the liar: echo takes ~2 ms; every promise is a tenth of what it measures, on both
        liar.executor.handlers["echo"] = _SlowEcho(liar.executor.handlers["echo"])
        liar.executor.slo_for = _ten_times_below(liar.executor.slo_for)  # type: ignore[method-assign]
        jobs: dict[str, set[str]] = {cap: set() for cap in CAPS}
        async with client_for(nats_server.url, "python.run", 2) as client:
            for cap in CAPS:
                for i in range(JOBS[cap]):
                    for node in (honest, liar):
                        r = await client.run(_job(cap, i), executor=node.did)
                        assert r.ok and r.verified, (r.status, r.receipt.detail)
                        jobs[cap].add(r.job_cid)
            # the originator's view: the liar's service p95 is far above its promises
            assert client.overhead.estimate(f"{honest.did} echo") is not None
        for node in (honest, liar):
            assert node.record_store is not None
            await node.record_store.wait_flushed()
        want = 2 * 3 * sum(JOBS.values())  # bid + receipt + settlement per job
        with anyio.fail_after(10):
            while len(records := await _stream(nats_server.url)) < want:  # noqa: ASYNC110
                await anyio.sleep(0.1)
    report = audit(records, now_ms=time.time_ns() // 1_000_000 + 1000)
    assert report.ok, report.render()
    settlements = [
        decode_message(r.data, Settlement)[1] for r in records if ".settlements." in r.subject
    ]
    assert settlements and all(s.overhead_us is not None for s in settlements)

    # one audit per capability: the audit is per executor, the acceptance per capability
    figures: dict[str, dict[str, Any]] = {}
    for cap in CAPS:
        sub = [r for r in records if _job_of(r) in jobs[cap]]
        rep = audit(sub, now_ms=time.time_ns() // 1_000_000 + 1000)
        figures[cap] = {
            name: rep.executors[node.did].to_dict()
            for name, node in (("honest", honest), ("liar", liar))
        }
    if os.environ.get("CRANKMESH_PRINT_AUDIT"):
        print(json.dumps(figures, indent=1, sort_keys=True))
    for cap in CAPS:
        h, lie = figures[cap]["honest"], figures[cap]["liar"]
        assert h["slo_jobs"] == JOBS[cap] and lie["slo_jobs"] == JOBS[cap], figures
        assert h["slo_compliance"] >= 0.9, (cap, h)
        assert lie["slo_compliance"] <= 0.5, (cap, lie)


def _job_of(record: Record) -> str | None:
    job = open_envelope(record.data).body.get("job")
    return job if isinstance(job, str) else None


async def test_a_bid_made_behind_a_running_job_promises_the_wait_too(nats_server):
    """Item 5: the bid quotes its profile at the current load (RFC 0002 §6.1 judges it)."""

    async def work(payload: bytes) -> bytes:
        await anyio.sleep(0.1)
        return payload

    cfg = node_config(0, capabilities=("work",), max_concurrency=1)
    async with mesh(nats_server.url, [cfg], work=work) as (node,):
        async with client_for(nats_server.url, "work", 1) as client:
            for i in range(5):  # a measured profile: ~100 ms
                await client.run(Job.call("work", bytes([i])), executor=node.did)
            alone = await client.run(Job.call("work", b"alone"), executor=node.did)
            results = []

            async def run(data: bytes) -> None:
                results.append(await client.run(Job.call("work", data), executor=node.did))

            async with anyio.create_task_group() as tg:
                tg.start_soon(run, b"first")
                await anyio.sleep(0.03)  # the first one is running when the second is bid for
                tg.start_soon(run, b"second")

    def promised(r: Any) -> int:
        (c,) = [c for c in r.explanation.considered if c.executor == node.did]
        assert c.p95_us is not None
        return int(c.p95_us)

    second = next(r for r in results if r.output == b"second")
    assert promised(second) >= 1.8 * promised(alone), (promised(second), promised(alone))
