"""``crankmesh demo``: an embedded nats-server, N nodes, jobs through the full flow."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio

from ..executor.agent import ExecutorConfig
from ..node import Node, NodeConfig
from ..originator import Client, Job
from ..protocol.errors import CrankmeshError

__all__ = ["run_demo"]

log = logging.getLogger("crankmesh.demo")

_PY_JOBS = (
    ("print(sum(range(args['n'])))", {"n": 1000}),
    ("import hashlib\nprint(hashlib.sha256(args['s'].encode()).hexdigest()[:16])", {"s": "crank"}),
    ("result = {'squares': [i * i for i in range(args['n'])]}", {"n": 5}),
)


def _node_prices(i: int) -> dict[str, int]:
    # Different prices per node and per capability, so different nodes win.
    return {"echo": 1000 + 500 * ((i + 1) % 3), "python.run": 4000 + 1000 * ((i + 2) % 3)}


async def _demo(nodes: int, jobs: int, as_json: bool, python: bool) -> int:
    from ..testing import NatsServer

    capabilities = ("echo", "python.run") if python else ("echo",)
    results: list[dict[str, Any]] = []
    ok = 0
    async with NatsServer() as server, AsyncExitStack() as stack:
        started = []
        for i in range(nodes):
            cfg = NodeConfig(
                name=f"node-{i}",
                capabilities=capabilities,
                executor=ExecutorConfig(prices=_node_prices(i), max_concurrency=2),
            )
            started.append(await stack.enter_async_context(Node(nats=server.url, config=cfg)))
        names = {n.did: n.config.name for n in started}
        if not as_json:
            print(f"nats-server {server.url} (embedded); {nodes} nodes:")
            for n in started:
                prices = ", ".join(
                    f"{k}={v}µUSD"
                    for k, v in _node_prices(started.index(n)).items()
                    if k in capabilities
                )
                iso = n.sandbox.isolation.level.token if n.sandbox is not None else "n/a"
                print(f"  {n.config.name}  {n.did}  {prices}  sandbox={iso}")
        async with Client(nats=server.url) as client:
            for cap in capabilities:
                await client.wait_for_peers(cap, nodes, wait_s=10)
            for j in range(jobs):
                if python and j % 2 == 1:
                    code, args = _PY_JOBS[(j // 2) % len(_PY_JOBS)]
                    job = Job.python(code, args, timeout_sec=10)
                else:
                    job = Job.echo(f"hello #{j}".encode())
                t0 = time.perf_counter()
                try:
                    r = await client.run(job)
                except CrankmeshError as exc:
                    row: dict[str, Any] = {
                        "job": j,
                        "capability": job.capability,
                        "error": str(exc),
                        "receipt_verified": False,
                    }
                    results.append(row)
                    print(json.dumps(row) if as_json else f"job {j}: FAILED: {exc}")
                    continue
                out = (
                    r.stdout.strip()
                    if job.capability == "python.run"
                    else ((r.output or b"").decode())
                )
                if job.capability == "python.run" and r.return_value is not None:
                    out = json.dumps(r.return_value)
                verified = r.verified and r.ok
                ok += verified
                row = {
                    "job": j,
                    "capability": job.capability,
                    "job_cid": r.job_cid,
                    "winner": r.executor,
                    "winner_name": names.get(r.executor),
                    "price": r.price,
                    "currency": r.currency,
                    "status": r.status,
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
                    "receipt_cid": r.receipt_cid,
                    "receipt_verified": verified,
                    "output": out[:80],
                }
                results.append(row)
                if as_json:
                    print(json.dumps(row), flush=True)
                else:
                    print(
                        f"job {j:3d} {job.capability:10s} {r.job_cid[:20]}… won by "
                        f"{names.get(r.executor)} ({r.executor[8:20]}…) price {r.price} "
                        f"µ{r.currency} {row['latency_ms']:7.2f} ms receipt "
                        f"{'verified' if verified else 'NOT verified'}  -> {out[:40]!r}",
                        flush=True,
                    )
    lat = sorted(r["latency_ms"] for r in results if "latency_ms" in r)
    summary = {
        "summary": True,
        "jobs": jobs,
        "verified": ok,
        "nodes": nodes,
        "p50_ms": lat[len(lat) // 2] if lat else None,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
    }
    if as_json:
        print(json.dumps(summary))
    else:
        print(
            f"{ok}/{jobs} jobs ended with a verified receipt; "
            f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms"
        )
    return 0 if ok == jobs else 1


def run_demo(*, nodes: int = 3, jobs: int = 20, as_json: bool = False, python: bool = True) -> int:
    if nodes < 1 or jobs < 0:
        print("error: --nodes must be ≥ 1 and --jobs ≥ 0", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return anyio.run(_demo, nodes, jobs, as_json, python)
