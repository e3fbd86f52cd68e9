"""What executors did wrong for this originator: detected, counted and priced.

Each kind of misbehaviour an originator can see on its own jobs is counted here (and in the
``executor_misbehaviour_total{kind}`` metric), lowers the executor's local reputation (the
client records the job as a failure or a missed SLO), shows in ``explain`` (the candidate's
``conduct`` notes) and, past a threshold, excludes the executor from that capability's work
until a canary passes (RFC 0002 §6.1):

===================== =====================================================================
kind                  what happened
===================== =====================================================================
slo_missed            a job's service time exceeded the p95 its bid promised
under_promising       service time above 3 × the promised p95 in more than half of the
                      recent jobs (:class:`~crankmesh.market.PromiseKeeping`)
canary_wrong          a canary job came back with the wrong answer
canary_slow           canary service times far above the advertised p95, twice in a row
no_delivery           accepted an assignment, then never delivered a receipt
invalid_delivery      answered an assignment with something that is not a valid Accept,
                      Reject or receipt for it
rejected_assignment   bid (or quoted), then rejected the assignment (capacity griefing when
                      it does so every time)
overcharge            its receipt charges more than its bid's price (or in another currency);
                      the settlement pays the bid's price only
===================== =====================================================================

``no_delivery``, ``invalid_delivery`` and ``rejected_assignment`` are broken commitments: too
many among an executor's last assignments (the same rule as for promises) exclude it.  An
``overcharge`` is proven by the executor's own signed receipt: one excludes at once.  Receipts
that overcharge are also findings of the audit (``overcharge``).
"""

from __future__ import annotations

from typing import Final

from .. import market
from ..observability import Metrics

__all__ = ["MISBEHAVIOUR_KINDS", "SHORTFALL_LIMIT", "ConductBook", "failure_kind"]

MISBEHAVIOUR_KINDS: Final = (
    "slo_missed",
    "under_promising",
    "canary_wrong",
    "canary_slow",
    "no_delivery",
    "invalid_delivery",
    "rejected_assignment",
    "overcharge",
)

#: A job counts against exclusion when its service time exceeds this × the promised p95.
SHORTFALL_LIMIT: Final = 3.0

#: Assignments judged before broken commitments can exclude (promises: 10).
COMMITMENT_MIN_JOBS: Final = 4

_FAILURE_KINDS: Final = {
    "no_receipt": "no_delivery",
    "rejected": "rejected_assignment",
    "bad_accept": "invalid_delivery",
    "bad_receipt": "invalid_delivery",
    "invalid_delivery": "invalid_delivery",
    "bad_delivery": "invalid_delivery",  # a delivery for the attempt that did not verify
}


def failure_kind(outcome: str) -> str | None:
    """The misbehaviour a failed attempt's outcome (``"<cause>: <detail>"``) shows, or None
    when it is no fault of the executor's own word (unreachable, no accept in time, gone)."""
    return _FAILURE_KINDS.get(outcome.split(":", 1)[0].strip())


def _key(executor: str, capability: str) -> str:
    return f"{executor} {capability}"


class ConductBook:
    """Per-executor misbehaviour counts and the exclusion verdicts built on them."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        #: p95 promises kept (service time within the promise), per executor and capability.
        self.promises = market.PromiseKeeping()
        #: assignments answered and delivered honestly, per executor and capability; a
        #: broken one costs the originator a failover (or a whole timeout): judged sooner.
        self.commitments = market.PromiseKeeping(min_jobs=COMMITMENT_MIN_JOBS)
        self._counts: dict[str, dict[str, int]] = {}

    def note(self, executor: str, kind: str) -> None:
        """Count one misbehaviour of ``kind`` (one of :data:`MISBEHAVIOUR_KINDS`)."""
        self.metrics.misbehaviour.labels(kind=kind).inc()
        counts = self._counts.setdefault(executor, {})
        counts[kind] = counts.get(kind, 0) + 1

    def counts(self, executor: str) -> dict[str, int]:
        """Kind → how many times ``executor`` did it (empty when never)."""
        return dict(self._counts.get(executor, {}))

    def notes(self, executor: str) -> tuple[str, ...]:
        """One line per kind for ``explain``: ``"3 × rejected_assignment"``."""
        return tuple(f"{n} × {kind}" for kind, n in sorted(self._counts.get(executor, {}).items()))

    def promise(
        self, executor: str, capability: str, service_us: int, promised_us: int
    ) -> str | None:
        """One job judged against its p95 promise; the exclusion reason when it trips.

        A service time above the promise is a missed SLO (``slo_missed``; reputation prices
        it); exclusion needs more than noise or a busy machine: the service time must exceed
        :data:`SHORTFALL_LIMIT` × the promise in more than half of the recent jobs.
        """
        if service_us > promised_us:
            self.note(executor, "slo_missed")
        kept = service_us <= promised_us * SHORTFALL_LIMIT
        if not self.promises.record(_key(executor, capability), kept):
            return None
        self.note(executor, "under_promising")
        p = self.promises
        return (
            f"service time above {SHORTFALL_LIMIT:g} × its promised p95 in more than "
            f"{1 - p.threshold:.0%} of its last {p.min_jobs}+ jobs (RFC 0002 §6.1)"
        )

    def commitment(self, executor: str, capability: str, kind: str | None) -> str | None:
        """One assignment's end: ``kind`` None when delivered honestly, else the
        misbehaviour; the exclusion reason when broken commitments trip the threshold."""
        if kind is not None:
            self.note(executor, kind)
        if kind == "overcharge":
            # signed proof in one receipt: no statistics needed
            return "charged more than its bid in a signed receipt (overcharge)"
        if not self.commitments.record(_key(executor, capability), kind is None):
            return None
        counts = self._counts.get(executor, {})
        broken = ", ".join(
            f"{counts[k]} {k}"
            for k in ("no_delivery", "invalid_delivery", "rejected_assignment", "overcharge")
            if counts.get(k)
        )
        c = self.commitments
        return (
            f"broke more than {1 - c.threshold:.0%} of its last {c.min_jobs}+ assignments "
            f"({broken})"
        )
