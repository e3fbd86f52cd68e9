"""Executor caps: the pure per-job check, effective limits, and totals across jobs."""

from __future__ import annotations

import pytest

from crankmesh.executor.caps import OVER_CAPS, CapsLedger, ExecutorCaps
from crankmesh.protocol.messages import Constraints

CAPS = ExecutorCaps(
    max_timeout_ms=60_000,
    max_memory_mb=2048,
    default_memory_mb=512,
    max_cpu_s=30,
    max_output_bytes=1 << 20,
    max_disk_mb=100,
    max_total_memory_mb=3000,
    max_total_disk_mb=250,
)


def test_a_job_within_every_cap_passes() -> None:
    assert (
        CAPS.check(Constraints(timeout_ms=60_000, memory_mb=2048, max_output_bytes=1 << 20)) is None
    )
    assert CAPS.check(Constraints()) is None


@pytest.mark.parametrize(
    ("constraints", "cap", "asked", "allowed"),
    [
        (Constraints(timeout_ms=60_001), "max_job_timeout_s", 60_001, 60_000),
        (Constraints(timeout_ms=86_400_000), "max_job_timeout_s", 86_400_000, 60_000),
        (Constraints(memory_mb=2049), "max_job_memory_mb", 2049, 2048),
        (Constraints(memory_mb=1 << 24), "max_job_memory_mb", 1 << 24, 2048),
        (
            Constraints(max_output_bytes=(1 << 20) + 1),
            "max_job_output_bytes",
            (1 << 20) + 1,
            1 << 20,
        ),
    ],
)
def test_a_job_asking_more_than_a_cap_is_over_caps_naming_it(
    constraints: Constraints, cap: str, asked: int, allowed: int
) -> None:
    over = CAPS.check(constraints)
    assert over is not None
    assert (over.reason, over.cap, over.asked, over.allowed) == (OVER_CAPS, cap, asked, allowed)
    assert cap in over.detail and str(asked) in over.detail and str(allowed) in over.detail
    assert str(over).startswith("over_caps: ")


def test_a_job_asking_nothing_gets_the_defaults_not_unbounded_limits() -> None:
    eff = CAPS.effective(Constraints())
    assert eff.memory_mb == 512  # default_memory_mb, not "whatever the process can map"
    assert eff.timeout_ms == 10_000  # Constraints' default timeout
    assert eff.cpu_seconds == 11  # ceil(10 s) + 1, under max_cpu_s
    assert eff.disk_mb == 100 and eff.disk_bytes == 100 * 1024 * 1024
    assert eff.max_output_bytes == 1 << 20


def test_effective_limits_keep_what_the_job_asked_within_the_caps() -> None:
    eff = CAPS.effective(Constraints(timeout_ms=2_500, memory_mb=300, max_output_bytes=1000))
    assert (eff.timeout_ms, eff.memory_mb, eff.max_output_bytes) == (2_500, 300, 1000)
    assert eff.cpu_seconds == 4 and eff.timeout_s == 2.5


def test_cpu_time_is_capped_by_the_operator_whatever_the_timeout() -> None:
    # A 1-minute timeout would give 61 CPU seconds; the operator allows 30.
    assert CAPS.effective(Constraints(timeout_ms=60_000)).cpu_seconds == 30
    # Default caps: a 24 h job (over the timeout cap anyway) never gets 86,401 CPU seconds.
    assert ExecutorCaps().effective(Constraints(timeout_ms=86_400_000)).cpu_seconds == 600
    assert ExecutorCaps().check(Constraints(timeout_ms=86_400_000)) is not None


def test_default_caps_decline_the_red_team_job() -> None:
    over = ExecutorCaps().check(Constraints(timeout_ms=86_400_000, memory_mb=1 << 24))
    assert over is not None and over.cap == "max_job_timeout_s"
    over = ExecutorCaps().check(Constraints(memory_mb=1 << 24))
    assert over is not None and over.cap == "max_job_memory_mb"


def test_totals_count_every_admitted_job_until_it_is_released() -> None:
    ledger = CapsLedger()
    big = CAPS.effective(Constraints(memory_mb=2000))
    small = CAPS.effective(Constraints(memory_mb=900))
    assert CAPS.check_total(ledger, big) is None
    ledger.admit("a", big)
    assert CAPS.check_total(ledger, small) is None  # 2900 <= 3000
    ledger.admit("b", small)
    over = CAPS.check_total(ledger, CAPS.effective(Constraints(memory_mb=200)))
    assert over is not None and over.cap == "max_total_memory_mb"
    assert (over.asked, over.allowed) == (3100, 3000)
    ledger.admit("a", big)  # admitting twice counts once
    assert (ledger.memory_mb, len(ledger)) == (2900, 2)
    ledger.release("a")
    ledger.release("a")  # idempotent
    assert (ledger.memory_mb, ledger.disk_mb, sorted(ledger)) == (900, 100, ["b"])
    assert CAPS.check_total(ledger, big) is None


def test_total_disk_cap() -> None:
    ledger = CapsLedger()
    job = CAPS.effective(Constraints(memory_mb=1))
    ledger.admit("a", job)
    ledger.admit("b", job)
    over = CAPS.check_total(ledger, job)
    assert over is not None and over.cap == "max_total_disk_mb" and over.asked == 300


def test_zero_totals_mean_no_total_cap() -> None:
    caps = ExecutorCaps()
    ledger = CapsLedger()
    for i in range(100):
        ledger.admit(str(i), caps.effective(Constraints(memory_mb=4096)))
    assert caps.check_total(ledger, caps.effective(Constraints())) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_timeout_ms": 0},
        {"max_memory_mb": 0},
        {"max_cpu_s": 0},
        {"max_output_bytes": -1},
        {"max_disk_mb": -1},
        {"max_total_memory_mb": -5},
        {"max_timeout_ms": True},
        {"max_memory_mb": 1.5},
        {"default_memory_mb": 5000},
    ],
)
def test_invalid_caps_are_value_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs)).split("_", 1)[1]):
        ExecutorCaps(**kwargs)  # type: ignore[arg-type]
