"""The per-job negotiation of an originator as a sans-I/O state machine (h11's shape).

:class:`Negotiation` holds every decision the originator takes for one job: which path
(assign on a live firm quote, or a call for bids), when the bid window closes, which
candidate gets the next attempt, when a failed attempt moves on to the next candidate or to
a fresh round, how long to keep trying while executors are busy, and which error ends the
job.  It never touches a socket, a clock, a task or a signature: the I/O layer
(:class:`crankmesh.originator.Client`) performs each action it asks for and feeds back what
happened as an event; time comes in with the events (``now_ms``, one clock, ms)::

    neg = Negotiation(job_cid=..., capability=..., policy="cost", terms=terms,
                      limits=Limits(), started_ms=now, quotes=quote_candidates)
    action = neg.next_action()
    while not isinstance(action, (Done, Failed)):
        ...perform it, then: neg.send(event)...
        action = neg.next_action()

Actions: :class:`RefreshPeers` (tell me the live compatible peers), :class:`Announce`
(publish the call for bids, to ``targets`` or to everyone), :class:`CollectBids` (wait for
bid events until ``until_ms``), :class:`Assign` (verify this candidate's signature, then
assign), :class:`Sleep` (back off until ``until_ms``), :class:`Done`, :class:`Failed`.

Events: :class:`Peers`, :class:`Announced`, :class:`BidReceived`, :class:`NoBidReceived`,
:class:`Tick` (the clock moved: e.g. the window's deadline was reached), :class:`Forged`
(the candidate's signature does not verify), :class:`Woke`, and the outcome of an attempt:
:class:`Delivered` or one of the :class:`AttemptFailed` kinds (:class:`Rejected`,
:class:`Unreachable`, :class:`NoAccept`, :class:`BadAccept`, :class:`DeliveryInvalid`,
:class:`NoReceipt`, :class:`ExecutorGone`, :class:`HandedBack`).

Error handling: an event that does not fit the state (say a :class:`Delivered` while no
attempt is running) raises :class:`NegotiationError`, a bug of the I/O layer.  Bids and
no-bids are accepted in every state (they are kept for later attempts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from ..protocol.errors import (
    Attempt,
    BidsDeclined,
    BudgetExceeded,
    CrankmeshError,
    ExecutorsExhausted,
    NoBids,
    NoCapacity,
    NoEligibleBid,
)
from ._candidate import Candidate, Terms
from ._early_close import can_be_beaten
from ._policies import Policy, select
from ._ranking import Ranking

__all__ = [
    "TRANSIENT_NO_BID",
    "Action",
    "Announce",
    "Announced",
    "Assign",
    "AttemptFailed",
    "BadAccept",
    "BidReceived",
    "CollectBids",
    "Delivered",
    "DeliveryInvalid",
    "Done",
    "Event",
    "ExecutorGone",
    "Failed",
    "Forged",
    "HandedBack",
    "Limits",
    "Negotiation",
    "NegotiationError",
    "NoAccept",
    "NoBidReceived",
    "NoReceipt",
    "PeerView",
    "Peers",
    "RefreshPeers",
    "Rejected",
    "Rng",
    "Sleep",
    "Tick",
    "Unreachable",
    "Woke",
    "policy_sample_key",
    "sample_executors",
    "sample_key",
]

#: NoBid reasons that a later round may not meet again (RFC 0001 §8.13).
TRANSIENT_NO_BID: frozenset[str] = frozenset({"full", "rate_limited", "draining", "duplicate"})

Path = str  # "quote" | "call_for_bids"


class NegotiationError(CrankmeshError, RuntimeError):
    """The I/O layer fed an event that does not fit the negotiation's state (a bug)."""


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The originator's per-job limits (from its ``ClientConfig``)."""

    max_bid_window_ms: int = 200
    min_bid_window_ms: int = 0
    max_attempts: int = 6
    max_rounds: int = 3
    busy_wait_ms: int = 10_000
    #: Executors a call for bids is sent to (power-of-k sample); 0 = every compatible one.
    sample_k: int = 0
    #: Probability that a sampled slot is filled uniformly at random (exploration).
    explore: float = 0.1
    backoff_ms: int = 20
    max_backoff_ms: int = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerView:
    """What the directory says of one live peer that may serve the job."""

    did: str
    price_micros: int | None = None
    running: int = 0
    queued: int = 0
    capacity: int = 1
    reputation: float | None = None
    #: A live quote's price for the capability, when the peer has one (sampling prefers it).
    quote_price_micros: int | None = None
    #: The p95 (µs) and accuracy (ppm) the peer advertises for the capability, if it does.
    p95_us: int | None = None
    accuracy_ppm: int | None = None
    p50_us: int | None = None

    def describe_load(self) -> str:
        return (
            f"{self.did}: running {self.running}, queued {self.queued}, capacity {self.capacity}"
        )


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Peers:
    """Answer to :class:`RefreshPeers`: the live peers that may serve the job."""

    now_ms: int
    peers: tuple[PeerView, ...]


