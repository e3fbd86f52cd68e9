#!/usr/bin/env python
"""How the market scales with the number of executors N: one JSON object on stdout.

For each N (``--n 3,10,30,100,300,1000``) it starts N light executors — real
:class:`crankmesh.node.Node` objects (the real executor, advert and directory code
and the real protocol), many per worker process (``--procs``), each with its own
NATS connection to one real nats-server — and an originator (a :class:`Client`) in
this process. Executors offer ``echo`` at heterogeneous prices (seeded, ``--seed``)
and promise the p95s their start-up self-benchmark measured. Per N it prints:

* per path (``quote``: assigned on the best live firm quote; ``call_for_bids``: a
  client with ``use_quotes=False``, announcing to a power-of-k sample), prefixed
  ``<path>_``: ``echo_p50_ms`` / ``echo_p99_ms`` of ``--jobs`` jobs run one at a time
  (``cost``), ``publishes_per_job`` / ``deliveries_per_job`` (nats-server ``/varz``
  ``in_msgs`` / ``out_msgs`` over those jobs, net of the idle traffic measured just
  before; ``*_raw`` keeps the gross figures), ``selection_ratio_cost`` and
  ``selection_ratio_latency`` (below), and ``paths_taken`` (from the explanations);
* ``idle_deliveries_per_s_node`` (messages delivered per second to one executor's
  connection while no job runs, from ``/connz``) and ``idle_deliveries_per_s_total``;
* ``selection_ratio_cost``: the chosen price over the best price among all N
  executors the directory knows (an oracle that sees all N), mean over the jobs;
  ``selection_ratio_latency``: the same for the promised p95 under ``latency``.

An N whose executors do not all come up within ``--start-timeout`` (or whose jobs
fail) is reported with an ``error`` and the larger N are skipped: the script is
bounded in time and stops by itself.

    python scripts/scale.py [--n 3,10,30] [--jobs 50] [--procs 2] [--idle-s 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import AsyncExitStack
from typing import Any

import anyio

from crankmesh._loop import event_loop_name
from crankmesh._loop import run as run_loop
from crankmesh.originator import Client, Job
from crankmesh.testing import NatsServer

CAPABILITY = "echo"


def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))], 3)


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback monitor
        doc: dict[str, Any] = json.load(r)
        return doc


def _price(seed: int, i: int) -> int:
    return random.Random(seed * 1_000_003 + i).randrange(500, 5000)


# ----------------------------------------------------------------------------- worker


async def _worker(url: str, start: int, count: int, seed: int) -> None:
    from crankmesh.executor.agent import ExecutorConfig
    from crankmesh.node import Node, NodeConfig
    from crankmesh.transport import NatsOptions

    async with AsyncExitStack() as stack:
        for i in range(start, start + count):
            cfg = NodeConfig(
                name=f"scale-{i}",
                capabilities=(CAPABILITY,),
                executor=ExecutorConfig(default_price=_price(seed, i), max_concurrency=4),
                calibration_runs=3,
                calibration_time_s=0.2,
                detect_gpu=False,
                probe_interval_s=0,
                follow_reputation=False,
                hardware_interval_s=3600,
                sandbox_profiles=(),
            )
            opts = NatsOptions(servers=(url,), name=f"scale-{i}")
            await stack.enter_async_context(Node(nats=opts, config=cfg))
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes stdin


# ----------------------------------------------------------------------------- one N


async def _start_workers(
    url: str, n: int, procs: int, seed: int, stack: AsyncExitStack
) -> list[Any]:
    per, extra = divmod(n, procs)
    started, start = [], 0
    for w in range(procs):
        count = per + (1 if w < extra else 0)
        if not count:
            continue
        cmd = [sys.executable, __file__, "--worker", url, str(start), str(count), str(seed)]
        proc = await anyio.open_process(cmd, stderr=subprocess.DEVNULL)
        stack.push_async_callback(_stop, proc)
        started.append(proc)
        start += count
    for proc in started:
        assert proc.stdout is not None
        line = await proc.stdout.receive()
        if b"ready" not in line:
            raise RuntimeError(f"a worker failed to start: {line!r}")
    return started


async def _stop(proc: Any) -> None:
    if proc.stdin is not None:
        await proc.stdin.aclose()
    with anyio.move_on_after(30, shield=True):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
    await proc.aclose()


def _node_out_msgs(monitor: str, name: str) -> int:
    conns = _get(f"{monitor}/connz?limit=100000")["connections"]
    for c in conns:
        if c.get("name") == name:
            return int(c["out_msgs"])
    raise RuntimeError(f"no connection named {name!r} on the server")


def _oracle(client: Client) -> tuple[int, float]:
    """The best price and the best promised p95 (µs) among every executor known."""
    prices, p95s = [], []
    for peer in client.directory.offering(CAPABILITY):
        for cap in peer.advert.capabilities:
            if cap.name == CAPABILITY:
                prices.append(cap.price)
                if cap.slo is not None:
                    p95s.append(cap.slo.p95_us)
    return min(prices), (min(p95s) if p95s else float("nan"))


def _promised_p95(client: Client, did: str) -> float:
    peer = client.directory.get(did)
    if peer is None:
        return float("nan")
    for cap in peer.advert.capabilities:
        if cap.name == CAPABILITY and cap.slo is not None:
            return float(cap.slo.p95_us)
    return float("nan")


async def _path_figures(
    client: Client,
    path: str,
    args: argparse.Namespace,
    monitor: str,
    best_price: int,
    best_p95: float,
) -> dict[str, Any]:
    """Echo latency, messages per job and selection quality of ``client``'s jobs, which
    go by ``path`` (checked on each job's explanation)."""
    lat, price_ratio, paths = [], [], set()
    v0, t_jobs = _get(f"{monitor}/varz"), time.time()
    for i in range(args.jobs):
        t = time.perf_counter()
        r = (await client.run(Job.echo(b"s%d" % i), policy="cost")).raise_for_status()
        lat.append((time.perf_counter() - t) * 1000)
        price_ratio.append(r.price / best_price)
        paths.add(r.explanation.path)
    v1, jobs_s = _get(f"{monitor}/varz"), time.time() - t_jobs
    p95_ratio = []
    for i in range(max(10, args.jobs // 2)):
        r = (await client.run(Job.echo(b"l%d" % i), policy="latency")).raise_for_status()
        p95_ratio.append(_promised_p95(client, r.executor) / best_p95)
    return {
        f"{path}_paths_taken": sorted(paths),
        f"{path}_echo_p50_ms": _q(lat, 0.5),
        f"{path}_echo_p99_ms": _q(lat, 0.99),
        f"{path}_publishes_per_job_raw": round((v1["in_msgs"] - v0["in_msgs"]) / args.jobs, 1),
        f"{path}_deliveries_per_job_raw": round(
            (v1["out_msgs"] - v0["out_msgs"]) / args.jobs, 1
        ),
        f"{path}_jobs_s_each": jobs_s / args.jobs,
        f"{path}_selection_ratio_cost": round(statistics.fmean(price_ratio), 3),
        f"{path}_selection_ratio_latency": round(statistics.fmean(p95_ratio), 3),
    }


async def _one_n(server: NatsServer, n: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n}
    async with AsyncExitStack() as stack:
        t0 = time.perf_counter()
        with anyio.fail_after(args.start_timeout):
            await _start_workers(server.url, n, min(args.procs, n), args.seed, stack)
        client = await stack.enter_async_context(Client(nats=server.url))
        have = await client.wait_for_peers(CAPABILITY, n, wait_s=args.start_timeout)
        if have < n:
            raise RuntimeError(f"only {have} of {n} executors in the directory")
        out["start_s"] = round(time.perf_counter() - t0, 1)
        for _ in range(5):  # warm-up
            (await client.run(Job.echo(b"warm"))).raise_for_status()

        monitor = server.monitor_url
        v0, c0, t_idle = _get(f"{monitor}/varz"), _node_out_msgs(monitor, "scale-0"), time.time()
        await anyio.sleep(args.idle_s)
        v1, c1 = _get(f"{monitor}/varz"), _node_out_msgs(monitor, "scale-0")
        idle_s = time.time() - t_idle
        idle_in = (v1["in_msgs"] - v0["in_msgs"]) / idle_s
        idle_out = (v1["out_msgs"] - v0["out_msgs"]) / idle_s
        out["idle_deliveries_per_s_node"] = round((c1 - c0) / idle_s, 1)
        out["idle_deliveries_per_s_total"] = round(idle_out, 1)

        best_price, best_p95 = _oracle(client)
        for path in ("quote", "call_for_bids"):
            on = client
            if path == "call_for_bids":
                on = await stack.enter_async_context(Client(nats=server.url, use_quotes=False))
                await on.wait_for_peers(CAPABILITY, n, wait_s=args.start_timeout)
            else:
                with anyio.move_on_after(args.start_timeout):
                    while len(client.directory.quotes(CAPABILITY)) < n:
                        await client.directory.wait_changed()
                out["live_quotes"] = len(client.directory.quotes(CAPABILITY))
            for _ in range(3):  # warm-up of this client
                (await on.run(Job.echo(b"warm"))).raise_for_status()
            out.update(await _path_figures(on, path, args, monitor, best_price, best_p95))
            # net of the idle traffic over the same time
            share = out.pop(f"{path}_jobs_s_each")
            out[f"{path}_publishes_per_job"] = round(
                max(0.0, out[f"{path}_publishes_per_job_raw"] - idle_in * share), 1
            )
            out[f"{path}_deliveries_per_job"] = round(
                max(0.0, out[f"{path}_deliveries_per_job_raw"] - idle_out * share), 1
            )
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "event_loop": event_loop_name(),
        "machine": f"{os.cpu_count()} cores",
        "jobs_per_n": args.jobs,
        "procs": args.procs,
        "results": [],
    }
    failed = None
    for n in args.n:
        if failed is not None:
            result["results"].append({"n": n, "skipped": f"after N = {failed} failed"})
            continue
        async with NatsServer(monitoring=True) as server:
            try:
                row = await _one_n(server, n, args)
            except (Exception, TimeoutError) as exc:  # report, skip the larger N
                row = {"n": n, "error": _describe(exc)}
                failed = n
        result["results"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # progress
    return result


def _describe(exc: BaseException) -> str:
    """One line per leaf exception (an ExceptionGroup's members, not its summary)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _ns(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("comma-separated positive integers, e.g. 3,10,30")
    return values


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, start, count, seed = sys.argv[2], *map(int, sys.argv[3:6])
        run_loop(_worker, url, start, count, seed)
        raise SystemExit(0)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=_ns, default=[3, 10, 30, 100, 300, 1000])
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--procs", type=int, default=2, help="worker processes hosting executors")
    p.add_argument("--idle-s", type=float, default=5.0, help="idle window per N")
    p.add_argument("--start-timeout", type=float, default=180.0)
    p.add_argument("--seed", type=int, default=1)
    out = run_loop(main, p.parse_args())
    json.dump(out, sys.stdout)
    print()
