"""Pure selection market: turn bids into a ranked, explainable choice of executor.

No I/O, no clocks (``now_ms`` is passed in), no NATS.  The originator converts each bid into a
:class:`Candidate`, states the job's :class:`Terms`, and calls :func:`select` with a policy
(``greedy``, ``balanced``, ``cost``, ``latency``, ``slo``, or its own :class:`Policy`)::

    ranking = select(candidates, terms, "slo", now_ms)
    winner = ranking.raise_if_empty(job_cid)           # NoEligibleBid names every miss
    log.info(ranking.explanation(job_cid).render())

While collecting bids, :func:`can_be_beaten` says when the bid window may close early.
"""

from __future__ import annotations

from ._budget import BudgetLedger, JobCharge, JobChargeState
from ._candidate import Candidate, Terms
from ._early_close import can_be_beaten
from ._explain import ConsideredBid, Explanation
from ._filters import (
    BASE_FILTERS,
    SLO_FILTERS,
    Filter,
    RejectedCandidate,
    apply_filters,
    effective_p95_us,
)
from ._policies import (
    POLICIES,
    KeyPolicy,
    Policy,
    expected_latency_us,
    get_policy,
    policy_from_key,
    select,
)
from ._ranking import Ranking, ScoredCandidate, ScoreKind
from ._reputation import UNKNOWN_REPUTATION, LocalReputation, reputation_score
from ._resource_price import resource_price
from ._service_time import OverheadEstimator, PromiseKeeping, service_time_us

__all__ = [
    "BASE_FILTERS",
    "BudgetLedger",
    "Candidate",
    "ConsideredBid",
    "Explanation",
    "Filter",
    "JobCharge",
    "JobChargeState",
    "KeyPolicy",
    "LocalReputation",
    "OverheadEstimator",
    "POLICIES",
    "Policy",
    "PromiseKeeping",
    "Ranking",
    "RejectedCandidate",
    "SLO_FILTERS",
    "ScoreKind",
    "ScoredCandidate",
    "Terms",
    "UNKNOWN_REPUTATION",
    "apply_filters",
    "can_be_beaten",
    "effective_p95_us",
    "expected_latency_us",
    "get_policy",
    "policy_from_key",
    "reputation_score",
    "resource_price",
    "select",
    "service_time_us",
]
