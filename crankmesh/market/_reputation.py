"""Local reputation: a 0..1 score from what this node has seen an executor do.

The score is the mean of a Beta posterior over "good" and "bad" observations::

    good  = successes + slo_met
    bad   = failures  + slo_missed
    score = (PRIOR_GOOD + good) / (PRIOR_GOOD + PRIOR_BAD + good + bad)

``successes`` / ``failures`` count every finished job (verified receipt says ok / failed);
``slo_met`` / ``slo_missed`` count only the jobs that carried an SLO, so such a job contributes
twice: a success within its SLO is two good observations, a success that missed it is one good
and one bad (neutral), a failure is one bad.

The prior is Beta(2, 1): an executor we know nothing about scores 2/3
(:data:`UNKNOWN_REPUTATION`), which is what selection assumes for candidates with no
reputation at all, so strangers are neither trusted nor punished hard.  One proven
equivocation (two receipts forking its hash chain) is fraud, not bad luck: the score becomes
0.0 for good (banned).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

PRIOR_GOOD = 2.0
PRIOR_BAD = 1.0
UNKNOWN_REPUTATION = PRIOR_GOOD / (PRIOR_GOOD + PRIOR_BAD)


def _check_counts(*counts: int) -> None:
    if min(counts) < 0:
        raise ValueError(f"reputation counts cannot be negative, got {counts}")


def reputation_score(
    *,
    successes: int = 0,
    failures: int = 0,
    slo_met: int = 0,
    slo_missed: int = 0,
    equivocations: int = 0,
) -> float:
    """The 0..1 reputation for these counts (see the module docstring for the formula)."""
    _check_counts(successes, failures, slo_met, slo_missed, equivocations)
    if equivocations:
        return 0.0
    good = successes + slo_met
    bad = failures + slo_missed
    return (PRIOR_GOOD + good) / (PRIOR_GOOD + PRIOR_BAD + good + bad)


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalReputation:
    """Counts of what one executor did for this node; immutable, updated by ``record``."""

    successes: int = 0
    failures: int = 0
    slo_met: int = 0
    slo_missed: int = 0
    equivocations: int = 0

    def __post_init__(self) -> None:
        if (
            min(self.successes, self.failures, self.slo_met, self.slo_missed, self.equivocations)
            < 0
        ):
            raise ValueError("reputation counts cannot be negative")

    @property
    def score(self) -> float:
        return reputation_score(
            successes=self.successes,
            failures=self.failures,
            slo_met=self.slo_met,
            slo_missed=self.slo_missed,
            equivocations=self.equivocations,
        )

    @property
    def banned(self) -> bool:
        return self.equivocations > 0

    def record(self, *, success: bool, slo_met: bool | None = None) -> LocalReputation:
        """Return the counts after one more finished job (``slo_met=None``: job had no SLO)."""
        return replace(
            self,
            successes=self.successes + success,
            failures=self.failures + (not success),
            slo_met=self.slo_met + (slo_met is True),
            slo_missed=self.slo_missed + (slo_met is False),
        )

    def record_equivocation(self) -> LocalReputation:
        """Return the counts after a proven receipt-chain fork (score drops to 0 for good)."""
        return replace(self, equivocations=self.equivocations + 1)
