"""Pipelines under failure: an executor SIGKILLed during a step, and seed 003's rule
that a step failing on the local executor for a resource reason moves to a remote one."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from crankmesh import Job, Pipeline
from crankmesh.executor.handlers import Outcome
from crankmesh.protocol.messages import JobSpec

from .helpers import client_for, mesh, node_config
from .test_cli import node_process

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_executor_killed_during_a_step_the_step_and_pipeline_complete_elsewhere(
    nats_server, tmp_path: Path
):
    state = tmp_path / "state"
    cfgs = [node_config(0, capabilities=("python.run",), price=5000)]
    async with mesh(nats_server.url, cfgs) as (survivor,):
        with node_process(
            nats_server.url, tmp_path / "victim.key", "--capabilities", "python.run",
            "--price", "1",
        ) as (proc, victim):
            async with client_for(nats_server.url, "python.run", 2) as client:
                p = Pipeline("failover")
                p.step("a", Job.python("result = 20"))
                p.step(
                    "b",
                    Job.python("import time\ntime.sleep(2)\nresult = args['inputs']['a'] + 1",
                               timeout_sec=10),
                    inputs=["a"],
                )
                p.step("c", Job.python("result = args['inputs']['b'] * 2"), inputs=["b"])
                log = state / "runs" / "f1.jsonl"
                out: dict[str, object] = {}

                async def run() -> None:
                    out["run"] = await p.run(client, run_id="f1", state_dir=state)

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(run)
                        for _ in range(5000):  # until step a is verified and logged
                            if log.exists() and '"key":"a"' in log.read_text():
                                break
                            await anyio.sleep(0.01)
                        await anyio.sleep(0.5)  # b is running on the victim now
                        os.kill(proc.pid, signal.SIGKILL)
    run = out["run"]
    a, b, c = (run.record(k) for k in "abc")  # type: ignore[attr-defined]
    assert a.executor == victim  # the cheapest, until it died
    assert b.executor == survivor.did and c.executor == survivor.did
    assert any(victim in note for note in b.attempts), b.attempts
    assert run.value("c") == 42  # type: ignore[attr-defined]


class _RenderFrames:
    """A ``render.frames`` capability; ``free_gb`` below what the job needs fails the
    job for a resource reason, as a real renderer out of memory would."""

    name = "render.frames"

    def __init__(self, free_gb: int) -> None:
        self.free_gb = free_gb

    def check(self, job: JobSpec) -> str | None:
        return None

    async def execute(self, job: JobSpec, payload: bytes) -> Outcome:
        if self.free_gb < 8:
            return Outcome("memory_limit", None, f"needs 8 GB, {self.free_gb} GB free")
        return Outcome("ok", b"frames:" + payload)


async def test_a_step_failing_locally_for_a_resource_reason_is_retried_remotely(nats_server):
    local_cfg = node_config(0, capabilities=("echo",), price=1000,
                            extra_handlers=(_RenderFrames(free_gb=2),))
    remote_cfg = node_config(1, capabilities=("echo",), price=1000,
                             extra_handlers=(_RenderFrames(free_gb=64),))
    async with mesh(nats_server.url, [local_cfg, remote_cfg]) as (local, remote):
        client = local.client
        assert client is not None and client.local_executor == local.did
        assert await client.wait_for_peers("render.frames", 2, wait_s=10) == 2
        p = Pipeline("render")
        p.step("src", Job.echo(b"scene-1"))
        p.step("frames", Job.call("render.frames", b""), inputs=["src"])
        plan = await p.plan(client)
        frames_plan = plan.steps[1]
        assert any("retried on one of 1 compatible remote" in n for n in frames_plan.notes)
        run = await p.run(client)
    rec = run.record("frames")
    assert rec.executor == remote.did
    assert rec.attempts and "local executor failed with memory_limit" in rec.attempts[0]
    assert run.value("frames") == "frames:scene-1"
    assert client.excluded(local.did, "render.frames") is None  # readmitted afterwards
