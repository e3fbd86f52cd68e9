#!/usr/bin/env python
"""crankmesh against Celery 5 + Redis on the same machine, in one run: one JSON object.

The same echo workload on both, in interleaved rounds (``--rounds``; Celery, then
crankmesh, then Celery again, …) so that both see the same machine speed:

* **Celery**: a ``redis-server`` on a free port (broker and result backend), one
  ``celery worker --pool prefork --concurrency 3`` (3 prefork workers) serving an
  ``echo`` task; the client calls ``echo.delay(b).get()``.
* **crankmesh**: the deployment layout of ``scripts/bench.py`` — a nats-server, 3
  ``crankmesh node`` processes with their own keys and state dirs, and this process
  as the client, every job through the full signed flow. The headline figures are the
  quote path (assigned on a live firm quote); ``cfb_*`` are the call-for-bids path's.

Per system: echo p50/p99 of ``--jobs`` jobs one at a time, throughput at each
``--concurrency`` (threads for Celery's blocking client, tasks for crankmesh), CPU
ms per job across every process involved; then the ratios crankmesh / Celery of
the medians over the rounds (``ratio_p50`` below 1 means crankmesh is faster,
``ratio_throughput_c64`` above 1 means it serves more).

Optional, never in CI: needs ``pip install 'celery[redis]'`` and a ``redis-server``
binary (``apt-get install redis-server``); without them it prints what is missing
and exits 2.

    python scripts/bench_peers.py [--jobs 300] [--rounds 2] [--concurrency 16,64]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("crankmesh_bench", _HERE / "bench.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

_TASKS = '''
import os
from celery import Celery
app = Celery("peers", broker=os.environ["PEERS_BROKER"], backend=os.environ["PEERS_BACKEND"])
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)

@app.task(name="echo")
def echo(x):
    return x
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    out = []
    for c in text.split():
        out += [int(c), *_children(int(c))]
    return out


def _tree_cpu_s(pid: int) -> float:
    total = 0.0
    for p in (pid, *_children(pid)):
        try:
            total += bench._cpu_s(p)
        except OSError:
            pass
    return total


def _celery_round(args: argparse.Namespace, tmp: Path, port: int) -> dict[str, Any]:
    # One port for every round: the client's Celery app (imported once) keeps its broker URL.
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "PEERS_BROKER": f"redis://127.0.0.1:{port}/0",
        "PEERS_BACKEND": f"redis://127.0.0.1:{port}/1",
        "PYTHONPATH": f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    worker = None
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "peers_tasks", "worker", "--pool",
             "prefork", "--concurrency", "3", "--loglevel", "ERROR", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],  # fmt: skip
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.environ.update({k: env[k] for k in ("PEERS_BROKER", "PEERS_BACKEND")})
        sys.path.insert(0, str(tmp))
        import peers_tasks

        echo = peers_tasks.echo
        echo.delay("warm").get(timeout=60)  # the worker is up
        for _ in range(30):
            echo.delay("warm").get(timeout=10)
        pids = {"redis": redis.pid, "celery-worker": worker.pid}
        cpu0 = {k: _tree_cpu_s(p) for k, p in pids.items()}
        cpu0["client"] = time.process_time()
        lat = []
        for i in range(args.jobs):
            t = time.perf_counter()
            if echo.delay(f"bench{i}").get(timeout=10) != f"bench{i}":
                raise SystemExit("celery echo returned something else")
            lat.append((time.perf_counter() - t) * 1000)
        cpu1 = {k: _tree_cpu_s(p) for k, p in pids.items()}
        cpu1["client"] = time.process_time()
        per_job = {k: round((cpu1[k] - cpu0[k]) / args.jobs * 1000, 3) for k in cpu1}
        per_job["total"] = round(sum(per_job.values()), 3)
        out: dict[str, Any] = {
            "echo_p50_ms": bench._q(lat, 0.5),
            "echo_p99_ms": bench._q(lat, 0.99),
            "echo_cpu_ms_per_job": per_job,
        }
        for c in args.concurrency:
            n = max(args.jobs, 4 * c)
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(c) as pool:
                list(pool.map(lambda i: echo.delay(f"t{i}").get(timeout=30), range(n)))
            out[f"echo_throughput_c{c}_jobs_s"] = round(n / (time.perf_counter() - t0), 1)
        return out
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        redis.terminate()
        redis.wait(timeout=20)


async def _crankmesh_round(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="crankmesh-peers-") as tmp:
        async with bench.NatsServer() as server, AsyncExitStack() as stack:
            pids = await bench._start_nodes(server.url, 3, ("echo",), Path(tmp), stack)
            pids["nats-server"] = server.pid
            ns = argparse.Namespace(
                executors=3, jobs=args.jobs, python_jobs=0, concurrency=args.concurrency
            )
            m = await bench._measure(server.url, ("echo",), ns, pids)
    # The headline is the quote path (one request/reply on a live firm quote); the
    # call-for-bids figures ride along as cfb_* for the same comparison.
    path = "quote"
    out: dict[str, Any] = {
        "echo_p50_ms": m[f"echo_{path}_p50_ms"],
        "echo_p99_ms": m[f"echo_{path}_p99_ms"],
        "path": m[f"echo_{path}_path_taken"],
        "echo_cpu_ms_per_job": m[f"echo_{path}_cpu_ms_per_job"],
        "cfb_echo_p50_ms": m["echo_call_for_bids_p50_ms"],
        "cfb_echo_cpu_ms_per_job_total": m["echo_call_for_bids_cpu_ms_per_job_total"],
    }
    prefix = f"echo_{path}_throughput_"
    for k, v in m.items():
        if k.startswith(prefix):
            out["echo_throughput_" + k[len(prefix) :]] = v
        elif k.startswith("echo_call_for_bids_throughput_"):
            out["cfb_echo_throughput_" + k[len("echo_call_for_bids_throughput_") :]] = v
    return out


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rounds), 3)


def main(args: argparse.Namespace) -> dict[str, Any]:
    missing = [
        what
        for what, ok in (
            ("the celery[redis] package", importlib.util.find_spec("celery") is not None),
            ("the redis package", importlib.util.find_spec("redis") is not None),
            ("a redis-server binary", shutil.which("redis-server") is not None),
        )
        if not ok
    ]
    if missing:
        print(f"error: bench_peers needs {', '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)
    import celery

    celery_rounds, crank_rounds = [], []
    with tempfile.TemporaryDirectory(prefix="crankmesh-celery-") as tmp:
        (Path(tmp) / "peers_tasks.py").write_text(_TASKS)
        port = _free_port()
        for _ in range(args.rounds):
            celery_rounds.append(_celery_round(args, Path(tmp), port))
            crank_rounds.append(bench.run_loop(_crankmesh_round, args))
    keys = ["echo_p50_ms", "echo_p99_ms"]
    keys += [f"echo_throughput_c{c}_jobs_s" for c in args.concurrency]
    summary: dict[str, Any] = {
        "celery": {k: _median(celery_rounds, k) for k in keys},
        "crankmesh": {k: _median(crank_rounds, k) for k in keys},
    }
    for who, rounds in (("celery", celery_rounds), ("crankmesh", crank_rounds)):
        summary[who]["echo_cpu_ms_per_job_total"] = round(
            statistics.median(r["echo_cpu_ms_per_job"]["total"] for r in rounds), 3
        )
    crank, cel = summary["crankmesh"], summary["celery"]
    ratios = {
        "ratio_p50": round(crank["echo_p50_ms"] / cel["echo_p50_ms"], 3),
        "ratio_p99": round(crank["echo_p99_ms"] / cel["echo_p99_ms"], 3),
    }
    for c in args.concurrency:
        k = f"echo_throughput_c{c}_jobs_s"
        ratios[f"ratio_throughput_c{c}"] = round(crank[k] / cel[k], 3)
    return {
        "workload": "echo, one small payload per job",
        "celery_version": celery.__version__,
        "celery_layout": "redis-server + 1 celery worker, prefork, concurrency 3",
        "crankmesh_layout": "nats-server + 3 `crankmesh node` processes + a client process",
        "crankmesh_cfb_p50_ms_median": _median(crank_rounds, "cfb_echo_p50_ms"),
        "crankmesh_path": crank_rounds[0]["path"],
        "jobs": args.jobs,
        "rounds": args.rounds,
        "event_loop": bench.event_loop_name(),
        "python_reference_ms": bench._reference_ms(),
        **summary,
        **ratios,
        "per_round": {"celery": celery_rounds, "crankmesh": crank_rounds},
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=bench._concurrencies, default=[16, 64])
    logging.basicConfig(level=logging.ERROR)
    json.dump(main(p.parse_args()), sys.stdout)
    print()
