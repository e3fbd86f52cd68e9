"""scripts/soak.py runs paced and time-bounded, and reports RSS per node per sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def test_a_short_soak_is_paced_bounded_and_samples_every_node() -> None:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--minutes", "0.15", "--rate", "5", "--nodes", "2",
         "--sample-s", "3", "--payload-bytes", "100"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["minutes"] == 0.15 and out["rate_per_s"] == 5 and out["payload_bytes"] == 100
    assert 40 <= out["submitted"] <= 46  # 9 s at 5 jobs/s, paced
    assert out["completed"] == out["submitted"] and not out["failed"]
    assert [n["node"] for n in out["nodes"]] == ["node-0", "node-1"]
    assert sum(n["jobs"] for n in out["nodes"]) == out["completed"]
    for n in out["nodes"]:
        assert len(n["rss_mib"]) >= 4 and all(v > 10 for v in n["rss_mib"])  # 0, 3, 6, 9 s
        assert n["growth_last_two_thirds_pct"] is not None
    assert isinstance(out["growth_under_5_pct"], bool)


def test_python_jobs_and_the_in_flight_cap_skip_slots_instead_of_falling_behind() -> None:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--minutes", "0.05", "--rate", "1000", "--nodes", "1",
         "--capability", "python.run", "--max-in-flight", "1", "--sample-s", "1"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["capability"] == "python.run" and out["payload_bytes"] is None
    assert out["completed"] == out["submitted"] >= 1 and not out["failed"]
    # One job at a time cannot keep up with 1,000/s: the other slots are skipped.
    assert out["skipped"] > out["submitted"]
    assert 2_500 <= out["submitted"] + out["skipped"] <= 3_001
    assert [n["node"] for n in out["nodes"]] == ["node-0"]
