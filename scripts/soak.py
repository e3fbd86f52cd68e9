#!/usr/bin/env python
"""crankmesh soak: a paced, time-bounded run; one JSON object on stdout.

Starts a nats-server (JetStream on) and ``--nodes`` ``crankmesh node`` processes, each
with its own key and state dir, then submits jobs from one SDK client at ``--rate``
jobs per second for ``--minutes``, spread over the nodes by the ``balanced`` policy.
Every ``--sample-s`` seconds it reads each node's resident set size (VmRSS), and
prints them per node per sample, with the growth over the last two thirds of the run:

    growth_pct = (RSS at the end - RSS at 1/3 of the run) / RSS at 1/3 of the run * 100

    python scripts/soak.py [--minutes 30] [--rate 8] [--nodes 3] [--capability echo]

The acceptance of issue 14 is a 30-minute run with every node's growth under 5 %.
Jobs are paced (one every 1/rate s); when ``--max-in-flight`` are outstanding, a slot
is skipped and counted (``skipped``), so the run never falls behind unboundedly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from crankmesh.originator import Client, Job
from crankmesh.testing import NatsServer


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def growth_pct(samples: list[int]) -> float | None:
    """Growth over the last two thirds of ``samples`` (in %), None if too few."""
    if len(samples) < 3:
        return None
    base = samples[len(samples) // 3]
    return round((samples[-1] - base) / base * 100, 2) if base else None


def start_node(i: int, url: str, root: Path, capability: str) -> tuple[subprocess.Popen[str], str]:
    state = root / f"node-{i}"
    state.mkdir(parents=True)
    err = (root / f"node-{i}.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crankmesh.cli",
            "node",
            "--nats",
            url,
            "--key",
            str(state / "node.key"),
            "--state-dir",
            str(state),
            "--name",
            f"soak-{i}",
            "--capabilities",
            capability,
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env={**os.environ, "CRANKMESH_ENV": "development"},
    )
    err.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"node {i} did not start: {(root / f'node-{i}.log').read_text()[-2000:]}")
    ready = json.loads(line)
    return proc, ready["did"]


def make_job(capability: str, payload_bytes: int, i: int) -> Job:
    if capability == "echo":
        return Job.echo(i.to_bytes(8, "big") + os.urandom(max(0, payload_bytes - 8)))
    return Job.python("print(args['i'])", {"i": i}, timeout_sec=10)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    duration = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="crankmesh-soak-") as tmp:
        root = Path(tmp)
        async with NatsServer() as server:
            nodes = [start_node(i, server.url, root, args.capability) for i in range(args.nodes)]
            names = {did: f"node-{i}" for i, (_, did) in enumerate(nodes)}
            samples: dict[str, list[int]] = {f"node-{i}": [] for i in range(args.nodes)}
            per_node_jobs = dict.fromkeys(samples, 0)
            latencies: list[float] = []
            failures: dict[str, int] = {}
            skipped = 0
            submitted = 0
            in_flight = 0
            try:
                async with Client(nats=server.url, policy="balanced", busy_wait_s=5) as client:
                    await client.wait_for_peers(args.capability, args.nodes, wait_s=30)

                    async def one(i: int) -> None:
                        nonlocal in_flight
                        t = time.perf_counter()
                        try:
                            r = await client.run(make_job(args.capability, args.payload_bytes, i))
                        except Exception as exc:
                            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                        else:
                            if r.ok:
                                latencies.append((time.perf_counter() - t) * 1000)
                                node = names.get(r.executor)
                                if node is not None:
                                    per_node_jobs[node] += 1
                            else:
                                failures[r.status] = failures.get(r.status, 0) + 1
                        finally:
                            in_flight -= 1

                    def sample() -> None:
                        nonlocal last_sample
                        last_sample = time.monotonic()
                        line = []
                        for i, (proc, _) in enumerate(nodes):
                            kib = rss_kib(proc.pid) or 0
                            samples[f"node-{i}"].append(kib)
                            line.append(f"node-{i} {kib / 1024:.1f} MiB")
                        print(
                            f"[{time.monotonic() - start:6.0f} s] {submitted} jobs; "
                            + ", ".join(line),
                            file=sys.stderr,
                        )

                    start = last_sample = time.monotonic()
                    sample()
                    next_sample = start + args.sample_s
                    async with anyio.create_task_group() as tg:
                        i = 0
                        while True:
                            now = time.monotonic()
                            if now >= next_sample:
                                sample()
                                next_sample += args.sample_s
                            if now - start >= duration:
                                break
                            due = start + i / args.rate
                            if due > now:
                                await anyio.sleep(min(due, next_sample) - now)
                                continue
                            i += 1
                            if in_flight >= args.max_in_flight:
                                skipped += 1
                                continue
                            in_flight += 1
                            submitted += 1
                            tg.start_soon(one, i)
                    if time.monotonic() - last_sample > args.sample_s / 2:
                        sample()  # the end of the run
            finally:
                for proc, _ in nodes:
                    proc.terminate()
                for proc, _ in nodes:
                    try:
                        proc.wait(timeout=40)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
    per_node = []
    for name, values in samples.items():
        per_node.append(
            {
                "node": name,
                "jobs": per_node_jobs[name],
                "rss_mib": [round(v / 1024, 1) for v in values],
                "growth_last_two_thirds_pct": growth_pct(values),
            }
        )
    growths = [n["growth_last_two_thirds_pct"] for n in per_node]
    known = [g for g in growths if g is not None]
    return {
        "script": "soak",
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "capability": args.capability,
        "payload_bytes": args.payload_bytes if args.capability == "echo" else None,
        "sample_s": args.sample_s,
        "submitted": submitted,
        "completed": len(latencies),
        "failed": failures,
        "skipped": skipped,
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p95_ms": round(statistics.quantiles(latencies, n=20)[-1], 2)
        if len(latencies) >= 20
        else None,
        "nodes": per_node,
        "max_growth_pct": max(known) if known else None,
        "growth_under_5_pct": bool(known) and max(known) < 5.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    p.add_argument("--rate", type=float, default=8.0, help="jobs submitted per second")
    p.add_argument("--nodes", type=int, default=3, help="crankmesh node processes")
    p.add_argument("--capability", choices=("echo", "python.run"), default="echo")
    p.add_argument("--payload-bytes", type=int, default=1024, help="echo payload size")
    p.add_argument("--sample-s", type=float, default=60.0, help="seconds between RSS samples")
    p.add_argument("--max-in-flight", type=int, default=64, help="outstanding jobs at most")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.nodes < 1 or args.sample_s <= 0:
        p.error("--minutes, --rate and --sample-s must be > 0, --nodes >= 1")
    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(anyio.run(soak, args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
