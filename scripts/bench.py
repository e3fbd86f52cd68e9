#!/usr/bin/env python
"""crankmesh benchmark: one run, one JSON object on stdout.

Starts an embedded nats-server, measures the nats-py request/reply round trip
(the floor), then runs ``echo`` jobs (and ``python.run`` ``print(42)`` jobs when
the sandbox is available) through the full signed flow with N executors:
announce → bids → assignment → accept → receipt, every message signed and
verified.

    python scripts/bench.py [--executors 3] [--jobs 300] [--python-jobs 200]

It runs on the event loop crankmesh's entry points use (uvloop when installed;
``CRANKMESH_EVENT_LOOP=asyncio`` for the standard library loop), named in the output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import nats

from crankmesh._loop import event_loop_name
from crankmesh._loop import run as run_loop
from crankmesh.executor.agent import ExecutorConfig
from crankmesh.node import Node, NodeConfig
from crankmesh.originator import Client, Job
from crankmesh.testing import NatsServer


def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))], 3)


def _reference_ms() -> float:
    """A fixed pure-Python workload (best of 3): how fast this machine runs Python right
    now.  On a shared VM it drifts, and every latency above drifts with it."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        s = 0
        for i in range(200_000):
            s += i * i % 7
        best = min(best, (time.perf_counter() - t) * 1000)
    return round(best, 2)


def _ed25519_us() -> tuple[float, float]:
    """PyNaCl Ed25519 sign and verify of a 300-byte message, in µs (best of 5): the
    figures ARCHITECTURE.md's table of measured costs gives (18 / 43 µs), so a run
    can be compared with the machine speed those figures were measured at."""
    import nacl.signing

    key = nacl.signing.SigningKey(bytes(range(32)))
    message = b"m" * 300
    signed = key.sign(message)
    verify_key = key.verify_key
    n = 2000

    def best_us(fn: Any) -> float:
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t) / n * 1e6)
        return round(best, 1)

    return best_us(lambda: key.sign(message)), best_us(lambda: verify_key.verify(signed))


async def _nats_floor(url: str, n: int) -> list[float]:
    a = await nats.connect(url)
    b = await nats.connect(url)

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await b.subscribe("bench.echo", cb=echo)
    await b.flush()
    out = []
    for i in range(n + 50):
        t = time.perf_counter()
        await a.request("bench.echo", b"x" * 64, timeout=2)
        if i >= 50:
            out.append((time.perf_counter() - t) * 1000)
    await a.close()
    await b.close()
    return out


async def _jobs(client: Client, make: Any, n: int, warmup: int) -> tuple[list[float], float]:
    for _ in range(warmup):
        (await client.run(make())).raise_for_status()
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        r = await client.run(make())
        lat.append((time.perf_counter() - t) * 1000)
        if not (r.ok and r.verified):
            raise SystemExit(f"job failed: {r.status} {r.receipt.detail}")
    return lat, time.perf_counter() - t0


async def _throughput(client: Client, n: int, concurrency: int) -> float:
    sem = anyio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            (await client.run(Job.echo(b"t%d" % i))).raise_for_status()

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return n / (time.perf_counter() - t0)


