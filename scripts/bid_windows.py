#!/usr/bin/env python
"""How often a bid window waits out its maximum: one JSON object on stdout.

Starts an embedded nats-server and ``--nodes`` real nodes offering ``echo`` with little
capacity each, then runs ``--jobs`` echo jobs at ``--concurrency`` from one client, so
that executors are often full.  A full executor answers with a signed NoBid (RFC 0001
§8.13); the window closes as soon as every expected bidder answered.  Before NoBids,
a full executor said nothing and the window stayed open for ``max_bid_window_ms``
(issue 14: 10-21 % of jobs at concurrency 16).  Prints how many windows there were
and how many lasted longer than ``--long-ms`` (rounded down to a histogram bucket).

    python scripts/bid_windows.py [--nodes 2] [--jobs 300] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import logging
from contextlib import AsyncExitStack
from typing import Any

from crankmesh._loop import run as run_loop
from crankmesh.executor.agent import ExecutorConfig
from crankmesh.node import Node, NodeConfig
from crankmesh.originator import Client, Job
from crankmesh.testing import NatsServer


def _histogram(metric: Any, long_s: float) -> tuple[float, float, float]:
    """(windows, windows longer than the bound, the bound): the bound is the largest
    histogram bucket not above ``long_s``."""
    samples = [s for m in metric.collect() for s in m.samples]
    count = next(s.value for s in samples if s.name.endswith("_count"))
    buckets = [
        (float(s.labels["le"]), s.value)
        for s in samples
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    ]
    bound, short = max(((le, v) for le, v in buckets if le <= long_s), default=(0.0, 0.0))
    return count, count - short, bound


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with NatsServer() as server, AsyncExitStack() as stack:
        for i in range(args.nodes):
            config = NodeConfig(
                capabilities=("echo",),
                executor=ExecutorConfig(
                    default_price=1000 * (i + 1),
                    max_concurrency=args.max_concurrency,
                    queue_depth=args.queue_depth,
                ),
                calibration_runs=0,
                detect_gpu=False,
                probe_interval_s=0,
                name=f"node-{i}",
            )
            await stack.enter_async_context(Node(nats=server.url, config=config))
        client = await stack.enter_async_context(
            Client(nats=server.url, busy_wait_s=60, max_bid_window_ms=args.window_ms)
        )
        await client.wait_for_peers("echo", args.nodes, wait_s=10, settle_s=0.2)
        jobs = [Job.echo(b"%d" % i) for i in range(args.jobs)]
        results = await client.map(jobs, concurrency=args.concurrency, return_exceptions=True)
        ok = sum(1 for r in results if not isinstance(r, Exception) and r.ok)
        windows, long, bound = _histogram(client.metrics.bid_window_seconds, args.long_ms / 1000)
    return {
        "script": "scripts/bid_windows.py",
        "nodes": args.nodes,
        "capacity_per_node": args.max_concurrency + args.queue_depth,
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "max_bid_window_ms": args.window_ms,
        "completed": ok,
        "windows": int(windows),
        "long_window_bound_ms": round(bound * 1000, 3),
        "windows_over_bound": int(long),
        "fraction_long": round(long / windows, 3) if windows else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-concurrency", type=int, default=2, help="per node")
    parser.add_argument("--queue-depth", type=int, default=2, help="per node")
    parser.add_argument("--window-ms", type=int, default=200, help="max_bid_window_ms")
    parser.add_argument(
        "--long-ms", type=int, default=100, help="a window longer than this is long (100)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    out = run_loop(main_async, args)
    print(json.dumps(out, indent=2))
    return 0 if out["completed"] == args.jobs else 1


if __name__ == "__main__":
    raise SystemExit(main())
