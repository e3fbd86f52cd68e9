#!/usr/bin/env python
"""Zero-config start-up: how long ``SyncClient().run(Job.python("print(42)"))`` takes
in a fresh interpreter with no server running.  One JSON object on stdout.

    python scripts/bench_zero_config.py [--runs 3]

Each run is a new subprocess (CRANKMESH_NATS unset, a temporary CRANKMESH_HOME) that
times: importing crankmesh, opening the client (embedded nats-server + one local node +
its advert), the first job, and closing; plus the whole process wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, time
t0 = time.perf_counter()
from crankmesh import Job, SyncClient
t1 = time.perf_counter()
c = SyncClient(); c.__enter__()
t2 = time.perf_counter()
r = c.run(Job.python("print(42)"))
t3 = time.perf_counter()
c.close()
t4 = time.perf_counter()
assert r.stdout.strip() == "42", r.stdout
print(json.dumps({"import_s": t1 - t0, "start_s": t2 - t1, "first_job_s": t3 - t2,
                  "close_s": t4 - t3}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    samples: list[dict[str, float]] = []
    for _ in range(max(1, args.runs)):
        with tempfile.TemporaryDirectory() as home:
            env = {k: v for k, v in os.environ.items() if k != "CRANKMESH_NATS"}
            env["CRANKMESH_HOME"] = home
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                timeout=120,
            )
            wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(json.dumps({"error": proc.stderr.strip().splitlines()[-1:]}))
            return 1
        sample = json.loads(proc.stdout.strip().splitlines()[-1])
        sample["process_wall_s"] = wall
        samples.append(sample)
    out = {
        "runs": len(samples),
        "python": sys.version.split()[0],
        "median": {k: round(statistics.median(s[k] for s in samples), 3) for k in samples[0]},
        "max": {k: round(max(s[k] for s in samples), 3) for k in samples[0]},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