@dataclass(frozen=True, slots=True)
class Announced:
    """The call for bids of the current round went out at ``now_ms``."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class BidReceived:
    """A bid (decoded, signature not yet verified) as a candidate."""

    candidate: Candidate


@dataclass(frozen=True, slots=True)
class NoBidReceived:
    """A verified signed NoBid of ``executor`` (it answers the current round)."""

    executor: str
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Tick:
    """The clock moved (a wait ended)."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class Woke:
    """A :class:`Sleep` ended."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class Forged:
    """The candidate of the pending :class:`Assign` failed signature verification."""

    bid_cid: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """The attempt produced a verified receipt; ``charge_micros`` is what it charges."""

    now_ms: int
    charge_micros: int


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """The attempt failed; ``outcome`` is the line recorded in its :class:`Attempt`."""

    detail: str = ""
    cause = "failed"

    @property
    def outcome(self) -> str:
        return f"{self.cause}: {self.detail}" if self.detail else self.cause


@dataclass(frozen=True, slots=True)
class Rejected(AttemptFailed):
    """The executor answered the assignment with a signed Reject."""

    reason: str = ""
    cause = "rejected"

    @property
    def outcome(self) -> str:
        return f"rejected: {self.reason} {self.detail}".rstrip()


@dataclass(frozen=True, slots=True)
class Unreachable(AttemptFailed):
    cause = "unreachable"


@dataclass(frozen=True, slots=True)
class NoAccept(AttemptFailed):
    cause = "no_accept"


@dataclass(frozen=True, slots=True)
class BadAccept(AttemptFailed):
    cause = "bad_accept"


@dataclass(frozen=True, slots=True)
class DeliveryInvalid(AttemptFailed):
    cause = "bad_delivery"


@dataclass(frozen=True, slots=True)
class NoReceipt(AttemptFailed):
    cause = "no_receipt"


@dataclass(frozen=True, slots=True)
class ExecutorGone(AttemptFailed):
    cause = "executor_gone"


@dataclass(frozen=True, slots=True)
class HandedBack(AttemptFailed):
    """A signed Reject after the Accept (RFC 0001 §10.7): the outcome is its reason."""

    reason: str = ""
    cause = "handed_back"

    @property
    def outcome(self) -> str:
        return f"{self.reason}: {self.detail}".rstrip(": ")


Event = (
    Peers
    | Announced
    | BidReceived
    | NoBidReceived
    | Tick
    | Woke
    | Forged
    | Delivered
    | AttemptFailed
)

# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class RefreshPeers:
    """Tell me the live peers that may serve the job (answer with :class:`Peers`).
    ``after_empty_round``: nobody bid in the round just over (the I/O layer may then
    diagnose whether any peer could ever take the job)."""

    after_empty_round: bool = False


@dataclass(frozen=True, slots=True)
class Announce:
    """Publish the call for bids of ``round``: to each of ``targets`` on its own announce
    subject, or (``targets`` is None) on the capability's broadcast subject."""

    round: int
    targets: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class CollectBids:
    """Wait for bid events until ``until_ms``, then send :class:`Tick`."""

    until_ms: int


@dataclass(frozen=True, slots=True)
class Assign:
    """Verify ``candidate``'s signature (:class:`Forged` if it fails), then assign the job
    to it as attempt ``attempt``; ``path`` says whether ``candidate`` is a quote or a bid."""

    candidate: Candidate
    attempt: int
    path: Path


