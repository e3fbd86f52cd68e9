"""scripts/promise_under_load.py runs real jobs on a real mesh and uses its options."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "promise_under_load.py"


def test_the_script_reports_each_load_from_the_audit(capsys) -> None:
    spec = importlib.util.spec_from_file_location("promise_under_load", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["promise_under_load"] = mod
    spec.loader.exec_module(mod)
    argv = ["--jobs", "6", "--warmup", "4", "--service-ms", "5", "--concurrency", "1"]
    mod.main([*argv, "--loads", "0,0.5"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    phases, verdict = lines[:-1], lines[-1]
    assert [p["load"] for p in phases] == [0.0, 0.5]
    assert all(p["jobs"] == 6 and p["failed"] == 0 and p["audit_ok"] for p in phases)
    assert all(p["capacity_jobs_per_s"] == 200.0 for p in phases)  # 1 slot / 5 ms
    assert phases[0]["receipts_in_stream"] == 4 + 6 + 6  # warm-up included
    assert 5_000 <= phases[0]["promised_p95_us"] < 20_000  # the 5 ms service, not 20
    assert "ok" in verdict
