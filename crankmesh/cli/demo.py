"""``crankmesh demo``: a nats-server, N nodes, jobs through the full signed flow, then an
audit of everything the mesh persisted."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio

from .._loop import run as run_loop
from ..executor.agent import ExecutorConfig
from ..node import Node, NodeConfig
from ..originator import Client, Job, JobResult
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


def _job(j: int, python: bool) -> Job:
    if python and j % 2 == 1:
        code, args = _PY_JOBS[(j // 2) % len(_PY_JOBS)]
        return Job.python(code, args, timeout_sec=10)
    return Job.echo(f"hello #{j}".encode())


def _output(job: Job, r: JobResult) -> str:
    if job.capability != "python.run":
        return (r.output or b"").decode("utf-8", "replace")
    if r.return_value is not None:
        return json.dumps(r.return_value)
    return r.stdout.strip()


async def _audit_summary(url: str) -> dict[str, Any]:
    """Audit what the demo persisted: every receipt, bid and settlement in the stream."""
    from ..receipts.audit import audit
    from ..receipts.export import read_stream
    from ..receipts.store import stream_name
    from ..transport import NatsOptions, connect

    nc = await connect(NatsOptions.from_url(url))
    try:
        records = await read_stream(nc, stream_name("default"))
    finally:
        await nc.close()
    report = audit(records, now_ms=time.time_ns() // 1_000_000)
    receipts = sum(e.jobs for e in report.executors.values())
    return {
        "ok": report.ok,
        "records": len(records),
        "receipts": receipts,
        "findings": len(report.findings),
        "render": report.render(),
    }


async def _demo(nodes: int, jobs: int, as_json: bool, python: bool, nats: str | None) -> int:
    from ..testing import NatsServer

    capabilities = ("echo", "python.run") if python else ("echo",)
    results: list[dict[str, Any]] = []
    ok = 0
    audit_info: dict[str, Any] | None = None
    async with AsyncExitStack() as stack:
        if nats:
            url, where = nats, "external"
        else:
            url, where = (await stack.enter_async_context(NatsServer())).url, "embedded"
        started: list[Node] = []
        for i in range(nodes):
            cfg = NodeConfig(
                name=f"node-{i}",
                capabilities=capabilities,
                executor=ExecutorConfig(prices=_node_prices(i), max_concurrency=2),
            )
            started.append(await stack.enter_async_context(Node(nats=url, config=cfg)))
        names = {n.did: n.config.name for n in started}
        if not as_json:
            print(f"nats-server {url} ({where}); {nodes} nodes:")
            for i, n in enumerate(started):
                prices = ", ".join(
                    f"{k}={v}µUSD" for k, v in _node_prices(i).items() if k in capabilities
                )
                iso = n.sandbox.isolation.level.token if n.sandbox is not None else "n/a"
                print(f"  {n.config.name}  {n.did}  {prices}  sandbox={iso}")
        async with Client(nats=url) as client:
            for cap in capabilities:
                await client.wait_for_peers(cap, nodes, wait_s=10)
            for j in range(jobs):
                job = _job(j, python)
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
                out = _output(job, r)
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
            await anyio.sleep(0.2)  # settlements are signed just after each result
        # Everything the mesh persisted (bids, receipts, settlements) is audited (RFC 0002).
        for node in started:
            if node.record_store is not None:
                await node.record_store.flush(5.0)
        try:
            audit_info = await _audit_summary(url)
        except Exception as exc:  # the verdict is the receipts; the audit is extra
            log.warning("could not audit the stream: %s", exc)
    lat = sorted(r["latency_ms"] for r in results if "latency_ms" in r)
    summary: dict[str, Any] = {
        "summary": True,
        "jobs": jobs,
        "verified": ok,
        "nodes": nodes,
        "p50_ms": lat[len(lat) // 2] if lat else None,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
    }
    if audit_info is not None:
        summary.update(
            audit_ok=audit_info["ok"],
            audit_receipts=audit_info["receipts"],
            audit_findings=audit_info["findings"],
        )
    if as_json:
        print(json.dumps(summary))
    else:
        print(
            f"{ok}/{jobs} jobs ended with a verified receipt; "
            f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms"
        )
        if audit_info is not None:
            print()
            print(audit_info["render"])
    return 0 if ok == jobs else 1


def run_demo(
    *,
    nodes: int = 3,
    jobs: int = 20,
    as_json: bool = False,
    python: bool = True,
    nats: str | None = None,
) -> int:
    if nodes < 1 or jobs < 0:
        print("error: --nodes must be ≥ 1 and --jobs ≥ 0", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_loop(_demo, nodes, jobs, as_json, python, nats)