@dataclass(frozen=True, slots=True)
class Sleep:
    """Nobody could take the job this round: wait until ``until_ms``, then send :class:`Woke`."""

    until_ms: int


@dataclass(frozen=True, slots=True)
class Done:
    """The job has its result.  ``settle_micros``: what the budget is charged (the lower of
    the receipt's charge and the price agreed)."""

    candidate: Candidate
    path: Path
    attempts: tuple[Attempt, ...]
    settle_micros: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The job cannot be placed: raise ``error``."""

    error: Exception
    attempts: tuple[Attempt, ...]


Action = RefreshPeers | Announce | CollectBids | Assign | Sleep | Done | Failed


# ---------------------------------------------------------------------------- sampling


class Rng(Protocol):
    """The randomness sampling needs (``random.Random`` has it); the I/O layer owns it."""

    def random(self) -> float: ...

    def randrange(self, stop: int, /) -> int: ...


def sample_executors(
    peers: Sequence[PeerView],
    k: int,
    rng: Rng,
    *,
    explore: float = 0.1,
    key: Callable[[PeerView], tuple[float, ...]] | None = None,
) -> tuple[str, ...]:
    """Choose ``k`` distinct executors: power-of-choices over a random partition.

    The peers are shuffled into ``k`` groups of about ``len(peers) / k``; each group sends
    its best member by ``key`` (default: lower quoted, else advertised, price, then higher
    reputation, then lower load), so the best peer of the directory is always sampled and
    the other slots spread over the rest at random; with probability ``explore`` a group
    sends a uniformly drawn member instead, so that a new executor with no record is found.
    With ``k >= len(peers)`` every peer is chosen.  Pure: randomness comes from ``rng``.
    """
    pool = list(peers)
    if k <= 0 or k >= len(pool):
        return tuple(p.did for p in pool)
    rank = key or sample_key
    for i in range(len(pool) - 1, 0, -1):  # Fisher-Yates
        j = rng.randrange(i + 1)
        pool[i], pool[j] = pool[j], pool[i]
    chosen = []
    for g in range(k):
        group = pool[g::k]
        if rng.random() < explore:
            chosen.append(group[rng.randrange(len(group))].did)
        else:
            chosen.append(min(group, key=rank).did)
    return tuple(chosen)


def sample_key(p: PeerView) -> tuple[float, ...]:
    """The default order of peers for sampling (lower is better): price, reputation, load."""
    price = p.quote_price_micros if p.quote_price_micros is not None else p.price_micros
    rep = 2 / 3 if p.reputation is None else p.reputation
    return (
        float("inf") if price is None else float(price),
        -rep,
        (p.running + p.queued) / max(1, p.capacity),
    )


def policy_sample_key(policy: str, terms: Terms) -> Callable[[PeerView], tuple[float, ...]]:
    """How a policy orders the directory's peers when sampling a call for bids: what it
    would rank a bid on, from what the peer advertises (price, promised p95, accuracy,
    load); peers that cannot meet the terms (price limit, SLO, accuracy, reputation)
    come last."""
    limit = terms.price_limit_micros
    slo_p95 = terms.slo_p95_us
    inf = float("inf")

    def key(p: PeerView) -> tuple[float, ...]:
        base = sample_key(p)
        price = base[0]
        # as expected_latency_us ranks a bid: p50 (else p95) plus the queue ahead
        bench = p.p50_us if p.p50_us is not None else p.p95_us
        latency = inf if bench is None else bench + bench * p.queued / max(1, p.capacity)
        unfit = float(
            (limit is not None and price > limit)
            or (slo_p95 is not None and p.p95_us is not None and p.p95_us > slo_p95)
            or (
                terms.min_accuracy_ppm is not None
                and p.accuracy_ppm is not None
                and p.accuracy_ppm < terms.min_accuracy_ppm
            )
            or (p.reputation is not None and p.reputation < (terms.min_reputation or 0.0))
        )
        if policy == "latency":
            return (unfit, latency, price)
        if policy == "balanced":
            return (unfit, base[2], price)
        return (unfit, *base)

    return key


# ---------------------------------------------------------------------------- machine


class _Phase:
    """The negotiation's states (plain strings: the pure layer imports no enum)."""

    QUOTES = "quotes"  # try the live quotes, best first
    PEERS = "peers"  # waiting for Peers (before a round's announce)
    ANNOUNCE = "announce"  # waiting for Announced
    COLLECTING = "collecting"  # bid window open
    SELECTING = "selecting"  # pick the next bid of this round
    ASSIGNING = "assigning"  # an Assign is out: waiting for its outcome (or Forged)
    BUSY_CHECK = "busy_check"  # nobody bid: waiting for Peers to decide on a backoff
    SLEEPING = "sleeping"
    DONE = "done"