_EXECUTORS_SCRIPT = """
import json, sys, anyio
from crankmesh._loop import run
from contextlib import AsyncExitStack
from crankmesh.executor.agent import ExecutorConfig
from crankmesh.node import Node, NodeConfig

async def main(url, n, caps):
    async with AsyncExitStack() as stack:
        for i in range(n):
            cfg = NodeConfig(name=f"bench-{i}", capabilities=caps,
                             executor=ExecutorConfig(default_price=1000 + 100 * i,
                                                     max_concurrency=4, queue_depth=64))
            await stack.enter_async_context(Node(nats=url, config=cfg))
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes stdin

run(main, sys.argv[1], int(sys.argv[2]), tuple(sys.argv[3].split(",")))
"""


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "executors": args.executors,
        "layout": "in-process" if args.in_process else "originator process + executors process",
        "event_loop": event_loop_name(),  # CRANKMESH_EVENT_LOOP=asyncio for the standard one
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
    }
    caps: tuple[str, ...] = ("echo",)
    try:
        from crankmesh.executor.sandbox import Sandbox  # noqa: F401

        if args.python_jobs:
            caps = ("echo", "python.run")
    except ImportError:
        pass
    result["python_reference_ms_before"] = _reference_ms()
    sign_us, verify_us = _ed25519_us()
    result["ed25519_sign_us_before"] = sign_us
    result["ed25519_verify_us_before"] = verify_us
    async with NatsServer() as server, AsyncExitStack() as stack:
        floor = await _nats_floor(server.url, args.floor)
        result["nats_request_reply_p50_ms"] = _q(floor, 0.5)
        result["nats_request_reply_p99_ms"] = _q(floor, 0.99)
        if args.in_process:
            for i in range(args.executors):
                cfg = NodeConfig(
                    name=f"bench-{i}",
                    capabilities=caps,
                    executor=ExecutorConfig(default_price=1000 + 100 * i, max_concurrency=4,
                                            queue_depth=64),
                )
                await stack.enter_async_context(Node(nats=server.url, config=cfg))
        else:
            proc = await anyio.open_process(
                [sys.executable, "-c", _EXECUTORS_SCRIPT, server.url, str(args.executors),
                 ",".join(caps)],
            )
            stack.push_async_callback(proc.aclose)
            assert proc.stdin is not None and proc.stdout is not None
            stack.push_async_callback(proc.stdin.aclose)
            line = await proc.stdout.receive()
            if b"ready" not in line:
                raise SystemExit(f"executors failed to start: {line!r}")
        async with Client(nats=server.url) as client:
            for cap in caps:
                await client.wait_for_peers(cap, args.executors)
            cpu0 = time.process_time()
            lat, secs = await _jobs(client, lambda: Job.echo(b"bench"), args.jobs, 30)
            # CPU of this whole process (originator + executors in-process) per job:
            # steadier than wall time on a shared machine.
            cpu_per_job = (time.process_time() - cpu0) / (args.jobs + 30) * 1000
            result.update(
                jobs=args.jobs,
                echo_p50_ms=_q(lat, 0.5),
                echo_p95_ms=_q(lat, 0.95),
                echo_p99_ms=_q(lat, 0.99),
                echo_mean_ms=round(statistics.fmean(lat), 3),
                echo_sequential_jobs_s=round(args.jobs / secs, 1),
                echo_cpu_ms_per_job=round(cpu_per_job, 3),
            )
            result["echo_throughput_jobs_s"] = round(
                await _throughput(client, args.jobs, args.concurrency), 1
            )
            result["echo_throughput_concurrency"] = args.concurrency
            if "python.run" in caps:
                lat, _ = await _jobs(client, lambda: Job.python("print(42)"), args.python_jobs, 10)
                result.update(
                    python_jobs=args.python_jobs,
                    python_run_p50_ms=_q(lat, 0.5),
                    python_run_p95_ms=_q(lat, 0.95),
                    python_run_p99_ms=_q(lat, 0.99),
                )
    result["python_reference_ms_after"] = _reference_ms()
    sign_us, verify_us = _ed25519_us()
    result["ed25519_sign_us_after"] = sign_us
    result["ed25519_verify_us_after"] = verify_us
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--executors", type=int, default=3)
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--python-jobs", type=int, default=200)
    p.add_argument("--floor", type=int, default=1000, help="request/reply samples")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--executors-process", dest="in_process", action="store_false",
                   help="run the executors in a second process (on 2 cores this adds "
                   "latency: the originator, executors and nats-server then compete)")
    logging.basicConfig(level=logging.ERROR)
    out = run_loop(main, p.parse_args())
    json.dump(out, sys.stdout)
    print()
