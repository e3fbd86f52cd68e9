"""Service time: the part of an observed latency that is the executor's own work.

An originator observes a job's latency end to end: from sending the assignment to holding a
verified receipt.  That includes the executor's service (what its bids promise as p95) and
everything else: two or more network hops and both sides' protocol work (sealing, signing,
verifying, encoding).  For a quick capability the rest is most of it (an echo served in 30 µs
is observed at about 3 ms), so comparing the observation with the promise plus a fixed
allowance either cannot fail (a large allowance) or fails honest quick executors (a small one).

This module estimates the rest **per executor, from measurements** (RFC 0002 §6):

* every finished job gives one *overhead sample*: ``observed_us − metered_us`` (the receipt's
  ``metering.wall_us``; never negative);
* the executor's *overhead estimate* is the nearest-rank p95 (:data:`OVERHEAD_QUANTILE`) of its
  last :data:`OVERHEAD_WINDOW` samples, including the job being judged, so it follows the
  network as it drifts and a single slow hop does not move it;
* the *service time* of a job is ``max(metered_us, observed_us − overhead_us)``: what the
  originator saw minus what it estimates is not service, and never less than what the executor
  itself metered.

An executor whose real service exceeds its promise is caught by either term: its own meter, or
(when it under-reports the meter on one job) the observation against the overhead the other
jobs show.  An executor that under-reports every meter inflates its own overhead estimate; the
end-to-end compliance reported alongside, and canaries with a known answer time, are what show
it.  The originator records the estimate it used in the job's Settlement (``overhead_us``) so an
auditor recomputes the same service time from signed records.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Final

__all__ = [
    "KEEPING_MIN_JOBS",
    "KEEPING_THRESHOLD",
    "KEEPING_WINDOW",
    "OVERHEAD_QUANTILE",
    "OVERHEAD_WINDOW",
    "OverheadEstimator",
    "PromiseKeeping",
    "service_time_us",
]

#: Samples kept per executor.
OVERHEAD_WINDOW: Final = 64
#: Quantile of the samples used as the estimate (nearest rank).
OVERHEAD_QUANTILE: Final = 0.95


def service_time_us(observed_us: int, metered_us: int, overhead_us: int | None) -> int:
    """The service time of one job: ``max(metered, observed − overhead)``.

    Without an overhead estimate (a settlement from an older originator) the executor's own
    meter is all there is.
    """
    if overhead_us is None:
        return max(0, metered_us)
    return max(0, metered_us, observed_us - overhead_us)


class _Window:
    __slots__ = ("_fifo", "_sorted")

    def __init__(self, size: int) -> None:
        self._fifo: deque[int] = deque(maxlen=size)
        self._sorted: list[int] = []

    def add(self, value: int) -> None:
        if len(self._fifo) == self._fifo.maxlen:
            old = self._fifo[0]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._fifo.append(value)
        bisect.insort(self._sorted, value)

    def quantile(self, q: float) -> int | None:
        s = self._sorted
        if not s:
            return None
        # nearest rank: position ceil(q * n), 1-based
        rank = -(-int(q * 1_000_000) * len(s) // 1_000_000)
        return s[min(len(s), max(1, rank)) - 1]


class OverheadEstimator:
    """Per-executor estimate of what an originator observes beyond the executor's service.

    ``add(executor, observed_us, metered_us)`` after each job with a verified receipt;
    :meth:`estimate` gives the current estimate (``None`` before the first sample) and
    :meth:`service_time` the service time of a job judged with it.
    """

    def __init__(
        self, *, window: int = OVERHEAD_WINDOW, quantile: float = OVERHEAD_QUANTILE
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1 sample")
        if not 0.0 < quantile <= 1.0:
            raise ValueError("quantile must be in (0, 1]")
        self.window = window
        self.quantile = quantile
        self._samples: dict[str, _Window] = {}

    def add(self, executor: str, observed_us: int, metered_us: int) -> int:
        """Take one job's measurements; return the estimate that now applies (µs)."""
        w = self._samples.get(executor)
        if w is None:
            w = self._samples[executor] = _Window(self.window)
        w.add(max(0, observed_us - max(0, metered_us)))
        est = w.quantile(self.quantile)
        assert est is not None
        return est

    def estimate(self, executor: str) -> int | None:
        """The current overhead estimate for ``executor`` (µs), ``None`` if never seen."""
        w = self._samples.get(executor)
        return None if w is None else w.quantile(self.quantile)

    def typical(self, executor: str) -> int | None:
        """The median overhead sample of ``executor`` (µs): what a job there typically
        costs beyond its service, for ranking by expected latency (``network_rtt_us``)."""
        w = self._samples.get(executor)
        return None if w is None else w.quantile(0.5)

    def service_time(self, executor: str, observed_us: int, metered_us: int) -> int:
        """Service time of a job of ``executor`` under the current estimate."""
        return service_time_us(observed_us, metered_us, self.estimate(executor))

    def forget(self, executor: str) -> None:
        self._samples.pop(executor, None)


#: Jobs remembered per executor and capability by :class:`PromiseKeeping`.
KEEPING_WINDOW: Final = 20
#: Jobs needed before :class:`PromiseKeeping` judges at all.
KEEPING_MIN_JOBS: Final = 10
#: Below this fraction of kept promises (service time within the promised p95) an executor
#: is excluded until a probe passes. An honest p95 promise is kept about 95 % of the time.
KEEPING_THRESHOLD: Final = 0.5


class PromiseKeeping:
    """Whether an executor keeps its p95 promises, job by job, per capability.

    ``record(key, kept)`` after each job with a promise; it returns True when the executor
    has just fallen below ``threshold`` over its last ``window`` jobs (at least ``min_jobs``
    of them): the caller excludes it until a probe passes. The record of that key starts
    over, so a readmitted executor is judged on fresh jobs.
    """

    def __init__(
        self,
        *,
        window: int = KEEPING_WINDOW,
        min_jobs: int = KEEPING_MIN_JOBS,
        threshold: float = KEEPING_THRESHOLD,
    ) -> None:
        if not 1 <= min_jobs <= window:
            raise ValueError("need 1 <= min_jobs <= window")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        self.window = window
        self.min_jobs = min_jobs
        self.threshold = threshold
        self._jobs: dict[str, deque[bool]] = {}

    def record(self, key: str, kept: bool) -> bool:
        d = self._jobs.get(key)
        if d is None:
            d = self._jobs[key] = deque(maxlen=self.window)
        d.append(kept)
        if len(d) < self.min_jobs or sum(d) >= self.threshold * len(d):
            return False
        del self._jobs[key]
        return True

    def kept(self, key: str) -> float | None:
        """Fraction of promises kept over the remembered jobs (None: none yet)."""
        d = self._jobs.get(key)
        return sum(d) / len(d) if d else None
