#!/usr/bin/env python
"""crankmesh benchmark: one run, one JSON object on stdout.

The headline is the **deployment layout**: an embedded nats-server (JetStream on),
``--executors`` separate ``crankmesh node`` processes, each with its own key and state
directory, verifying every signature it receives, and this process as the client.
It measures, in one run:

* the nats-py request/reply round trip on the same server (the floor);
* ``echo`` jobs one at a time through the full signed flow, per path, as p50/p95/p99
  and as a ratio to the floor (``echo_<path>_p50_over_floor``): ``quote`` (assigned on
  the best live firm quote: one request/reply whose answer is the receipt) and
  ``call_for_bids`` (announce to a sample of k → bids → assignment → accept/receipt);
* throughput at concurrency 16 and 64 (``--concurrency``), per path;
* CPU milliseconds per echo job for every process (client, each node, nats-server:
  utime + stime from ``/proc``) and in total, per path: steadier than wall time on a
  shared machine;
* ``python.run`` ``print(42)`` p50/p95/p99 (sandboxed, on a warm fork-server).

``--in-process`` adds the old single-process layout as a secondary section
(``in_process``): every party in this process, where a signature made here is never
verified again and nothing is written to a state dir, so it flatters the product.

    python scripts/bench.py [--executors 3] [--jobs 300] [--python-jobs 200] [--in-process]

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
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.errors

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
    for _ in range(100):  # until the server routes the subscription to `a`
        try:
            await a.request("bench.echo", b"x", timeout=2)
            break
        except nats.errors.NoRespondersError:
            await anyio.sleep(0.05)
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


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (and its reaped children), in seconds, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14–17
    return sum(int(x) for x in fields[11:15]) / _TICK


class _Cpu:
    """CPU seconds of named processes between two snapshots (this process included)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        now = {name: _cpu_s(pid) for name, pid in self.pids.items()}
        now["client"] = time.process_time()
        return now

    def ms_per_job(self, jobs: int) -> dict[str, float]:
        end = self._now()
        out = {k: round((end[k] - self.start[k]) / jobs * 1000, 3) for k in end}
        out["total"] = round(sum(out.values()), 3)
        return out


async def _start_nodes(
    url: str, n: int, caps: tuple[str, ...], root: Path, stack: AsyncExitStack
) -> dict[str, int]:
    """``n`` ``crankmesh node`` processes, each with its own key and state dir."""
    env = {**os.environ, "CRANKMESH_ENV": "development"}
    pids: dict[str, int] = {}
    procs = []
    for i in range(n):
        state = root / f"node-{i}"
        cmd = [
            sys.executable, "-m", "crankmesh.cli", "node", "--nats", url,
            "--state-dir", str(state), "--name", f"bench-{i}",
            "--capabilities", ",".join(caps), "--price", str(1000 + 100 * i),
            "--max-concurrency", "4", "--queue-depth", "64", "--no-metrics",
            "--log-level", "error",
        ]  # fmt: skip
        proc = await anyio.open_process(cmd, env=env, stderr=subprocess.DEVNULL)
        stack.push_async_callback(_stop, proc)
        procs.append((f"node-{i}", proc))
    for name, proc in procs:
        assert proc.stdout is not None
        buf = b""
        with anyio.fail_after(120):
            while b"\n" not in buf:
                chunk = await proc.stdout.receive()
                buf += chunk
        line = buf.split(b"\n", 1)[0]
        if b'"ready"' not in line:
            raise SystemExit(f"{name} failed to start: {line!r}")
        pids[name] = proc.pid
    return pids


async def _stop(proc: Any) -> None:
    if proc.returncode is None:
        proc.terminate()
        with anyio.move_on_after(30, shield=True):
            await proc.wait()
    if proc.returncode is None:
        proc.kill()
    await proc.aclose()


async def _wait_for_quotes(client: Client, capability: str, count: int) -> None:
    with anyio.move_on_after(30):
        while len(client.directory.quotes(capability)) < count:
            await client.directory.wait_changed()


