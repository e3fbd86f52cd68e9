"""Selection policies: how an originator ranks the bids for a job.

Every policy filters first (:data:`BASE_FILTERS`; ``slo`` adds :data:`SLO_FILTERS`) and then
sorts the eligible candidates by a *score* (lower is better) and a chain of tie-breaks.  The
built-in policies (and any made with :func:`policy_from_key`) sort by the key::

    (score, degraded, *policy tie-breaks, not local, -reputation, arrival)

========= =============================================== ==================== ===========
policy    score                                           policy tie-breaks    score kind
========= =============================================== ==================== ===========
greedy    arrival order (first compatible bid)            —                    arrival
balanced  load = (running + queued) / capacity            price                load
cost      price                                           effective p95        price
latency   expected latency (see expected_latency_us)      price                latency_us
slo       price, among bids passing the SLO filters       effective p95        price
========= =============================================== ==================== ===========

Rules shared by every key-based policy, in key order after the score:

* **Degraded** candidates rank after compatible ones with the same score (and an explanation
  carries their warnings).  Whether they are eligible at all is ``Terms.allow_degraded``.
* **Local** execution wins ties: when everything the policy itself compares is equal, a
  candidate on the originator's own node (zero network latency) ranks first.  The ``latency``
  policy also counts a local candidate's network RTT as zero in its score.
* **Reputation** breaks the remaining ties: higher first; unknown counts as the prior mean
  (2/3, :data:`UNKNOWN_REPUTATION`).  It is a tie-break only, never a penalty on the score, so
  ``cost`` always picks a cheapest eligible bid; executors that must be avoided outright are
  filtered with ``Terms.min_reputation``.
* **Arrival** order settles whatever is left, so rankings are deterministic.

*Effective p95* is the worse of the promised p95 and the p95 observed by this originator
(``observed_p95_us``); a missing p95 sorts after every known one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from ._candidate import Candidate, Terms
from ._filters import (
    BASE_FILTERS,
    SLO_FILTERS,
    Filter,
    apply_filters,
    effective_p95_us,
    shortfall,
)
from ._format import fmt_ppm, fmt_us
from ._ranking import Ranking, ScoredCandidate, ScoreKind
from ._reputation import UNKNOWN_REPUTATION

_INF = math.inf


@runtime_checkable
class Policy(Protocol):
    """What a selection policy is: a name and a ``rank`` function.

    ``rank`` must return every candidate exactly once, either in ``Ranking.eligible`` (best
    first) or in ``Ranking.rejected`` with the filter it failed.  Implementations should apply
    :data:`BASE_FILTERS` (see :func:`apply_filters`) so budgets and expiry are always honoured.
    """

    @property
    def name(self) -> str: ...

    def rank(self, candidates: Sequence[Candidate], terms: Terms, now_ms: int) -> Ranking: ...


def _no_tiebreak(c: Candidate) -> tuple[float, ...]:
    return ()


def _first(item: tuple[tuple[float, ...], Candidate]) -> tuple[float, ...]:
    return item[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPolicy:
    """A policy defined by a score function (lower is better) and optional tie-breaks.

    The full sort key is ``(score, degraded, *tiebreak(c), not local, -reputation, arrival)``;
    ``tiebreak_names`` names the ``tiebreak`` components for explanations.  ``criterion`` opens
    the reason sentence; a callable gets the job's terms (e.g. to quote the SLO).
    """

    name: str
    score: Callable[[Candidate], float]
    tiebreak: Callable[[Candidate], tuple[float, ...]] = _no_tiebreak
    tiebreak_names: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = BASE_FILTERS
    criterion: str | Callable[[Terms], str] = ""
    algorithm: str = ""
    score_kind: ScoreKind = "custom"

    def sort_key(self, c: Candidate) -> tuple[float, ...]:
        """The full sort key of one (eligible) candidate; smaller ranks first."""
        s = self.score(c)
        if s != s:  # NaN would make the sort meaningless: treat as "unknown"
            s = _INF
        rep = c.reputation
        return (
            s,
            c.degraded,
            *self.tiebreak(c),
            not c.local,
            -(UNKNOWN_REPUTATION if rep is None else rep),
            c.arrival,
        )

    def rank(self, candidates: Sequence[Candidate], terms: Terms, now_ms: int) -> Ranking:
        passed, rejected = apply_filters(candidates, terms, now_ms, self.filters)
        sort_key = self.sort_key
        keyed = [(sort_key(c), c) for c in passed]
        keyed.sort(key=_first)  # stable: equal keys keep their input order
        criterion = self.criterion
        return Ranking(
            policy=self.name,
            terms=terms,
            eligible=tuple(
                ScoredCandidate(candidate=c, score=k[0], rank=i, key=k)
                for i, (k, c) in enumerate(keyed, 1)
            ),
            rejected=tuple(rejected),
            criterion=criterion if isinstance(criterion, str) else criterion(terms),
            algorithm=self.algorithm,
            score_kind=self.score_kind,
            key_names=("score", "degraded", *self.tiebreak_names, "local", "reputation", "arrival"),
        )


def expected_latency_us(c: Candidate) -> float:
    """Expected completion latency of this job on ``c``, in µs (``inf`` when unknowable).

    ``est_latency_us`` when the executor sent one (it already includes the executor's queue
    wait, so nothing is added for the queue); otherwise ``p50 + queued × p50 / capacity``
    (the queued jobs drain ``capacity`` at a time), falling back to p95 when no p50 was
    promised.  Scaled by how far the executor's service p95 observed by this originator
    (``observed_p95_us``) exceeds its promised p95, when it does by more than the noise
    tolerance (:func:`~crankmesh.market._filters.shortfall`): an executor whose promises run
    short of what it delivers is ranked by what it delivers.  Plus the network RTT observed
    by the originator (0 for a local executor, and 0 when not measured).
    """
    est = c.est_latency_us
    if est is None:
        base = c.p50_us if c.p50_us is not None else c.p95_us
        if base is None:
            return _INF
        est_f = base + base * c.queued / c.capacity
    else:
        est_f = float(est)
    est_f *= shortfall(c)
    if c.local or c.network_rtt_us is None:
        return est_f
    return est_f + c.network_rtt_us


def _p95_key(c: Candidate) -> float:
    p95 = effective_p95_us(c)
    return _INF if p95 is None else p95


def _arrival_score(c: Candidate) -> float:
    return c.arrival


def _load_score(c: Candidate) -> float:
    return c.load


def _price_score(c: Candidate) -> float:
    return c.price_micros


def _price_tiebreak(c: Candidate) -> tuple[float, ...]:
    return (c.price_micros,)


def _p95_tiebreak(c: Candidate) -> tuple[float, ...]:
    return (_p95_key(c),)


def slo_phrase(terms: Terms) -> str:
    """``p95 ≤ 50 ms and accuracy ≥ 99%`` — the SLO the terms set ("" when none)."""
    parts: list[str] = []
    if terms.slo_p95_us is not None:
        parts.append(f"p95 ≤ {fmt_us(terms.slo_p95_us)}")
    if terms.slo_p99_us is not None:
        parts.append(f"p99 ≤ {fmt_us(terms.slo_p99_us)}")
    if terms.min_accuracy_ppm is not None:
        parts.append(f"accuracy ≥ {fmt_ppm(terms.min_accuracy_ppm)}")
    if len(parts) > 1:
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return "".join(parts)


def _slo_criterion(terms: Terms) -> str:
    slo = slo_phrase(terms)
    return f"cheapest bid meeting {slo}" if slo else "cheapest compatible bid (no SLO set)"


_TIES = "then local first, higher reputation, earlier arrival"

GREEDY = KeyPolicy(
    name="greedy",
    score=_arrival_score,
    criterion="first compatible bid to arrive",
    algorithm="filters, then the first eligible bid by arrival order",
    score_kind="arrival",
)
BALANCED = KeyPolicy(
    name="balanced",
    score=_load_score,
    tiebreak=_price_tiebreak,
    tiebreak_names=("price",),
    criterion="least-loaded bid",
    algorithm=f"filters, then lowest load (running+queued)/capacity; ties: lower price, {_TIES}",
    score_kind="load",
)
COST = KeyPolicy(
    name="cost",
    score=_price_score,
    tiebreak=_p95_tiebreak,
    tiebreak_names=("p95",),
    criterion="cheapest compatible bid",
    algorithm=f"filters, then lowest price; ties: lower p95, {_TIES}",
    score_kind="price",
)
LATENCY = KeyPolicy(
    name="latency",
    score=expected_latency_us,
    tiebreak=_price_tiebreak,
    tiebreak_names=("price",),
    criterion="lowest expected latency",
    algorithm=(
        "filters, then lowest expected latency = executor estimate (or p50 + queued×p50/capacity)"
        f" + network RTT (0 when local); ties: lower price, {_TIES}"
    ),
    score_kind="latency_us",
)
SLO = KeyPolicy(
    name="slo",
    score=_price_score,
    tiebreak=_p95_tiebreak,
    tiebreak_names=("p95",),
    filters=BASE_FILTERS + SLO_FILTERS,
    criterion=_slo_criterion,
    algorithm=(
        "filters incl. the SLO (p95 judged by the worse of promised and observed), then lowest "
        f"price within budget; ties: lower p95, {_TIES}"
    ),
    score_kind="price",
)

POLICIES: Mapping[str, Policy] = MappingProxyType(
    {p.name: p for p in (GREEDY, BALANCED, COST, LATENCY, SLO)}
)
"""The built-in policies by name (read-only)."""


def get_policy(name: str) -> Policy:
    """The built-in policy called ``name``; ValueError naming the choices otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        choices = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown selection policy {name!r}; choose one of: {choices}") from None


def policy_from_key(
    name: str,
    key_fn: Callable[[Candidate], float],
    *,
    filters: tuple[Filter, ...] = BASE_FILTERS,
    criterion: str = "",
    algorithm: str = "",
) -> KeyPolicy:
    """A custom policy ranking eligible candidates by ``key_fn`` (lower is better).

    The usual tie-breaks apply after the key (degraded last, local first, higher reputation,
    earlier arrival).  NaN scores count as unknown (+inf).
    """
    return KeyPolicy(
        name=name,
        score=key_fn,
        filters=filters,
        criterion=criterion or f"best {name} score",
        algorithm=algorithm or f"filters, then lowest {name} score; ties: {_TIES[5:]}",
    )


def select(
    candidates: Sequence[Candidate],
    terms: Terms,
    policy: Policy | str,
    now_ms: int,
) -> Ranking:
    """Rank ``candidates`` for a job under ``policy`` (a Policy or a built-in name)."""
    if isinstance(policy, str):
        policy = get_policy(policy)
    return policy.rank(candidates, terms, now_ms)
