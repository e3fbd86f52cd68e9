"""Operator caps on what one job (and all running jobs together) may use.

The originator *asks* for resources in a job's public ``constraints`` (``timeout_ms``,
``memory_mb``, ``max_output_bytes``); the executor's operator *caps* them. This module is
pure (no I/O, no clock): :meth:`ExecutorCaps.check` says whether a job's constraints fit
the per-job caps, :meth:`ExecutorCaps.effective` turns them into the :class:`JobLimits`
the job runs under, and :class:`CapsLedger` keeps the totals across jobs admitted at once.

Rules (documented for operators in ``docs/operating.md``, "Executor caps"):

- a job asking **more** than a cap is declined (no bid, reason ``over_caps``; an
  Assignment for it is rejected with reason ``over_caps``) -- never run with what it asked,
  never silently clipped;
- a job asking **nothing** gets the caps' defaults: ``memory_mb`` absent means
  ``default_memory_mb``;
- what a job cannot ask for is set by the operator alone: CPU time is
  ``min(ceil(timeout) + 1, max_cpu_s)`` seconds and the disk quota is ``max_disk_mb``;
- totals: the memory (and disk) of all jobs admitted and not finished may not exceed
  ``max_total_memory_mb`` (``max_total_disk_mb``); ``0`` means "no total cap beyond
  ``max_concurrency`` × the per-job cap".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from ..protocol.messages import Constraints

__all__ = ["OVER_CAPS", "CapsLedger", "CapsViolation", "ExecutorCaps", "JobLimits"]

#: The decline / Reject reason token for a job over the executor's caps.
OVER_CAPS = "over_caps"

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CapsViolation:
    """Which cap a job exceeds: ``cap`` (setting name), ``asked`` and ``allowed``."""

    cap: str
    asked: int
    allowed: int
    unit: str = ""

    reason: str = OVER_CAPS

    @property
    def detail(self) -> str:
        """One line for logs, no-bids and Rejects, e.g.
        ``"timeout 3600000 ms asked > cap max_job_timeout_s 600000 ms"``."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{_ASKED[self.cap]} {self.asked}{unit} asked > cap {self.cap} {self.allowed}{unit}"

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


#: What the job asked for, per cap name (for :attr:`CapsViolation.detail`).
_ASKED = {
    "max_job_timeout_s": "timeout",
    "max_job_memory_mb": "memory",
    "max_job_output_bytes": "max_output_bytes",
    "max_total_memory_mb": "memory of admitted jobs + this job",
    "max_total_disk_mb": "disk of admitted jobs + this job",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class JobLimits:
    """The limits one job actually runs under (what the sandbox enforces)."""

    timeout_ms: int
    memory_mb: int
    cpu_seconds: int
    max_output_bytes: int
    disk_mb: int

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000

    @property
    def disk_bytes(self) -> int:
        return self.disk_mb * _MIB


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutorCaps:
    """Per-job and total caps an operator sets (node settings ``max_job_*`` / ``max_total_*``).

    All values are positive integers except the totals, where ``0`` means no total cap.
    Construction validates every value (:class:`ValueError` names the field).
    """

    max_timeout_ms: int = 600_000
    max_memory_mb: int = 4096
    default_memory_mb: int = 1024
    max_cpu_s: int = 600
    max_output_bytes: int = 8 * _MIB
    max_disk_mb: int = 64
    max_total_memory_mb: int = 0
    max_total_disk_mb: int = 0

    def __post_init__(self) -> None:
        for name in ("max_timeout_ms", "max_memory_mb", "default_memory_mb", "max_cpu_s"):
            _check_int(name, getattr(self, name), 1)
        for name in ("max_output_bytes", "max_disk_mb", "max_total_memory_mb", "max_total_disk_mb"):
            _check_int(name, getattr(self, name), 0)
        if self.default_memory_mb > self.max_memory_mb:
            raise ValueError(
                f"default_memory_mb ({self.default_memory_mb}) must not exceed "
                f"max_memory_mb ({self.max_memory_mb})"
            )

    def check(self, constraints: Constraints) -> CapsViolation | None:
        """The first per-job cap ``constraints`` exceed, or ``None`` when the job fits."""
        if constraints.timeout_ms > self.max_timeout_ms:
            return CapsViolation(
                "max_job_timeout_s", constraints.timeout_ms, self.max_timeout_ms, "ms"
            )
        if constraints.memory_mb is not None and constraints.memory_mb > self.max_memory_mb:
            return CapsViolation(
                "max_job_memory_mb", constraints.memory_mb, self.max_memory_mb, "MB"
            )
        if constraints.max_output_bytes > self.max_output_bytes:
            return CapsViolation(
                "max_job_output_bytes", constraints.max_output_bytes, self.max_output_bytes, "bytes"
            )
        return None

    def effective(self, constraints: Constraints) -> JobLimits:
        """The limits a job within the caps runs under (call :meth:`check` first).

        Values the job asked for are kept (they are within the caps); what it left out
        gets the default; CPU time and disk are the operator's.
        """
        timeout_ms = min(constraints.timeout_ms, self.max_timeout_ms)
        memory = constraints.memory_mb if constraints.memory_mb is not None else None
        return JobLimits(
            timeout_ms=timeout_ms,
            memory_mb=min(memory or self.default_memory_mb, self.max_memory_mb),
            cpu_seconds=min(math.ceil(timeout_ms / 1000) + 1, self.max_cpu_s),
            max_output_bytes=min(constraints.max_output_bytes, self.max_output_bytes),
            disk_mb=self.max_disk_mb,
        )

    def check_total(self, ledger: CapsLedger, limits: JobLimits) -> CapsViolation | None:
        """Whether one more job with ``limits`` fits the totals next to ``ledger``'s jobs."""
        if self.max_total_memory_mb and (
            ledger.memory_mb + limits.memory_mb > self.max_total_memory_mb
        ):
            return CapsViolation(
                "max_total_memory_mb",
                ledger.memory_mb + limits.memory_mb,
                self.max_total_memory_mb,
                "MB",
            )
        if self.max_total_disk_mb and ledger.disk_mb + limits.disk_mb > self.max_total_disk_mb:
            return CapsViolation(
                "max_total_disk_mb", ledger.disk_mb + limits.disk_mb, self.max_total_disk_mb, "MB"
            )
        return None


class CapsLedger:
    """The limits of the jobs admitted and not yet finished, keyed by job CID."""

    __slots__ = ("_jobs", "disk_mb", "memory_mb")

    def __init__(self) -> None:
        self._jobs: dict[str, JobLimits] = {}
        self.memory_mb = 0
        self.disk_mb = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def admit(self, job_cid: str, limits: JobLimits) -> None:
        """Count ``limits`` against the totals (admitting a job twice counts it once)."""
        self.release(job_cid)
        self._jobs[job_cid] = limits
        self.memory_mb += limits.memory_mb
        self.disk_mb += limits.disk_mb

    def release(self, job_cid: str) -> None:
        """The job ended (or was never run): its limits no longer count. Idempotent."""
        limits = self._jobs.pop(job_cid, None)
        if limits is not None:
            self.memory_mb -= limits.memory_mb
            self.disk_mb -= limits.disk_mb


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
