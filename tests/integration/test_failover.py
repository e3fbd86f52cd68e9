"""Failover at scale: an executor dies mid-run; no job is lost, none completes twice."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from crankmesh.originator import Job

from .helpers import client_for, mesh, node_config
from .test_cli import node_process

pytestmark = [
    pytest.mark.integration, pytest.mark.anyio, pytest.mark.slow,
    pytest.mark.usefixtures("both_paths"),  # quote and call-for-bids paths
]

JOBS = 200


def _executions(node) -> float:
    return sum(
        s.value
        for m in node.metrics.execution_start.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )


async def test_200_jobs_with_one_executor_killed_midway(nats_server, tmp_path: Path):
    cfgs = [node_config(i, capabilities=("python.run",), price=5000 + i) for i in range(2)]
    async with mesh(nats_server.url, cfgs) as survivors:
        with node_process(
            nats_server.url, tmp_path / "victim.key", "--capabilities", "python.run", "--price", "1"
        ) as (proc, victim):
            async with client_for(nats_server.url, "python.run", 3, busy_wait_s=60) as client:
                results: dict[int, object] = {}
                killed = anyio.Event()

                async def one(i: int, limit: anyio.Semaphore) -> None:
                    async with limit:
                        r = await client.run(
                            Job.python(
                                "import time\ntime.sleep(0.02)\nprint(args['i'])",
                                {"i": i},
                                timeout_sec=5,
                            )
                        )
                    assert r.ok and r.stdout == f"{i}\n", (r.status, r.stderr)
                    results[i] = r
                    if len(results) == JOBS // 2 and not killed.is_set():
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.set()

                limit = anyio.Semaphore(12)
                with anyio.fail_after(150):
                    async with anyio.create_task_group() as tg:
                        for i in range(JOBS):
                            tg.start_soon(one, i, limit)
                assert killed.is_set()
    assert sorted(results) == list(range(JOBS))  # none lost
    by_executor: dict[str, int] = {}
    for r in results.values():
        by_executor[r.executor] = by_executor.get(r.executor, 0) + 1
    assert by_executor.get(victim, 0) > 0  # the victim did real work before dying
    for node in survivors:  # survivors ran each of their jobs exactly once
        assert _executions(node) == by_executor.get(node.did, 0)
    reassigned = [r for r in results.values() if r.attempts]
    # Failover goes to the next-best bids; a survivor that is full says so plainly.
    others = [a for r in reassigned for a in r.attempts if a.executor != victim]
    assert all(a.outcome.startswith("rejected: no_capacity") for a in others), others[:5]
    assert any(a.executor == victim for r in reassigned for a in r.attempts)
    assert len({r.receipt_cid for r in results.values()}) == JOBS
