"""Executor caps on real nodes: a job asking more than the operator allows is declined and
never run; a job within the caps runs under the caps' limits; an Assignment past the
totals is rejected with a reason naming the cap."""

from __future__ import annotations

import pytest

from crankmesh import NoCapacity
from crankmesh.executor.caps import ExecutorCaps
from crankmesh.market import get_policy
from crankmesh.originator import Job
from crankmesh.protocol.errors import ExecutorsExhausted, NoBids
from crankmesh.protocol.messages import Constraints

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _count(metric, **labels: str) -> float:
    return sum(
        s.value
        for m in metric.collect()
        for s in m.samples
        if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_job_over_the_executors_caps_is_declined_and_never_run(nats_server):
    caps = ExecutorCaps(max_timeout_ms=2_000, max_output_bytes=4096)  # memory: 4096 MB
    async with mesh(nats_server.url, [node_config(0, caps=caps)]) as (node,):
        async with client_for(
            nats_server.url, "echo", 1, busy_wait_s=0, max_bid_window_ms=100, max_attempts=1
        ) as client:
            for job, cap in (
                (Job.echo(b"x", timeout_sec=3), "timeout"),  # asks 3 s, the cap is 2 s
                (Job.call("echo", b"x", timeout_sec=1, max_output_bytes=4097), "output"),
                (
                    Job(
                        capability="echo",
                        payload=b"x",
                        # more than the cap, less than the machine: only the executor knows
                        constraints=Constraints(memory_mb=8_192, timeout_ms=1_000),
                    ),
                    "memory",
                ),
            ):
                with pytest.raises((NoBids, NoCapacity)) as info:
                    await client.run(job)
                # the executor's signed NoBid names the cap, and the error quotes it
                assert "over_caps" in str(info.value) and cap in str(info.value), str(info.value)
            assert _count(node.metrics.bids_declined, reason="over_caps") >= 3
            assert _count(node.metrics.execution_start) == 0
            ok = await client.run(Job.call("echo", b"fits", timeout_sec=2, max_output_bytes=4096))
            assert ok.ok and ok.output == b"fits"
            assert _count(node.metrics.execution_start) == 1


async def test_python_job_within_caps_runs_with_the_caps_memory_and_cpu_applied(nats_server):
    # The job asks no memory and a 20 s timeout: it gets the operator's 64 MB default and
    # 1 CPU second, not the interpreter's whole address space and 21 CPU seconds.
    caps = ExecutorCaps(default_memory_mb=64, max_memory_mb=256, max_cpu_s=1)
    cfg = node_config(0, capabilities=("python.run",), caps=caps)
    async with mesh(nats_server.url, [cfg]):
        async with client_for(nats_server.url, "python.run", 1) as client:
            r = await client.run(Job.python("x = bytearray(200 * 1024 * 1024)", timeout_sec=20))
            assert r.status == "memory_limit" and r.verified, (r.status, r.receipt.detail)
            r = await client.run(Job.python("while True:\n    pass", timeout_sec=20))
            assert r.status == "killed" and "cpu time limit of 1 s" in r.receipt.detail, (
                r.status,
                r.receipt.detail,
            )
            assert r.receipt.metering.wall_us < 10_000_000
            # Within the caps and the defaults, the same allocation succeeds.
            r = await client.run(
                Job.python("x = bytearray(20 * 1024 * 1024)\nprint(len(x))", timeout_sec=5)
            )
            assert r.ok and r.stdout == f"{20 * 1024 * 1024}\n"


class _RoomTakenWhileRanking:
    """The 'cost' policy, plus a side effect: while the originator ranks the bids, another
    job takes the executor's room (deterministically between its bid and the Assignment)."""

    name = "cost"

    def __init__(self, take_room) -> None:
        self._inner = get_policy("cost")
        self._take_room = take_room

    def rank(self, candidates, terms, now_ms):
        self._take_room()
        return self._inner.rank(candidates, terms, now_ms)


async def test_assignment_past_the_total_memory_cap_is_rejected_naming_the_cap(nats_server):
    # Each job gets 1024 MB by default; together, admitted jobs may hold 1536 MB. The job is
    # bid on while the room is free; by the time its Assignment arrives another job holds
    # 1024 MB, so the executor answers with a signed Reject "over_caps" naming the cap.
    caps = ExecutorCaps(default_memory_mb=1024, max_total_memory_mb=1536)
    cfg = node_config(0, caps=caps)
    async with mesh(nats_server.url, [cfg]) as (node,):
        ex = node.executor
        assert ex is not None
        other = caps.effective(Constraints())
        policy = _RoomTakenWhileRanking(lambda: ex.caps_ledger.admit("other-job", other))
        async with client_for(
            nats_server.url, "echo", 1, busy_wait_s=0, max_bid_window_ms=100, max_attempts=1
        ) as client:
            with pytest.raises(ExecutorsExhausted) as info:
                await client.run(Job.echo(b"x"), policy=policy)
            text = str(info.value)
            assert "over_caps" in text and "max_total_memory_mb" in text, text
            assert "2048 MB asked > cap max_total_memory_mb 1536 MB" in text, text
            assert _count(node.metrics.assignments, outcome="over_caps") == 1
            assert _count(node.metrics.execution_start) == 0
            # The room frees up: the same job now runs, and leaves the ledger as it found it.
            ex.caps_ledger.release("other-job")
            r = await client.run(Job.echo(b"y"))
            assert r.ok and r.output == b"y"
            assert len(ex.caps_ledger) == 0 and ex.caps_ledger.memory_mb == 0


async def test_python_job_disk_is_capped_by_max_job_disk_mb(nats_server):
    caps = ExecutorCaps(max_disk_mb=1)
    cfg = node_config(0, capabilities=("python.run",), caps=caps)
    code = "with open('big', 'wb') as f:\n    f.write(b'x' * (2 * 1024 * 1024))"
    async with mesh(nats_server.url, [cfg]):
        async with client_for(nats_server.url, "python.run", 1) as client:
            r = await client.run(Job.python(code, timeout_sec=10))
            assert r.status == "error" and "file size limit of 1048576 bytes" in r.receipt.detail, (
                r.status,
                r.receipt.detail,
            )
            r = await client.run(Job.python(code.replace("2 * 1024", "512"), timeout_sec=10))
            assert r.ok, (r.status, r.receipt.detail)
            # many files, each under the cap, together over it: the job directory's quota
            many = (
                "import time\nfor i in range(8):\n"
                "    with open(f'f{i}', 'wb') as f:\n        f.write(b'x' * (512 * 1024))\n"
                "time.sleep(0.5)"
            )
            r = await client.run(Job.python(many, timeout_sec=10))
            # a tmpfs of the quota (strict; basic where kernel_disk_quota) is full (ENOSPC);
            # elsewhere the fork-server's quota check kills the job
            detail = r.receipt.detail
            assert not r.ok, (r.status, detail)
            assert "No space left" in detail or "disk" in detail, detail


async def test_price_scales_with_the_reserved_gib_seconds_in_bid_and_receipt(nats_server):
    # 1000 µ base + 100 µ per GiB-second: 1024 MB (the default) held for 2 s adds 200 µ.
    cfg = node_config(0, price=1000, price_per_gib_s=100, caps=ExecutorCaps())
    async with mesh(nats_server.url, [cfg]):
        async with client_for(
            nats_server.url, "echo", 1, busy_wait_s=0, max_bid_window_ms=100, max_attempts=1
        ) as client:
            r = await client.run(Job.echo(b"x", timeout_sec=2))
            assert r.ok and r.price == 1200 and r.receipt.charge == 1200
            r = await client.run(Job.echo(b"x", timeout_sec=4))
            assert r.ok and r.price == 1400 and r.receipt.charge == 1400
            # The scaled price is what max_price is compared with: 1200 > 1199, no bid.
            with pytest.raises((NoBids, NoCapacity)):
                await client.run(Job.echo(b"x", timeout_sec=2, max_price=1199))
