#!/usr/bin/env python
"""CPU per job of the audit-record path alone, one JSON object on stdout.

An executor persists two records per job (the winning bid and the receipt; on the quote
path the quote is one record for many jobs). This runs a real nats-server with JetStream
and a :class:`~crankmesh.receipts.store.RecordStore` in this process, submits the two
records of a job every ``--gap-ms`` (paced like the sequential echo benchmark), and
measures CPU (utime + stime) of this process and of nats-server per job, minus a run of
the same pacing without records. With ``--linger-ms 0`` the store sends each job's
records at once (no batching); the default is the store's own linger.

    python scripts/bench_records.py [--jobs 2000] [--gap-ms 4] [--linger-ms 20] [--no-journal]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from crankmesh._loop import run as run_loop
from crankmesh.receipts.store import RecordStore
from crankmesh.testing import NatsServer
from crankmesh.transport import connect

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _job_records(i: int) -> list[tuple[str, bytes, str]]:
    bid, receipt = b"bid %d " % i + os.urandom(300), b"receipt %d " % i + os.urandom(500)
    return [
        ("crank.bench.bids.x", bid, hashlib.sha256(bid).hexdigest()),
        ("crank.bench.receipts.x", receipt, hashlib.sha256(receipt).hexdigest()),
    ]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    phases: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="crankmesh-bench-records-") as tmp:
        async with NatsServer() as server:
            nc = await connect(server.client_options())
            try:
                store = RecordStore(
                    nc,
                    federation="bench",
                    linger_s=args.linger_ms / 1000,
                    spill_path=None if args.no_journal else Path(tmp) / "records.spill",
                )
                await store.ensure_stream()
                async with anyio.create_task_group() as tg:
                    await tg.start(store.run)
                    for phase in ("pacing", "records"):
                        cpu0, server0 = time.process_time(), _cpu_s(server.pid)
                        for i in range(args.jobs):
                            if phase == "records":
                                await store.submit_many(_job_records(i))
                            await anyio.sleep(args.gap_ms / 1000)
                        with anyio.fail_after(60):
                            await store.wait_flushed()
                        phases[phase] = (time.process_time() - cpu0, _cpu_s(server.pid) - server0)
                    tg.cancel_scope.cancel()
                journaled = (Path(tmp) / "records.spill").exists()  # created by the first job
            finally:
                await nc.close()
    per_job = {
        name: round((phases["records"][k] - phases["pacing"][k]) / args.jobs * 1000, 4)
        for k, name in enumerate(("store_process", "nats_server"))
    }
    return {
        "jobs": args.jobs,
        "records_per_job": 2,
        "gap_ms": args.gap_ms,
        "linger_ms": args.linger_ms,
        "journal": journaled,
        "batches": store.batches,
        "records_per_batch": round(2 * args.jobs / max(1, store.batches), 2),
        "stored": store.stored,
        "cpu_ms_per_job": {**per_job, "total": round(sum(per_job.values()), 4)},
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--gap-ms", type=float, default=4.0, help="time between two jobs")
    p.add_argument("--linger-ms", type=float, default=20.0, help="0: no batching")
    p.add_argument("--no-journal", action="store_true", help="no spill file (memory only)")
    out = run_loop(main, p.parse_args())
    json.dump(out, sys.stdout)
    print()
