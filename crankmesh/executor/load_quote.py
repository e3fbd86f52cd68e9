"""Promises quoted at the current load (issue 18 item 5).

A self-benchmarked profile says how long a job takes (p50/p95/p99 of the service time) and,
from calibration, how the p50 grows with concurrency (``load_sensitivity``: concurrency →
p50).  A bid is a promise about *this* job, which runs behind the jobs already running and
queued: :func:`quote_at_load` turns the profile into that promise —

* the service quantiles are scaled by the load-sensitivity factor at the concurrency the job
  will run at (``min(slots, running + queued + 1)``), relative to concurrency 1, when the
  profile has one;
* each quantile then gets the wait for a slot: the jobs that must finish first,
  ``max(0, running + queued + 1 − slots)``, each taking that quantile of the (scaled) service
  time, ``slots`` at a time.

An idle executor quotes its profile unchanged.  Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..protocol.messages import BidSlo

__all__ = ["load_factor", "quote_at_load"]


def load_factor(load_p50: Mapping[int, int] | None, concurrency: int) -> float:
    """How many times slower than alone a job runs at ``concurrency`` (≥ 1.0): the measured
    p50 at the largest calibrated level not above it, over the p50 at level 1."""
    if not load_p50 or load_p50.get(1, 0) <= 0:
        return 1.0
    level = max((c for c in load_p50 if c <= concurrency), default=1)
    return max(1.0, load_p50[level] / load_p50[1])


def quote_at_load(
    slo: BidSlo,
    *,
    running: int,
    queued: int,
    slots: int,
    load_p50: Mapping[int, int] | None = None,
) -> BidSlo:
    """The promise for one more job, given the executor's current ``running`` and ``queued``
    jobs and its ``slots`` (max concurrency); see the module docstring."""
    if slo.p50_us is None and slo.p95_us is None and slo.p99_us is None:
        return slo
    slots = max(1, slots)
    ahead = max(0, running) + max(0, queued)
    factor = load_factor(load_p50, min(slots, ahead + 1))
    waits = max(0, ahead + 1 - slots)
    if factor == 1.0 and waits == 0:
        return slo

    def at_load(v: int | None) -> int | None:
        if v is None:
            return None
        service = v * factor
        return int(service + service * waits / slots)

    return slo.model_copy(
        update={
            "p50_us": at_load(slo.p50_us),
            "p95_us": at_load(slo.p95_us),
            "p99_us": at_load(slo.p99_us),
        }
    )
