"""Eligibility filters: each one either passes a candidate or names why it cannot be chosen.

Every policy applies :data:`BASE_FILTERS`, in this order (the first failure is recorded):

========== ==============================================================================
expired    ``expires_ms <= now_ms``
currency   the bid's currency differs from ``Terms.currency``
max_price  price above ``Terms.max_price_micros``
budget     price above ``Terms.budget_remaining_micros``
reputation reputation below ``Terms.min_reputation`` (unknown counts as the prior, 2/3)
degraded   a degraded match while ``Terms.allow_degraded`` is False
========== ==============================================================================

The ``slo`` policy adds :data:`SLO_FILTERS`:

========== ==============================================================================
slo_p95    effective p95 above ``Terms.slo_p95_us``, or no p95 promised
slo_p99    promised p99 above ``Terms.slo_p99_us``, or no p99 promised
accuracy   accuracy below ``Terms.min_accuracy_ppm``, or no accuracy promised
========== ==============================================================================

*Effective p95* is the worse of the promised p95 and the p95 this originator observed from the
executor's past jobs (``observed_p95_us``), when it has such history and the observation exceeds
the promise by more than :data:`OBSERVED_TOLERANCE` (the sampling noise of an honest p95): a bid
is judged by what the executor has delivered, not only by what it claims.  Without history the
promise stands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ._candidate import Candidate, Terms
from ._format import fmt_money, fmt_ppm, fmt_ratio, fmt_us
from ._reputation import UNKNOWN_REPUTATION

CheckFn = Callable[[Candidate, Terms, int], "str | None"]
"""``check(candidate, terms, now_ms)`` returns None to pass, or the human reason it fails."""


@dataclass(frozen=True, slots=True)
class Filter:
    """A named eligibility check; ``label`` is the plural phrase used in reason sentences
    ("2 expired", "1 over budget")."""

    name: str
    check: CheckFn
    label: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectedCandidate:
    """A candidate that failed ``filter``, with the human ``reason``."""

    candidate: Candidate
    filter: str
    reason: str

    def describe(self) -> str:
        """``bid <cid> from <did>: <filter>: <reason>`` — one line of a NoEligibleBid."""
        c = self.candidate
        return f"bid {c.bid_cid} from {c.executor}: {self.filter}: {self.reason}"


#: An observed p95 up to this factor above the promise is taken as noise, not a shortfall.
OBSERVED_TOLERANCE = 1.25


def shortfall(c: Candidate) -> float:
    """How many times the observed p95 exceeds the promised one (1.0 when it does not, or by
    no more than :data:`OBSERVED_TOLERANCE`, or when either is unknown)."""
    p95, seen = c.p95_us, c.observed_p95_us
    if not p95 or seen is None or seen <= p95 * OBSERVED_TOLERANCE:
        return 1.0
    return seen / p95


def effective_p95_us(c: Candidate) -> int | None:
    """The worse of promised and observed p95; None when nothing was promised."""
    p95, seen = c.p95_us, c.observed_p95_us
    if p95 is None:
        return None
    if seen is not None and shortfall(c) > 1.0:
        return seen
    return p95


def _expired(c: Candidate, t: Terms, now_ms: int) -> str | None:
    if c.expires_ms > now_ms:
        return None
    ago = fmt_us((now_ms - c.expires_ms) * 1000)
    return f"bid expired {ago} before selection (expires_ms {c.expires_ms}, now_ms {now_ms})"


def _currency(c: Candidate, t: Terms, now_ms: int) -> str | None:
    if c.currency == t.currency:
        return None
    return f"priced in {c.currency}, the job pays in {t.currency}"


def _max_price(c: Candidate, t: Terms, now_ms: int) -> str | None:
    cap = t.max_price_micros
    if cap is None or c.price_micros <= cap:
        return None
    return (
        f"price {fmt_money(c.price_micros, c.currency)} exceeds the cap of "
        f"{fmt_money(cap, t.currency)}"
    )


def _budget(c: Candidate, t: Terms, now_ms: int) -> str | None:
    left = t.budget_remaining_micros
    if left is None or c.price_micros <= left:
        return None
    return (
        f"price {fmt_money(c.price_micros, c.currency)} exceeds the remaining budget of "
        f"{fmt_money(left, t.currency)}"
    )


def _reputation(c: Candidate, t: Terms, now_ms: int) -> str | None:
    floor = t.min_reputation
    if floor is None:
        return None
    rep = c.reputation
    if rep is None:
        if UNKNOWN_REPUTATION >= floor:
            return None
        return (
            f"reputation unknown (prior {fmt_ratio(UNKNOWN_REPUTATION)}) is below the "
            f"minimum {fmt_ratio(floor)}"
        )
    if rep >= floor:
        return None
    why = f" ({'; '.join(c.conduct)})" if c.conduct else ""
    return f"reputation {fmt_ratio(rep)} is below the minimum {fmt_ratio(floor)}{why}"


def _degraded(c: Candidate, t: Terms, now_ms: int) -> str | None:
    if not c.degraded or t.allow_degraded:
        return None
    missing = f" ({'; '.join(c.warnings)})" if c.warnings else ""
    return f"degraded match{missing}, and the job does not allow degraded executors"


def _slo_p95(c: Candidate, t: Terms, now_ms: int) -> str | None:
    slo = t.slo_p95_us
    if slo is None:
        return None
    p95 = c.p95_us
    if p95 is None:
        return f"no p95 promised (SLO p95 ≤ {fmt_us(slo)})"
    seen = c.observed_p95_us
    if seen is not None and shortfall(c) > 1.0:
        if seen <= slo:
            return None
        return (
            f"observed p95 {fmt_us(seen)} (promised {fmt_us(p95)}) exceeds the SLO "
            f"p95 ≤ {fmt_us(slo)}"
        )
    if p95 <= slo:
        return None
    return f"promised p95 {fmt_us(p95)} exceeds the SLO p95 ≤ {fmt_us(slo)}"


def _slo_p99(c: Candidate, t: Terms, now_ms: int) -> str | None:
    slo = t.slo_p99_us
    if slo is None:
        return None
    p99 = c.p99_us
    if p99 is None:
        return f"no p99 promised (SLO p99 ≤ {fmt_us(slo)})"
    if p99 <= slo:
        return None
    return f"promised p99 {fmt_us(p99)} exceeds the SLO p99 ≤ {fmt_us(slo)}"


def _accuracy(c: Candidate, t: Terms, now_ms: int) -> str | None:
    floor = t.min_accuracy_ppm
    if floor is None:
        return None
    acc = c.accuracy_ppm
    if acc is None:
        return f"no accuracy promised (minimum {fmt_ppm(floor)})"
    if acc >= floor:
        return None
    return f"accuracy {fmt_ppm(acc)} is below the minimum {fmt_ppm(floor)}"


EXPIRED = Filter("expired", _expired, "expired")
CURRENCY = Filter("currency", _currency, "in another currency")
MAX_PRICE = Filter("max_price", _max_price, "over the price cap")
BUDGET = Filter("budget", _budget, "over budget")
REPUTATION = Filter("reputation", _reputation, "below the minimum reputation")
DEGRADED = Filter("degraded", _degraded, "degraded (not allowed)")
SLO_P95 = Filter("slo_p95", _slo_p95, "missing the p95 SLO")
SLO_P99 = Filter("slo_p99", _slo_p99, "missing the p99 SLO")
ACCURACY = Filter("accuracy", _accuracy, "below the minimum accuracy")

BASE_FILTERS: tuple[Filter, ...] = (EXPIRED, CURRENCY, MAX_PRICE, BUDGET, REPUTATION, DEGRADED)
"""Filters every built-in policy applies."""
SLO_FILTERS: tuple[Filter, ...] = (SLO_P95, SLO_P99, ACCURACY)
"""Filters the ``slo`` policy adds after :data:`BASE_FILTERS`."""

PERFORMANCE_FILTERS = frozenset(f.name for f in SLO_FILTERS)
"""Filters whose rejects are "cheaper but slower/less accurate" in a reason sentence."""

FILTER_LABELS: dict[str, str] = {
    **{f.name: f.label for f in BASE_FILTERS + SLO_FILTERS},
    # rejections the originator adds after ranking (Ranking.reject)
    "signature": "with an invalid signature",
}


def apply_filters(
    candidates: Iterable[Candidate],
    terms: Terms,
    now_ms: int,
    filters: tuple[Filter, ...] = BASE_FILTERS,
) -> tuple[list[Candidate], list[RejectedCandidate]]:
    """Split ``candidates`` into those passing every filter and those rejected.

    Each rejected candidate records the first filter it failed, in ``filters`` order.
    """
    passed: list[Candidate] = []
    rejected: list[RejectedCandidate] = []
    for c in candidates:
        for f in filters:
            reason = f.check(c, terms, now_ms)
            if reason is not None:
                rejected.append(RejectedCandidate(candidate=c, filter=f.name, reason=reason))
                break
        else:
            passed.append(c)
    return passed, rejected