async def _measure(
    url: str, caps: tuple[str, ...], args: argparse.Namespace, pids: dict[str, int] | None
) -> dict[str, Any]:
    """The client's side of one layout, per path (``quote``: assigned on the best live firm
    quote, one request/reply; ``call_for_bids``: announce to a sample, bids, assignment):
    latency, CPU per job, throughput; then python.run (on its default path)."""
    out: dict[str, Any] = {"jobs": args.jobs}
    for path in ("quote", "call_for_bids"):
        async with Client(nats=url, use_quotes=path == "quote") as client:
            for cap in caps:
                await client.wait_for_peers(cap, args.executors)
            if path == "quote":
                await _wait_for_quotes(client, "echo", args.executors)
            for _ in range(30):  # warm-up: connections, caches, fork-servers
                (await client.run(Job.echo(b"warm"))).raise_for_status()
            cpu = _Cpu(pids or {})
            lat, secs = await _jobs(client, lambda: Job.echo(b"bench"), args.jobs, 0)
            per_job = cpu.ms_per_job(args.jobs)
            probe = await client.run(Job.echo(b"which path"))
            out.update(
                {
                    f"echo_{path}_p50_ms": _q(lat, 0.5),
                    f"echo_{path}_p95_ms": _q(lat, 0.95),
                    f"echo_{path}_p99_ms": _q(lat, 0.99),
                    f"echo_{path}_mean_ms": round(statistics.fmean(lat), 3),
                    f"echo_{path}_sequential_jobs_s": round(args.jobs / secs, 1),
                    f"echo_{path}_cpu_ms_per_job_total": per_job["total"],
                    f"echo_{path}_cpu_ms_per_job": per_job,
                    # what the client's explanation says the jobs went by (a check that
                    # the path measured is the path named)
                    f"echo_{path}_path_taken": probe.explanation.path,
                }
            )
            for c in args.concurrency:
                out[f"echo_{path}_throughput_c{c}_jobs_s"] = round(
                    await _throughput(client, max(args.jobs, 4 * c), c), 1
                )
            if path == "quote" and "python.run" in caps and args.python_jobs:
                make = lambda: Job.python("print(42)")  # noqa: E731
                lat, _ = await _jobs(client, make, args.python_jobs, 10)
                out.update(
                    python_jobs=args.python_jobs,
                    python_run_p50_ms=_q(lat, 0.5),
                    python_run_p95_ms=_q(lat, 0.95),
                    python_run_p99_ms=_q(lat, 0.99),
                )
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "executors": args.executors,
        "layout": f"deployment: nats-server + {args.executors} `crankmesh node` processes "
        "(own key and state dir, every signature verified) + this client process",
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
    with tempfile.TemporaryDirectory(prefix="crankmesh-bench-") as tmp:
        async with NatsServer() as server, AsyncExitStack() as stack:
            floor = await _nats_floor(server.url, args.floor)
            result["nats_request_reply_p50_ms"] = floor_p50 = _q(floor, 0.5)
            result["nats_request_reply_p99_ms"] = _q(floor, 0.99)
            pids = await _start_nodes(server.url, args.executors, caps, Path(tmp), stack)
            pids["nats-server"] = server.pid
            result.update(await _measure(server.url, caps, args, pids))
            for path in ("quote", "call_for_bids"):
                result[f"echo_{path}_p50_over_floor"] = round(
                    result[f"echo_{path}_p50_ms"] / floor_p50, 2
                )
    if args.in_process:
        async with NatsServer() as server, AsyncExitStack() as stack:
            for i in range(args.executors):
                cfg = NodeConfig(
                    name=f"bench-{i}",
                    capabilities=caps,
                    executor=ExecutorConfig(
                        default_price=1000 + 100 * i, max_concurrency=4, queue_depth=64
                    ),
                )
                await stack.enter_async_context(Node(nats=server.url, config=cfg))
            secondary = await _measure(server.url, caps, args, {"nats-server": server.pid})
            secondary["layout"] = "in-process: every party in this process (secondary)"
            result["in_process"] = secondary
    result["python_reference_ms_after"] = _reference_ms()
    sign_us, verify_us = _ed25519_us()
    result["ed25519_sign_us_after"] = sign_us
    result["ed25519_verify_us_after"] = verify_us
    return result


def _concurrencies(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("comma-separated positive integers, e.g. 16,64")
    return values


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--executors", type=int, default=3)
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--python-jobs", type=int, default=200)
    p.add_argument("--floor", type=int, default=1000, help="request/reply samples")
    p.add_argument("--concurrency", type=_concurrencies, default=[16, 64],
                   help="throughput at each of these concurrencies (default 16,64)")
    p.add_argument("--in-process", action="store_true",
                   help="also run every party in this process (a secondary section)")
    logging.basicConfig(level=logging.ERROR)
    out = run_loop(main, p.parse_args())
    json.dump(out, sys.stdout)
    print()
