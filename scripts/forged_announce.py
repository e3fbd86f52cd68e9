#!/usr/bin/env python
"""Forged announcements cost nothing (issue 14 acceptance): one JSON object on stdout.

Starts an embedded nats-server and two real nodes offering ``echo`` and ``reverse``,
runs ``--jobs`` real ``echo`` jobs one after another (the baseline), then the same
number again while an attacker publishes forged announces at ``--rate`` per second per
capability: random signatures, each naming a fresh random DID, or (with a trust list)
alternately the trusted client's own DID.  Both modes run: without a trust list and
with one (the nodes trust only the client).

For each mode it prints the p50/p95 job latency with and without the attack and their
ratio, how many real jobs completed, how many forged announces were sent, how many the
nodes dropped as ``bad_signature``, and how many got any answer (bid or no-bid) --
which must be 0: a forged announce reserves nothing and is never answered.

    python scripts/forged_announce.py [--jobs 20] [--rate 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio

from crankmesh._loop import run as run_loop
from crankmesh.executor.agent import ExecutorConfig
from crankmesh.node import Node, NodeConfig
from crankmesh.originator import Client, Job
from crankmesh.protocol import subjects
from crankmesh.protocol.cid import cid_for_blob
from crankmesh.protocol.encoding import encode_canonicalized
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import Announce, JobSpec, job_cid_of_canonical
from crankmesh.testing import NatsServer

FED = "default"
CAPABILITIES = ("echo", "reverse")


def forged_announce(capability: str, did: str) -> tuple[str, bytes]:
    """An Announce naming ``did`` as signer and originator, with a random signature:
    (job CID, envelope bytes)."""
    now = time.time_ns() // 1_000_000
    job = JobSpec.build(
        capability=capability,
        originator=did,
        created=now,
        nonce=os.urandom(16),
        payload=cid_for_blob(os.urandom(8)),
        payload_size=8,
        deadline=now + 60_000,
    )
    body = Announce.build(signer=did, ts=now, exp=now + 30_000, job=job).to_wire()
    raw = encode_canonicalized(
        {"b": encode_canonicalized(body), "s": os.urandom(64), "t": "announce", "v": 1}
    )
    return job_cid_of_canonical(body["job"]), raw


async def _reverse(payload: bytes) -> bytes:
    return payload[::-1]


def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))], 3)


async def _jobs(client: Client, n: int, tag: str) -> tuple[list[float], int]:
    times: list[float] = []
    ok = 0
    for i in range(n):
        t = time.perf_counter()
        try:
            r = await client.run(Job.echo(f"{tag} {i}".encode()))
            ok += r.ok and r.output == f"{tag} {i}".encode()
        except Exception as exc:  # counted as not completed, and said
            print(f"job {tag} {i} failed: {exc}", file=sys.stderr)
        times.append((time.perf_counter() - t) * 1000)
    return times, ok


def _rejected(node: Node, reason: str) -> int:
    return int(node.metrics.rejection_count("announce", reason))


async def measure(url: str, *, jobs: int = 20, rate: float = 10.0, trust: bool) -> dict[str, Any]:
    """One mode: baseline jobs, then jobs under the forged-announce flood."""
    me = Identity.generate()
    configs = [
        NodeConfig(
            capabilities=CAPABILITIES,
            executor=ExecutorConfig(default_price=1000 * (i + 1)),
            trusted=frozenset({me.did}) if trust else None,
            calibration_runs=0,
            detect_gpu=False,
            probe_interval_s=0,
            name=f"node-{i}",
        )
        for i in range(2)
    ]
    forged_cids: set[str] = set()
    answers = 0
    sent = 0
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                Node(nats=url, config=cfg, services={"reverse": _reverse})
            )
            for cfg in configs
        ]
        client = await stack.enter_async_context(Client(nats=url, identity=me))
        await client.wait_for_peers("echo", 2, wait_s=10, settle_s=0.2)
        attacker = await stack.enter_async_context(_Connection(url))

        async def watch(msg: Any) -> None:
            nonlocal answers
            if subjects.parse_subject(msg.subject).job_cid in forged_cids:
                answers += 1

        await attacker.nc.subscribe(f"{subjects.ROOT}.{FED}.jobs.*.bids", cb=watch)
        await attacker.nc.flush()
        await _jobs(client, 3, "warm-up")
        base, base_ok = await _jobs(client, jobs, "baseline")
        dropped_before = [_rejected(n, "bad_signature") for n in nodes]

        async def flood(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            nonlocal sent
            task_status.started()
            i = 0
            while True:
                for cap in CAPABILITIES:
                    did = me.did if trust and i % 2 else Identity.generate().did
                    cid, raw = forged_announce(cap, did)
                    forged_cids.add(cid)
                    await attacker.nc.publish(subjects.announce(FED, cap), raw)
                    sent += 1
                i += 1
                await anyio.sleep(1 / rate)

        async with anyio.create_task_group() as tg:
            await tg.start(flood)
            await anyio.sleep(2.0)  # long enough to fill every slot, if forgeries reserved
            attacked, attacked_ok = await _jobs(client, jobs, "attacked")
            tg.cancel_scope.cancel()
        await attacker.nc.flush()
        await anyio.sleep(0.3)  # answers in flight, if any, arrive
        dropped = [
            _rejected(n, "bad_signature") - b for n, b in zip(nodes, dropped_before, strict=True)
        ]
        p50_base, p50_attack = statistics.median(base), statistics.median(attacked)
        return {
            "trust_list": trust,
            "jobs": jobs,
            "rate_per_capability": rate,
            "capabilities": list(CAPABILITIES),
            "completed_baseline": base_ok,
            "completed_under_attack": attacked_ok,
            "p50_ms_baseline": round(p50_base, 3),
            "p50_ms_under_attack": round(p50_attack, 3),
            "p95_ms_baseline": _q(base, 0.95),
            "p95_ms_under_attack": _q(attacked, 0.95),
            "p50_ratio": round(p50_attack / p50_base, 3) if p50_base else None,
            "forged_sent": sent,
            "forged_dropped_bad_signature_per_node": dropped,
            "forged_answered": answers,
            "untrusted_rejections_per_node": [_rejected(n, "untrusted") for n in nodes],
            "peak_outstanding_per_node": [
                n.executor.peak_outstanding if n.executor else None for n in nodes
            ],
        }


class _Connection:
    def __init__(self, url: str) -> None:
        self.url = url
        self.nc: Any = None

    async def __aenter__(self) -> _Connection:
        import nats

        self.nc = await nats.connect(self.url, allow_reconnect=False, name="forger")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with NatsServer() as server:
        runs = [
            await measure(server.url, jobs=args.jobs, rate=args.rate, trust=trust)
            for trust in (False, True)
        ]
    return {
        "script": "scripts/forged_announce.py",
        "runs": runs,
        "ok": all(
            r["completed_under_attack"] == r["jobs"]
            and r["forged_answered"] == 0
            and r["p50_ratio"] is not None
            and r["p50_ratio"] <= 2.0
            for r in runs
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="real jobs per phase (20)")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="forged announces per second per capability"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    out = run_loop(main_async, args)
    print(json.dumps(out, indent=2))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
