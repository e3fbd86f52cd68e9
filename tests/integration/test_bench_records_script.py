"""scripts/bench_records.py measures the record path on a real nats-server and uses its
options (a linger of 0 sends every job's records at once; a long one batches them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_records.py"


def _run(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--jobs", "30", "--gap-ms", "2", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_script_batches_with_a_linger_and_not_without() -> None:
    batched = _run("--linger-ms", "500")
    unbatched = _run("--linger-ms", "0", "--no-journal")
    assert batched["stored"] == unbatched["stored"] == 60  # two records per job, all acked
    assert batched["batches"] == 1  # 60 records within one 500 ms linger
    assert isinstance(unbatched["batches"], int) and unbatched["batches"] > 10
    assert (batched["journal"], unbatched["journal"]) == (True, False)
    assert set(batched["cpu_ms_per_job"]) == {"store_process", "nats_server", "total"}  # type: ignore[arg-type]
