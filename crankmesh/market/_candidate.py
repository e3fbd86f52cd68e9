"""The selector's input model: one :class:`Candidate` per bid, and the job's :class:`Terms`.

These are decoupled from the wire messages: the originator converts each received ``Bid``
(verified, or not yet verified — signatures are checked lazily, best-ranked first) into a
``Candidate``, adding what only it knows (network RTT, locality, reputation, observed history,
arrival order).  All money is integer micro-units, all durations integer microseconds, all
times integer milliseconds since the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One bid, as the selector sees it."""

    bid_cid: str
    executor: str
    """The executor's DID string."""
    price_micros: int
    """Price for this job in integer micro-units of ``currency``."""
    currency: str
    p50_us: int | None = None
    """Promised (self-benchmarked) latencies in microseconds; None = not promised."""
    p95_us: int | None = None
    p99_us: int | None = None
    accuracy_ppm: int | None = None
    """Accuracy in parts per million (ML capabilities); None when not applicable."""
    running: int = 0
    """Jobs the executor is running now."""
    queued: int = 0
    """Jobs queued or reserved on the executor."""
    capacity: int = 1
    """Maximum concurrency (>= 1)."""
    est_latency_us: int | None = None
    """The executor's own estimate for this job, including its queue wait."""
    network_rtt_us: int | None = None
    """Delay to this executor as observed by the originator; None = not measured."""
    local: bool = False
    """The executor runs on the originator's own node (no network hop)."""
    degraded: bool = False
    """Matched only with preferred (not required) items missing; see ``warnings``."""
    warnings: tuple[str, ...] = ()
    reputation: float | None = None
    """0..1 local or audited reputation; None = unknown (treated as the prior, 2/3)."""
    observed_p95_us: int | None = None
    """p95 the originator observed from this executor's past jobs; None = no history."""
    conduct: tuple[str, ...] = ()
    """Misbehaviour the originator saw from this executor (and why it is excluded, if it
    is), one note each, for explanations."""
    expires_ms: int = 0
    """Bid expiry, ms since the epoch; the bid is expired when ``expires_ms <= now_ms``."""
    arrival: int = 0
    """Order of arrival in the bid window (0 = first)."""

    def __post_init__(self) -> None:
        if self.price_micros < 0:
            raise ValueError(f"bid {self.bid_cid}: price_micros must be >= 0")
        if self.capacity < 1:
            raise ValueError(f"bid {self.bid_cid}: capacity must be >= 1")
        if self.running < 0 or self.queued < 0:
            raise ValueError(f"bid {self.bid_cid}: running and queued must be >= 0")
        if self.reputation is not None and not 0.0 <= self.reputation <= 1.0:
            raise ValueError(f"bid {self.bid_cid}: reputation must be within 0..1")

    @property
    def load(self) -> float:
        """``(running + queued) / capacity``: 0 idle, 1 saturated, > 1 queueing."""
        return (self.running + self.queued) / self.capacity


@dataclass(frozen=True, slots=True, kw_only=True)
class Terms:
    """What the job demands of a bid.  Unset (None) limits are not checked."""

    currency: str = "USD"
    max_price_micros: int | None = None
    """Per-job price cap."""
    budget_remaining_micros: int | None = None
    """What is left on the job's budget token."""
    slo_p95_us: int | None = None
    slo_p99_us: int | None = None
    min_accuracy_ppm: int | None = None
    min_reputation: float | None = None
    allow_degraded: bool = True

    @property
    def price_limit_micros(self) -> int | None:
        """The tighter of the price cap and the remaining budget (None when neither is set)."""
        cap, budget = self.max_price_micros, self.budget_remaining_micros
        if cap is None:
            return budget
        if budget is None:
            return cap
        return min(cap, budget)
