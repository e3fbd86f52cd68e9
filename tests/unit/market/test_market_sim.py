"""scripts/market_sim.py: the simulator runs the real market code and its options are used."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "market_sim.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("market_sim", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["market_sim"] = mod
    spec.loader.exec_module(mod)
    return mod


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict]]:
    rc = _load().main(list(argv))
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    return rc, lines


def test_one_object_per_policy_with_the_oracle_and_the_dishonest(capsys) -> None:
    rc, lines = _run(capsys, "--jobs", "400", "--loads", "0.5", "--policies", "latency,cost")
    assert rc == 0
    assert [(x["load"], x["policy"], x["jobs"]) for x in lines] == [
        (0.5, "latency", 400),
        (0.5, "cost", 400),
    ]
    for x in lines:
        assert {"mean_response_us", "p95_response_us", "cost_per_job_micros", "slo_met"} <= set(
            x["oracle"]
        )
        assert set(x["dishonest"]) == {
            "under_promising",
            "wrong_answers",
            "no_delivery",
            "invalid_delivery",
            "capacity_griefing",
            "overcharge",
        }
        assert x["honest_wrongly_excluded"] == []
    # the latency policy is compared with the latency oracle, cost with the SLO oracle
    assert lines[0]["oracle"] != lines[1]["oracle"]


def test_the_seed_changes_the_run_and_80pct_prints_the_acceptance(capsys) -> None:
    _, a = _run(capsys, "--jobs", "300", "--loads", "0.8", "--policies", "slo", "--seed", "1")
    _, b = _run(capsys, "--jobs", "300", "--loads", "0.8", "--policies", "slo", "--seed", "2")
    assert a[0]["mean_response_us"] != b[0]["mean_response_us"]
    assert "acceptance_at_80pct" in a[-1] and set(a[-1]["acceptance_at_80pct"]) == {"slo"}
