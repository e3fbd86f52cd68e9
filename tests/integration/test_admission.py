"""Admission control under a burst: bounded concurrency and queue, load shedding,
no job lost, none run twice (issue [2/5] acceptance)."""

from __future__ import annotations

import anyio
import pytest

from crankmesh import NoCapacity
from crankmesh.originator import Job

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.slow]

JOBS = 200


def _executions(node) -> float:
    return sum(
        s.value
        for m in node.metrics.execution_start.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )


async def _burst(client, jobs: int) -> tuple[list, list]:
    done: list = []
    busy: list = []

    async def one(i: int) -> None:
        try:
            r = await client.run(Job.python("print(args['i'])", {"i": i}, timeout_sec=5))
        except NoCapacity as exc:
            busy.append(exc)
            return
        assert r.ok and r.stdout == f"{i}\n"
        done.append(r)

    async with anyio.create_task_group() as tg:
        for i in range(jobs):
            tg.start_soon(one, i)
    return done, busy


async def test_burst_of_200_waits_for_capacity_none_lost_none_twice(nats_server):
    cfg = node_config(0, capabilities=("python.run",), max_concurrency=2, queue_depth=8)
    async with mesh(nats_server.url, [cfg]) as (node,):
        async with client_for(nats_server.url, "python.run", 1, busy_wait_s=60) as client:
            with anyio.fail_after(120):
                done, busy = await _burst(client, JOBS)
        assert not busy and len(done) == JOBS
        assert len({r.job_cid for r in done}) == JOBS
        assert len({r.receipt_cid for r in done}) == JOBS
        assert _executions(node) == JOBS  # every job ran exactly once
        ex = node.executor
        assert ex.peak_running <= 2
        assert ex.peak_outstanding <= ex.capacity == 10


async def test_burst_with_fail_fast_policy_gets_clear_no_capacity(nats_server):
    cfg = node_config(0, capabilities=("python.run",), max_concurrency=2, queue_depth=8)
    async with mesh(nats_server.url, [cfg]) as (node,):
        async with client_for(nats_server.url, "python.run", 1, busy_wait_s=0) as client:
            with anyio.fail_after(120):
                done, busy = await _burst(client, JOBS)
        assert len(done) + len(busy) == JOBS
        assert busy, "a 200-job burst at capacity 10 must shed load"
        assert "no capacity" in str(busy[0]) and "capacity 2" in str(busy[0])
        assert _executions(node) == len(done)  # shed jobs never ran
        assert node.executor.peak_outstanding <= node.executor.capacity


async def test_per_originator_rate_limit_declines_and_counts(nats_server):
    cfg = node_config(0, originator_rate=1.0, originator_burst=3)
    async with mesh(nats_server.url, [cfg]) as (node,):
        async with client_for(
            nats_server.url, "echo", 1, busy_wait_s=0, max_bid_window_ms=50
        ) as client:
            results = []
            for _ in range(5):
                try:
                    results.append(await client.run(Job.echo(b"x")))
                except NoCapacity:
                    results.append(None)
        assert sum(r is not None for r in results) == 3
        declined = sum(
            s.value
            for m in node.metrics.bids_declined.collect()
            for s in m.samples
            if s.name.endswith("_total") and s.labels.get("reason") == "rate_limited"
        )
        assert declined >= 2
