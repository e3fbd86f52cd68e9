"""A pipeline from a YAML file on a small local mesh: plan, run, mapping, costs.

Run it with ``python examples/pipeline.py``. It starts an embedded nats-server and two
nodes (one with the ``python-ml`` profile, numpy + torch), prints the plan (candidates,
expected price and p95 per step; the GPU variant of the ML step shows why no executor
fits, and its CPU fallback the ones that do), runs the pipeline, and prints the verified
mapping as a tree and as Mermaid, and the costs. Exits 0 when every step verified.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import anyio

from crankmesh import Client, Node, NodeConfig, Pipeline
from crankmesh.executor.agent import ExecutorConfig
from crankmesh.testing import NatsServer

HERE = Path(__file__).resolve().parent


async def main() -> int:
    pipeline = Pipeline.from_file(HERE / "mail_pipeline.yaml")
    caps = ("python.run", "email.classify.spam-v1")
    async with NatsServer() as server:
        ml = NodeConfig(
            name="ml-box",
            capabilities=caps,
            sandbox_profiles=("python-core", "python-ml"),
            executor=ExecutorConfig(default_price=2000),
            calibration_runs=0,
        )
        core = NodeConfig(
            name="core-box", capabilities=caps, executor=ExecutorConfig(default_price=1000),
            calibration_runs=0,
        )
        async with Node(nats=server.url, config=ml), Node(nats=server.url, config=core):
            async with Client(nats=server.url) as client:
                await client.wait_for_peers("python.run", 2, wait_s=30)
                plan = await pipeline.plan(client)
                print(plan.render("tree"))
                if not plan.ok:  # e.g. torch not installed: no python-ml executor
                    missing = [f"{s.step}: {s.mismatch}" for s in plan.steps if s.mismatch]
                    print("cannot run:", "; ".join(missing), file=sys.stderr)
                    return 1
                with tempfile.TemporaryDirectory() as state:
                    run = await pipeline.run(client, state_dir=state)
    print()
    print(run.render("tree"))
    print()
    print(run.render("mermaid"))
    print(json.dumps(run.costs().to_dict()["per_step"]))
    summary = str(run.value("summarize")).strip()
    print(summary)
    return 0 if summary.startswith("2 of 4 mails are spam") else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