@dataclass(slots=True)
class _Decline:
    round: int
    reason: str
    detail: str


@dataclass(slots=True)
class _Round:
    number: int = 0
    targets: tuple[str, ...] | None = None
    expected: frozenset[str] = frozenset()
    opened_ms: int = 0
    bids_before: int = 0
    #: Whether the window brought a bid this job could still use (set when it closes).
    got_bids: bool = False


class Negotiation:
    """One job's negotiation (see the module docstring for the protocol of use).

    ``quotes``: candidates built from live firm quotes the job's requirements admit (their
    ``bid_cid`` is the quote's CID); when any is eligible under the policy the job goes the
    quote path first and falls back to a call for bids when they are used up.
    ``only_executor``: a pinned job (canary probe) considers that executor alone.
    ``auction``: skip the quotes and the sampling: call for bids from every compatible
    executor (the broadcast subject).
    ``rng``: randomness for the power-of-k sample (``limits.sample_k > 0``); without it every
    compatible executor is called.
    """

    def __init__(
        self,
        *,
        job_cid: str,
        capability: str,
        policy: str | Policy,
        terms: Terms,
        limits: Limits,
        started_ms: int,
        quotes: Sequence[Candidate] = (),
        only_executor: str | None = None,
        auction: bool = False,
        rng: Rng | None = None,
    ) -> None:
        self.job_cid = job_cid
        self.capability = capability
        self.policy = policy
        self.policy_name = policy if isinstance(policy, str) else policy.name
        self.terms = terms
        self.limits = limits
        self.started_ms = started_ms
        self.now_ms = started_ms
        self.only_executor = only_executor
        self.auction = auction
        self._rng = rng
        #: Every bid received, in arrival order (kept across rounds).
        self.bids: list[Candidate] = []
        self.bidders: set[str] = set()
        self.declines: dict[str, _Decline] = {}
        #: Bid / quote CIDs already used or found forged.
        self.tried: set[str] = set()
        #: Executors that failed an attempt of this job.
        self.failed: set[str] = set()
        self.attempts: list[Attempt] = []
        #: The latest ranking (of bids, or of quotes on the quote path): for explanations.
        self.ranking: Ranking | None = None
        #: The ranking of the live quotes considered (None: no quote was considered).
        self.quote_ranking: Ranking | None = None
        self.quotes: tuple[Candidate, ...] = () if auction else tuple(quotes)
        #: "quote" while (and if) the job went to a quote, else "call_for_bids".
        self.path: Path = "quote" if self.quotes else "call_for_bids"
        self.peers: tuple[PeerView, ...] = ()
        self._round = _Round()
        self._backoff_ms = limits.backoff_ms
        self._busy_until_ms = started_ms + limits.busy_wait_ms
        self._pending: Assign | None = None
        self._result: Done | Failed | None = None
        self._phase: str = _Phase.QUOTES if self.quotes else _Phase.PEERS
        self._selection: Ranking | None = None  # ranking being walked (lazy verification)

    # ------------------------------------------------------------------ queries

    @property
    def round(self) -> int:
        return self._round.number

    def declined_now(self) -> set[str]:
        """Executors whose NoBid answered the current round."""
        return {d for d, nb in self.declines.items() if nb.round == self._round.number}

    def decline_reasons(self) -> dict[str, str]:
        return {
            d: f"{nb.reason}: {nb.detail}" if nb.detail else nb.reason
            for d, nb in self.declines.items()
        }

    # ------------------------------------------------------------------ events

    def send(self, event: Event) -> None:
        """Feed one event (see the module docstring)."""
        if isinstance(event, BidReceived):
            self._on_bid(event.candidate)
            return
        if isinstance(event, NoBidReceived):
            self.declines[event.executor] = _Decline(
                self._round.number, event.reason, event.detail
            )
            return
        phase = self._phase
        if isinstance(event, Tick):
            self.now_ms = max(self.now_ms, event.now_ms)
            return
        if isinstance(event, Peers):
            self.now_ms = max(self.now_ms, event.now_ms)
            self.peers = event.peers
            if phase is _Phase.PEERS:
                self._phase = _Phase.ANNOUNCE
            elif phase is _Phase.BUSY_CHECK:
                self._busy_check()
            else:
                raise NegotiationError(f"Peers arrived while {phase}")
            return
        if isinstance(event, Announced):
            if phase is not _Phase.ANNOUNCE:
                raise NegotiationError(f"Announced arrived while {phase}")
            self.now_ms = max(self.now_ms, event.now_ms)
            self._round.opened_ms = event.now_ms
            self._phase = _Phase.COLLECTING
            return
        if isinstance(event, Woke):
            if phase is not _Phase.SLEEPING:
                raise NegotiationError(f"Woke arrived while {phase}")
            self.now_ms = max(self.now_ms, event.now_ms)
            self._backoff_ms = min(self._backoff_ms * 2, self.limits.max_backoff_ms)
            self._phase = _Phase.PEERS
            return
        pending = self._pending
        if pending is None or phase is not _Phase.ASSIGNING:
            raise NegotiationError(f"{type(event).__name__} arrived with no attempt pending")
        if isinstance(event, Forged):
            if event.bid_cid != pending.candidate.bid_cid:
                raise NegotiationError("Forged names another candidate than the pending one")
            self.tried.add(event.bid_cid)
            self._pending = None
            assert self._selection is not None
            self._selection = self._selection.reject(
                event.bid_cid,
                "signature",
                f"signature does not verify for {pending.candidate.executor}",
            )
            self.ranking = self._selection
            if pending.path == "quote":
                self.quote_ranking = self._selection
            self._phase = _Phase.QUOTES if pending.path == "quote" else _Phase.SELECTING
            return
        if isinstance(event, Delivered):
            self.now_ms = max(self.now_ms, event.now_ms)
            self._pending = None
            self._phase = _Phase.DONE
            self._result = Done(
                pending.candidate,
                pending.path,
                tuple(self.attempts),
                min(event.charge_micros, pending.candidate.price_micros),
            )
            return
        if isinstance(event, AttemptFailed):
            self._pending = None
            executor = pending.candidate.executor
            # A quote refused (full now, expired, the job beyond its terms) or not heard
            # (nobody listening yet) says nothing against the executor: it may still bid
            # on the call for bids that follows (a dead one will not).
            if not (pending.path == "quote" and isinstance(event, Rejected | Unreachable)):
                self.failed.add(executor)
            self.attempts.append(Attempt(pending.attempt, executor, event.outcome))
            self._phase = _Phase.QUOTES if pending.path == "quote" else _Phase.SELECTING
            return
        raise NegotiationError(f"unknown event {event!r}")  # pragma: no cover

    def _usable_signer(self, executor: str) -> bool:
        return executor not in self.failed and (
            self.only_executor is None or executor == self.only_executor
        )

    def _on_bid(self, bid: Candidate) -> None:
        self.bidders.add(bid.executor)
        self.bids.append(replace(bid, arrival=len(self.bids)))

    # ------------------------------------------------------------------ actions

    def next_action(self) -> Action:
        """What the I/O layer must do now."""
        while True:
            phase = self._phase
            if phase is _Phase.DONE:
                assert self._result is not None
                return self._result
            if phase is _Phase.ASSIGNING:
                assert self._pending is not None
                return self._pending
            if phase is _Phase.QUOTES:
                action = self._next_quote()
                if action is not None:
                    return action
                continue
            if phase is _Phase.PEERS:
                return RefreshPeers()
            if phase is _Phase.BUSY_CHECK:
                return RefreshPeers(after_empty_round=True)
            if phase is _Phase.ANNOUNCE:
                return self._announce()
            if phase is _Phase.SLEEPING:
                return Sleep(self.now_ms + self._backoff_ms)
            if phase is _Phase.COLLECTING:
                until = self._window_until()
                if until is not None:
                    return CollectBids(until)
                # Only a new bid this job could still use counts: an executor that already
                # failed it bidding again is no reason to spend a round.
                self._round.got_bids = any(
                    self._usable_signer(b.executor)
                    for b in self.bids[self._round.bids_before :]
                )
                self._phase = _Phase.SELECTING
                self._selection = None
                continue
            if phase is _Phase.SELECTING:
                action = self._next_bid()
                if action is not None:
                    return action
                continue
            raise AssertionError(phase)  # pragma: no cover

    # -- quote path

    def _next_quote(self) -> Action | None:
        if len(self.attempts) >= self.limits.max_attempts:
            return self._finish()
        if self._selection is None or self._pending_is_stale():
            usable = [
                q
                for q in self.quotes
                if q.bid_cid not in self.tried
                and q.executor not in self.failed
                and (self.only_executor is None or q.executor == self.only_executor)
            ]
            ranking = select(usable, self.terms, self.policy, self.now_ms)
            self._selection = ranking
            if self.quote_ranking is None or usable:
                self.quote_ranking = ranking
        ranking = self._selection
        if ranking.eligible:
            self.ranking = ranking
            return self._assign(ranking.eligible[0].candidate, "quote")
        # No (further) quote: a call for bids.
        self._selection = None
        self.path = "call_for_bids"
        self._phase = _Phase.PEERS
        return None

    def _pending_is_stale(self) -> bool:
        """After a failed attempt, re-rank (the failed executor is out)."""
        sel = self._selection
        return sel is not None and any(
            s.candidate.executor in self.failed or s.candidate.bid_cid in self.tried
            for s in sel.eligible
        )

    # -- calls for bids

    def _announce(self) -> Action:
        r = self._round
        number = r.number + 1
        live = [
            p
            for p in self.peers
            if p.did not in self.failed
            and (self.only_executor is None or p.did == self.only_executor)
        ]
        targets: tuple[str, ...] | None = None
        rng = self._rng
        sampled = self.limits.sample_k > 0 and not self.auction and self.only_executor is None
        # A sample only pays off beyond k executors; up to k, the broadcast subject also
        # reaches any the directory has not heard of yet, for the same deliveries.
        if sampled and rng is not None and len(live) > self.limits.sample_k:
            targets = sample_executors(
                live,
                self.limits.sample_k,
                rng,
                explore=self.limits.explore,
                key=policy_sample_key(self.policy_name, self.terms),
            )
            expected = frozenset(targets)
        else:
            expected = frozenset(p.did for p in live)
        self._round = _Round(
            number=number,
            targets=targets,
            expected=expected,
            opened_ms=self.now_ms,
            bids_before=len(self.bids),
        )
        return Announce(number, targets)

    def _window_until(self) -> int | None:
        """When to look again while collecting; None: the window closes now."""
        r, lim, now = self._round, self.limits, self.now_ms
        deadline = r.opened_ms + lim.max_bid_window_ms
        min_deadline = r.opened_ms + lim.min_bid_window_ms
        if now >= deadline:
            return None
        answered = self.bidders | self.declined_now()
        only = self.only_executor
        if only is not None and only in answered:
            return None
        expected = r.expected - self.failed
        closable = False
        if expected and expected <= answered:
            closable = True
        else:
            fresh = [b for b in self.bids if self._usable_signer(b.executor)]
            if fresh and self._unbeatable(fresh, expected, answered):
                closable = True
        if closable:
            return None if now >= min_deadline else min_deadline
        return deadline

    def _unbeatable(
        self, fresh: list[Candidate], expected: frozenset[str], answered: set[str]
    ) -> bool:
        if not expected:
            return False
        by_did = {p.did: p for p in self.peers}
        prices = [
            by_did[d].price_micros for d in expected - answered if d in by_did
        ]
        floor_price = min((p for p in prices if p is not None), default=None)
        best = select(fresh, self.terms, self.policy_name, self.now_ms).winner
        if best is None or floor_price is None:
            return False
        return not can_be_beaten(
            best,
            self.terms,
            self.policy_name,
            floor_price_micros=floor_price,
            floor_latency_us=None,
        )

    def _next_bid(self) -> Action | None:
        lim = self.limits
        if len(self.attempts) < lim.max_attempts:
            if self._selection is None or self._pending_is_stale():
                usable = [
                    b
                    for b in self.bids
                    if b.bid_cid not in self.tried
                    and b.executor not in self.failed
                    and (self.only_executor is None or b.executor == self.only_executor)
                ]
                if usable:
                    self._selection = select(usable, self.terms, self.policy, self.now_ms)
                    self.ranking = self._selection
                else:
                    self._selection = None
            sel = self._selection
            if sel is not None:
                if sel.eligible:
                    return self._assign(sel.eligible[0].candidate, "call_for_bids")
                if not self.attempts:
                    return self._fail(self._no_eligible(sel))
        self._selection = None
        # The round is over.
        if len(self.attempts) >= lim.max_attempts:
            return self._finish()
        if self._round.got_bids:
            if self._round.number >= lim.max_rounds:
                return self._finish()
            self._phase = _Phase.PEERS
            return None
        self._phase = _Phase.BUSY_CHECK
        return None

    def _busy_check(self) -> None:
        """Nobody bid this round (the Peers just came in): back off while live peers could
        serve the job, unless every one of them declined for good."""
        live = {p.did for p in self.peers}
        if not live or self.now_ms + self._backoff_ms > self._busy_until_ms:
            self._finish()
            return
        if self._declined_for_good(live - self.failed):
            self._finish()
            return
        self._phase = _Phase.SLEEPING

    def _declined_for_good(self, executors: set[str]) -> bool:
        if not executors or not executors <= self.declined_now():
            return False
        return all(self.declines[d].reason not in TRANSIENT_NO_BID for d in executors)

    def _assign(self, candidate: Candidate, path: Path) -> Assign:
        self.tried.add(candidate.bid_cid)
        self.path = path
        self._pending = Assign(candidate, len(self.attempts) + 1, path)
        self._phase = _Phase.ASSIGNING
        return self._pending

    # -- endings

    def _fail(self, error: Exception) -> Failed:
        self._result = Failed(error, tuple(self.attempts))
        self._phase = _Phase.DONE
        return self._result

    def _no_eligible(self, ranking: Ranking) -> Exception:
        """Every bid failed a filter: BudgetExceeded when the budget is what stopped all of
        them (with the figures), else NoEligibleBid naming each bid and why."""
        rejected = ranking.rejected
        if rejected and all(r.filter == "budget" for r in rejected):
            return BudgetExceeded(
                needed_micros=min(r.candidate.price_micros for r in rejected),
                remaining_micros=self.terms.budget_remaining_micros or 0,
                currency=self.terms.currency,
            )
        return NoEligibleBid(self.job_cid, [r.describe() for r in rejected])

    def _finish(self) -> Failed:
        if not self.attempts and not self.bids:
            declines = self.decline_reasons()
            if declines and not any(
                nb.reason in TRANSIENT_NO_BID for nb in self.declines.values()
            ):
                return self._fail(BidsDeclined(self.job_cid, self.capability, declines))
            if self.peers:
                return self._fail(
                    NoCapacity(
                        self.job_cid,
                        self.capability,
                        [p.describe_load() for p in self.peers],
                        self.now_ms - self.started_ms,
                        declines,
                    )
                )
            if self.quote_ranking is not None and not self.quote_ranking.eligible and (
                self.quote_ranking.rejected
            ):
                return self._fail(self._no_eligible(self.quote_ranking))
            return self._fail(
                NoBids(self.job_cid, self.capability, self.limits.max_bid_window_ms)
            )
        if not self.attempts and self.ranking is not None:
            return self._fail(self._no_eligible(self.ranking))
        return self._fail(ExecutorsExhausted(self.job_cid, self.attempts))

