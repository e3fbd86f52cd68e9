#!/usr/bin/env python
"""RSS cost of the deliveries a node keeps for re-delivery; one JSON object on stdout.

One in-process node (with a state dir) serves a capability returning 1 MiB; after a
warm-up, 100 jobs run through the full signed flow and the process's RSS is compared
before and after.  Issue 14 measured +102.7 MB here (every sealed result stayed in
memory for the 1 h idempotency window); the result cache bounds it to its 2 MiB.

    python scripts/result_memory.py
"""

from __future__ import annotations

import gc
import json
import os
import tempfile

import anyio

from crankmesh.node import Node, NodeConfig
from crankmesh.originator import Client, Job
from crankmesh.testing import NatsServer


def rss() -> float:
    """This process's VmRSS in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def blob(payload: bytes) -> bytes:
    return os.urandom(1 << 20)


async def main() -> None:
    with tempfile.TemporaryDirectory() as state:
        async with NatsServer(extra_config="max_payload: 8388608") as srv:
            cfg = NodeConfig(
                capabilities=(),
                calibration_runs=0,
                detect_gpu=False,
                probe_interval_s=0,
                state_dir=state,
            )
            async with Node(nats=srv.url, config=cfg, services={"blob": blob}):
                async with Client(nats=srv.url) as cl:
                    await cl.wait_for_peers("blob", 1, wait_s=10)
                    for _ in range(5):
                        assert (await cl.run(Job(capability="blob", payload=b"x"))).ok
                    gc.collect()
                    before = rss()
                    for _ in range(100):
                        r = await cl.run(Job(capability="blob", payload=b"x"))
                        assert r.ok and len(r.output) == 1 << 20
                    del r
                    gc.collect()
                    after = rss()
                    print(
                        json.dumps(
                            {
                                "results": 100,
                                "result_bytes": 1 << 20,
                                "rss_before_mib": round(before, 1),
                                "rss_after_mib": round(after, 1),
                                "growth_mib": round(after - before, 1),
                            }
                        )
                    )


if __name__ == "__main__":
    anyio.run(main)
