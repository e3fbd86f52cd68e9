"""The executor side of a node: hears announcements, bids, accepts assignments,
executes, and publishes signed, hash-chained receipts.

Resource handling: :meth:`Executor.serve` subscribes on the given NATS
connection (which it does not own) and runs jobs in its own task group; when
cancelled it unsubscribes, and running jobs are cancelled with the group.
Use :meth:`Executor.drain` first for a graceful stop.

Error handling: every inbound message is validated at the boundary; anything
malformed, forged, stale or replayed is dropped and counted in
``crankmesh_rejections_total{kind, reason}``; a failing handler is logged and
counted and never stops a subscription.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from .._tasks import TaskSet
from ..capabilities import CapabilityOffer, CapabilitySpecError, MatchResult, Requirements
from ..capabilities import match as match_requirements
from ..market import BudgetLedger, resource_price
from ..observability import Metrics, default_trace, trace_headers, trace_of
from ..protocol import subjects
from ..protocol.cid import cid_for_blob, cid_for_document, verify_blob
from ..protocol.encoding import canonical_encode
from ..protocol.envelope import Envelope, ReplayGuard, check_fresh
from ..protocol.errors import BudgetExceeded, ProtocolError, TokenInvalid
from ..protocol.fencing import HANDED_BACK, Presence, fence_reason
from ..protocol.identity import Identity, did_node_id, open_sealed, seal
from ..protocol.messages import (
    Accept,
    Announce,
    Assignment,
    Bid,
    BidSlo,
    Close,
    JobSpec,
    Load,
    Metering,
    NoBid,
    QuoteTerms,
    Receipt,
    ReceiptDelivery,
    Reject,
    decode_message,
    job_cid_of_canonical,
)
from ..protocol.tokens import decode_chain, verify_chain
from ..receipts.chain import ChainHead
from ..transport import unsubscribe_quietly
from .benchmark import SelfBenchmark
from .caps import CapsLedger, CapsViolation, ExecutorCaps
from .handlers import MAX_PAYLOAD_BYTES, CapabilityHandler, Outcome
from .load_quote import quote_at_load
from .quotes import (
    DEFAULT_QUOTE_VALID_MS,
    QuoteBook,
    SignedQuote,
    check_quote_assignment,
    load_band,
)
from .results import ResultCache

__all__ = ["Executor", "ExecutorConfig"]

log = logging.getLogger("crankmesh.executor")

MAX_ANNOUNCE_BYTES = 256 * 1024
_GPU_ACCELERATORS = frozenset({"gpu", "cuda", "rocm", "mps"})
#: Room a receipt delivery needs beyond the result: signed receipt, sealed-box
#: overhead, msgpack framing.
_DELIVERY_OVERHEAD = 4096
MAX_ASSIGNMENT_BYTES = 8 * 1024 * 1024
#: Handler decline tokens that have a standard NoBid reason (RFC 0001 §8.13); the
#: others go on the wire as they are.
_HANDLER_NO_BID = {"unsupported_env_profile": "unsupported_profile"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, kw_only=True)
class ExecutorConfig:
    """How an executor bids and how much it takes on."""

    prices: Mapping[str, int] = field(default_factory=dict)  # capability -> µ-units per job
    default_price: int = 1_000
    currency: str = "USD"
    max_concurrency: int = 2
    queue_depth: int = 8
    bid_valid_ms: int = 10_000
    announce_max_age_ms: int = 30_000
    max_skew_ms: int = 5_000
    idempotency_window_ms: int = 3_600_000
    idempotency_capacity: int = 100_000
    isolation: str = "none"
    #: Per-originator token bucket on bids: sustained rate (bids/s) and burst.
    originator_rate: float = 200.0
    originator_burst: int = 400
    #: Which budget-token issuers this executor accepts money from (None = any issuer).
    trusted_budget_roots: Callable[[str], bool] | None = None
    #: The operator's per-job and total caps (see :mod:`crankmesh.executor.caps`).
    caps: ExecutorCaps = field(default_factory=ExecutorCaps)
    #: Micro-units added per GiB-second a job reserves (memory x timeout); 0 = flat price.
    price_per_gib_s: int = 0
    #: How long a firm quote stands (RFC 0001 §8.14, seed 000's ``valid_for``).
    quote_valid_ms: int = DEFAULT_QUOTE_VALID_MS
    #: Bounds of the deliveries kept for re-delivery (§10.4): bytes in memory, and bytes
    #: on disk in the node's state dir (none without one); the oldest go first.
    result_memory_bytes: int = 2 << 20
    result_disk_bytes: int = 1 << 30

    def price_for(self, capability: str) -> int:
        return self.prices.get(capability, self.default_price)

    def price_of(self, job: JobSpec) -> int:
        """What one job costs here: the capability's price, scaled with the resources
        the job reserves when ``price_per_gib_s`` is set (:func:`market.resource_price`)."""
        base = self.price_for(job.capability)
        if not self.price_per_gib_s:
            return base
        limits = self.caps.effective(job.constraints)
        return resource_price(
            base,
            memory_mb=limits.memory_mb,
            timeout_ms=limits.timeout_ms,
            per_gib_s=self.price_per_gib_s,
        )

    def quote_offer(
        self, capability: str, env_profiles: Sequence[str] = ()
    ) -> tuple[int, QuoteTerms]:
        """The price and terms of a firm quote for ``capability`` (RFC 0001 §8.14).

        Flat pricing: the capability's price for any job within the caps.  With a
        resource price (``price_per_gib_s``) the quote covers jobs up to the default
        memory and the default timeout (10 s, or the cap when lower), priced for the
        largest of them; a bigger job goes to a call for bids."""
        caps = self.caps
        profiles = sorted(env_profiles) if env_profiles else None
        if not self.price_per_gib_s:
            timeout_ms, memory_mb = caps.max_timeout_ms, caps.max_memory_mb
            price = self.price_for(capability)
        else:
            timeout_ms = min(caps.max_timeout_ms, _QUOTE_TIMEOUT_MS)
            memory_mb = caps.default_memory_mb
            price = resource_price(
                self.price_for(capability),
                memory_mb=memory_mb,
                timeout_ms=timeout_ms,
                per_gib_s=self.price_per_gib_s,
            )
        terms = QuoteTerms.build(
            max_timeout_ms=timeout_ms,
            max_memory_mb=memory_mb,
            max_output_bytes=caps.max_output_bytes,
            max_payload_bytes=MAX_PAYLOAD_BYTES,
            env_profiles=profiles,
        )
        return price, terms


#: The largest timeout a resource-priced quote covers (the JobSpec's default timeout).
_QUOTE_TIMEOUT_MS = 10_000


@dataclass(slots=True)
class _BidRecord:
    job_cid: str
    job: JobSpec
    exp: int
    bid_raw: bytes = b""
    reserved: bool = True
    trace: str = ""
    _bid_cid: str = ""
    #: The price agreed: a quote's (on the quote path); -1 = the config's price_of(job).
    price: int = -1

    @property
    def bid_cid(self) -> str:
        """The bid's CID, computed on first use: only a bid that wins needs it."""
        if not self._bid_cid:
            self._bid_cid = cid_for_document(self.bid_raw)
        return self._bid_cid


@dataclass(slots=True)
class _JobRecord:
    """Idempotency record: one per job this executor accepted."""

    job_cid: str
    #: The signed Accept; empty while the job's answer is to be its receipt (below).
    accept_raw: bytes
    #: The ReceiptDelivery was made (its bytes live in the executor's ResultCache).
    delivered: bool = False
    #: Answered (delivered or handed back): the record may be forgotten when full.
    finished: bool = False
    #: Where the ReceiptDelivery goes as the answer to the Assignment (RFC 0001 §8.6),
    #: for a quick job that started at once; empty: published on the receipt subject.
    answer_to: str = ""
    #: At most once (RFC 0001 §10.7): the assignment's deadline, the presence epoch it
    #: was accepted in, why it was fenced, and the signed hand-back Reject sent instead.
    deadline: int = 0
    epoch: int = 0
    fenced: str = ""
    handed_back: bytes | None = None
    scope: anyio.CancelScope | None = None


class Executor:
    """Bids for and executes jobs for the capabilities it has handlers for."""

    def __init__(
        self,
        *,
        identity: Identity,
        federation: str,
        handlers: Sequence[CapabilityHandler],
        config: ExecutorConfig | None = None,
        metrics: Metrics | None = None,
        chain: ChainHead | None = None,
        offer: CapabilityOffer | None = None,
        bench: SelfBenchmark | None = None,
        trusted: Callable[[str], bool] | None = None,
        results: ResultCache | None = None,
    ) -> None:
        self.identity = identity
        self.federation = subjects.check_federation(federation)
        self.handlers: dict[str, CapabilityHandler] = {h.name: h for h in handlers}
        self.config = config or ExecutorConfig()
        self.metrics = metrics or Metrics()
        self.chain = chain or ChainHead()
        self.offer = offer or CapabilityOffer()
        self._trusted = trusted
        self._match_cache: dict[bytes, tuple[CapabilityOffer, MatchResult]] = {}
        self._buckets = _TokenBuckets(self.config.originator_rate, self.config.originator_burst)
        #: Bounds the NoBids signed for one (verified) originator: no amplification. As
        #: many as bids, but at least 1/s (burst 8): a node that refuses an originator
        #: altogether (rate or burst 0) still says so.
        self._nobid_buckets = _TokenBuckets(
            max(self.config.originator_rate, 1.0), max(self.config.originator_burst, 8)
        )
        #: Persists bids and receipts in JetStream (set by the node); None = plain publish.
        self.record_store: Any = None
        #: What this executor has booked against each budget token it was paid with.
        self.budgets = BudgetLedger()
        #: High-water marks, to prove the executor never holds more than it advertised.
        self.peak_running = 0
        self.peak_outstanding = 0
        #: Self-measured performance per capability (calibrated at start by the node,
        #: then updated from every real execution): what bids and adverts promise.
        self.bench = bench or SelfBenchmark(slots=self.config.max_concurrency)
        self._slo_cache: dict[str, tuple[float, BidSlo]] = {}
        self._bids: dict[str, _BidRecord] = {}  # job_cid -> this executor's live bid
        self._bid_expiry: list[tuple[int, str]] = []  # (exp, job_cid)
        self._reserved = 0
        #: Live reservations per (verified) originator, for the fair share (_over_share).
        self._reserved_by: dict[str, int] = {}
        self._running = 0
        self._queued = 0
        self._jobs: OrderedDict[str, tuple[int, _JobRecord]] = OrderedDict()
        self._announce_replay = ReplayGuard(capacity=100_000)
        # fast_acquire: a free slot is taken without a trip through the event loop.
        self._exec_slots = anyio.Semaphore(self.config.max_concurrency, fast_acquire=True)
        self._nc: Any = None
        self._jobs_running = TaskSet()  # one task per accepted job (see _tasks.py)
        # Gauges read at scrape time: no metric call on the per-job path.
        self.metrics.reserved.set_function(lambda: self._reserved)
        self.metrics.running.set_function(lambda: self._running)
        self._draining = False
        self._idle = anyio.Event()
        self._idle.set()
        #: Limits of the jobs admitted and not finished (the caps' totals).
        self.caps_ledger = CapsLedger()
        #: This executor's advertised presence (fed by the node's adverts), and the jobs
        #: accepted and not yet answered: what a lapse or a drain hands back.
        self.presence = Presence()
        self._live: dict[str, _JobRecord] = {}
        #: Firm quotes signed for the adverts (RFC 0001 §8.14), remembered by CID.
        self.quotes = QuoteBook(identity, valid_ms=self.config.quote_valid_ms)
        #: Deliveries kept for idempotent re-delivery (§10.4), bounded by bytes.
        self.results = (
            results
            if results is not None
            else ResultCache(memory_bytes=self.config.result_memory_bytes, disk_bytes=0)
        )

    # ------------------------------------------------------------------ state

    @property
    def capacity(self) -> int:
        return self.config.max_concurrency + self.config.queue_depth

    @property
    def load(self) -> Load:
        return Load.build(  # own non-negative ints: no validation needed
            running=self._running,
            queued=self._queued + self._reserved,
            capacity=self.config.max_concurrency,
        )

    @property
    def outstanding(self) -> int:
        """Jobs running + queued + capacity reserved by live bids."""
        return self._running + self._queued + self._reserved

    def slo_for(self, capability: str) -> BidSlo:
        """Promised performance for ``capability``: p50/p95/p99 of the service time
        (assignment received → result ready, queueing included), throughput, accuracy.

        Recomputed at most every 100 ms (quantiles of the streaming sketch cost
        ~0.1 ms; bids are hot)."""
        now = time.monotonic()
        hit = self._slo_cache.get(capability)
        if hit is not None and now - hit[0] < 0.1:
            return hit[1]
        slo = self.bench.slo_for(capability)
        self._slo_cache[capability] = (now, slo)
        return slo

    def price_of(self, rec: _BidRecord) -> int:
        """What the job of ``rec`` is charged: the quoted price, or the bid's."""
        return rec.price if rec.price >= 0 else self.config.price_of(rec.job)

    def load_band(self) -> int:
        """The load band the quotes stand for (:func:`quotes.load_band`)."""
        return load_band(self.load, self.capacity)

    def quote_for(self, capability: str, now: int | None = None) -> SignedQuote | None:
        """This executor's current firm quote for ``capability`` (signed anew when price,
        load band, draining or hardware changed, or it is about to expire); ``None``
        while draining or for a capability it has no handler for."""
        if capability not in self.handlers:
            return None
        profiles = self.offer.env_profiles if capability == "python.run" else ()
        price, terms = self.config.quote_offer(capability, profiles)
        return self.quotes.quote(
            capability,
            now=now_ms() if now is None else now,
            price=price,
            currency=self.config.currency,
            # What it promises at the load quoted (the load-sensitivity profile).
            slo=lambda: self.quote_at_load(capability, self.slo_for(capability)),
            load=self.load,
            band=self.load_band(),
            isolation=self.config.isolation,
            terms=terms,
            draining=self._draining,
            hardware=self.offer,
        )

    def quote_at_load(self, capability: str, slo: BidSlo) -> BidSlo:
        """``slo`` as a promise for one more job now: scaled by the load-sensitivity
        profile and with the wait behind the jobs running and queued (see
        :mod:`.load_quote`)."""
        prof = self.bench.profiles.get(capability)
        return quote_at_load(
            slo,
            running=self._running,
            queued=self._queued,
            slots=self.config.max_concurrency,
            load_p50=prof.load_sensitivity if prof is not None else None,
        )

    def _match(self, requirements_wire: dict[str, Any]) -> MatchResult:
        """Match a job's requirements against this executor's offer (cached per shape)."""
        key = canonical_encode(requirements_wire)
        hit = self._match_cache.get(key)
        if hit is not None and hit[0] is self.offer:
            return hit[1]
        result = match_requirements(Requirements.from_wire(requirements_wire), self.offer)
        if len(self._match_cache) > 1024:
            self._match_cache.clear()
        self._match_cache[key] = (self.offer, result)
        return result

    def over_caps(self, job: JobSpec) -> CapsViolation | None:
        """Which of the operator's caps ``job`` exceeds (per job, or in total with the
        jobs admitted now); ``None`` when it may run."""
        caps = self.config.caps
        over = caps.check(job.constraints)
        if over is None:
            over = caps.check_total(self.caps_ledger, caps.effective(job.constraints))
        return over

    def _check_budget(self, rec: _BidRecord, asg: Assignment, now: int) -> tuple[str, str] | None:
        """Verify the budget chain an assignment carries (RFC 0001 §8.12) and book
        the bid's price against it; a ``(reason, detail)`` rejection otherwise."""
        job = rec.job
        if asg.budget_chain is None or job.budget is None:
            return "budget_invalid", "job names a budget token but no chain came (or vice versa)"
        try:
            grant = verify_chain(
                decode_chain(asg.budget_chain),
                now_ms=now,
                capability=job.capability,
                holder=job.originator,
                trusted_roots=self.config.trusted_budget_roots,
            )
        except (TokenInvalid, ProtocolError) as exc:
            return "budget_invalid", str(exc)[:500]
        if grant.leaf_cid != job.budget:
            return "budget_invalid", "chain leaf is not the job's budget token"
        if grant.currency != self.config.currency:
            return "budget_invalid", f"token currency {grant.currency} != {self.config.currency}"
        price = self.price_of(rec)
        try:
            self.budgets.release_if_reserved(rec.job_cid)
            self.budgets.reserve(grant, rec.job_cid, price)
        except BudgetExceeded as exc:
            return "budget_exceeded", str(exc)
        return None

    def update_offer(self, offer: CapabilityOffer) -> None:
        """New hardware facts (e.g. a GPU vanished or is busy): future bids use them."""
        self.offer = offer

    def _expire_bids(self, now: int) -> None:
        heap = self._bid_expiry
        while heap and heap[0][0] < now:
            exp, job_cid = heapq.heappop(heap)
            rec = self._bids.get(job_cid)
            if rec is not None and rec.exp == exp:
                del self._bids[job_cid]
                self._release(rec)

    def _release(self, rec: _BidRecord) -> None:
        if rec.reserved:
            rec.reserved = False
            self._reserved -= 1
            by, who = self._reserved_by, rec.job.originator
            left = by.get(who, 0) - 1
            if left > 0:
                by[who] = left
            else:
                by.pop(who, None)

    def _over_share(self, originator: str) -> str | None:
        """The fair share of reservations among verified originators: once the executor
        is half full, an originator already holding ``capacity // (k + 1)`` reservations
        (k = originators holding any, counting it) gets no more, so that room is left
        for others; a detail line for the NoBid, or None."""
        held = self._reserved_by.get(originator, 0)
        if not held or self.outstanding * 2 < self.capacity:
            return None
        holders = len(self._reserved_by)
        share = max(1, self.capacity // (holders + 1))
        if held < share:
            return None
        return (
            f"fair share: this originator holds {held} of {self.capacity} slots in bids "
            f"(share {share} among {holders} originator(s) and newcomers)"
        )

    def _remember_job(self, rec: _JobRecord, now: int) -> None:
        jobs = self._jobs
        jobs[rec.job_cid] = (now + self.config.idempotency_window_ms, rec)
        while jobs:
            exp, oldest = next(iter(jobs.values()))
            if exp < now or len(jobs) > self.config.idempotency_capacity:
                if not oldest.finished and len(jobs) <= self.config.idempotency_capacity:
                    break
                jobs.popitem(last=False)
                self.results.discard(oldest.job_cid)
            else:
                break

    # ------------------------------------------------------------------ serve

    async def serve(
        self, nc: Any, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscribe and serve until cancelled (see module docstring)."""
        self._nc = nc
        subs = []
        self._jobs_running = TaskSet()
        try:
            for capability in self.handlers:
                subs.append(
                    await nc.subscribe(
                        subjects.announce(self.federation, capability),
                        cb=self._guard("announce", self._on_announce),
                    )
                )
            # Calls for bids sampled to this executor (RFC 0001 §10.8): same handling.
            subs.append(
                await nc.subscribe(
                    subjects.node_announce(self.federation, self.identity.did),
                    cb=self._guard("announce", self._on_announce),
                )
            )
            subs.append(
                await nc.subscribe(
                    subjects.assignments_for(self.federation, self.identity.did),
                    cb=self._guard("assignment", self._on_assignment),
                )
            )
            subs.append(
                await nc.subscribe(
                    subjects.closed_all(self.federation),
                    cb=self._guard("closed", self._on_close),
                )
            )
            await nc.flush()
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await unsubscribe_quietly(*subs)
                await self._jobs_running.aclose()

    def _guard(self, kind: str, handler: Any) -> Any:
        async def cb(msg: Any) -> None:
            try:
                await handler(msg)
            except ProtocolError as exc:
                self.metrics.reject(kind, exc.reason)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("dropped %s on %s: %s", kind, msg.subject, exc)
            except Exception:
                self.metrics.reject(kind, "handler_error")
                log.exception("handler for %s failed on %s", kind, msg.subject)

        return cb

    async def drain(self, grace_s: float = 30.0) -> None:
        """Stop bidding and wait (up to ``grace_s``) for accepted jobs to finish; hand
        back those still running then (RFC 0001 §10.7): their sandboxes are killed and
        each originator gets a signed ``handed_back`` Reject instead of a receipt."""
        self._draining = True
        with anyio.move_on_after(grace_s):
            await self._idle.wait()
        if self._live:
            self.fence_all(f"drained: drain grace of {grace_s:g} s expired")
            with anyio.move_on_after(10):
                await self._idle.wait()

    def note_advert(self, ts: int, exp: int) -> None:
        """The node published an Advert living until ``exp``: after a lapse (a pause
        longer than the TTL), every job accepted before it is fenced at once."""
        if self.presence.advertised(ts, exp) and self._live:
            self.fence_all("presence: this executor's adverts lapsed (it was paused or cut off)")

    def fence_all(self, reason: str) -> None:
        """Fence every accepted job not yet answered: it is cancelled (its sandbox
        killed) and handed back with ``reason`` instead of delivered."""
        for job_rec in list(self._live.values()):
            if not job_rec.fenced:
                job_rec.fenced = reason
            if job_rec.scope is not None:
                job_rec.scope.cancel()

    def _fence_check(self, job_rec: _JobRecord) -> str:
        """Why ``job_rec`` must not start or be delivered now ('' when it may)."""
        if not job_rec.fenced:
            job_rec.fenced = (
                fence_reason(
                    now_ms=now_ms(),
                    deadline_ms=job_rec.deadline,
                    presence=self.presence,
                    accepted_epoch=job_rec.epoch,
                )
                or ""
            )
        return job_rec.fenced

    # ------------------------------------------------------------------ announce

    async def _on_announce(self, msg: Any) -> None:
        env, ann = decode_message(msg.data, Announce, max_len=MAX_ANNOUNCE_BYTES)
        now = now_ms()
        check_fresh(
            env,
            now,
            max_age_ms=self.config.announce_max_age_ms,
            max_skew_ms=self.config.max_skew_ms,
        )
        if ann.signer != ann.job.originator:
            raise _Reject("not_originator")
        if env.signature in self._announce_replay:
            raise _Reject("replay")
        # RFC 0001 §6.3/§10.2: verify BEFORE anything costs capacity or counts toward a
        # limit; a forged announce is dropped here (counted as bad_signature) and
        # answered with nothing -- a NoBid to it would be an amplification vector.
        env.verify()
        if self._trusted is not None and not self._trusted(ann.signer):
            self.metrics.reject("announce", "untrusted")
            await self._decline(msg, ann, "untrusted", "this executor serves a trust list")
            return
        if ann.closed:
            # Earlier jobs of this originator whose bidding is over (RFC 0001 §8.3): the
            # Close notices riding on this Announce. Only a reservation for one of the
            # signer's own jobs is released, exactly as a standalone Close would (§8.7).
            bids = self._bids
            for closed_cid in ann.closed:
                rec = bids.get(closed_cid)
                if rec is not None and rec.reserved and rec.job.originator == ann.signer:
                    self._release(rec)
        job_cid = job_cid_of_canonical(env.body["job"])
        # Key on the signature: unique per (key, body), and free (no hashing).
        self._announce_replay.remember(env.signature, ann.exp + 60_000, now)
        capability = ann.job.capability
        self.metrics.announces_seen.labels(capability=capability).inc()
        if self._draining:
            await self._decline(msg, ann, "draining", "executor is shutting down", job_cid=job_cid)
            return
        handler = self.handlers.get(capability)
        if handler is None:
            self.metrics.bids_declined.labels(reason="no_handler").inc()
            return
        self._expire_bids(now)
        if job_cid in self._jobs:
            await self._decline(
                msg, ann, "duplicate", "this executor already accepted the job", job_cid=job_cid
            )
            return
        live_bid = self._bids.get(job_cid)
        if live_bid is not None:
            # A re-announce (the originator lost our bid, or runs a new round): send the
            # same signed bid again -- it is still valid and still holds our reservation.
            await self._nc.publish(
                subjects.bids(self.federation, job_cid),
                live_bid.bid_raw,
                headers=trace_headers(live_bid.trace, job_cid),
            )
            self.metrics.bids_declined.labels(reason="rebid").inc()
            return
        reason = handler.check(ann.job)
        if reason is not None:
            await self._decline(
                msg,
                ann,
                _HANDLER_NO_BID.get(reason, reason),
                _handler_detail(capability, reason, ann.job),
                job_cid=job_cid,
                counted_as=reason,
            )
            return
        over = self.over_caps(ann.job)
        if over is not None:
            # The no-bid reason "over_caps" with its detail (which cap, asked vs allowed).
            if log.isEnabledFor(logging.DEBUG):  # counted; a flood must not flood the log
                log.debug("not bidding on job %s: %s", job_cid, over)
            await self._decline(msg, ann, over.reason, over.detail, job_cid=job_cid)
            return
        match_outcome: str = "compatible"
        warnings: tuple[str, ...] = ()
        if ann.job.requirements:
            try:
                result = self._match(env.body["job"]["requirements"])
            except CapabilitySpecError as exc:
                await self._decline(
                    msg,
                    ann,
                    "requirements",
                    str(exc),
                    job_cid=job_cid,
                    counted_as="bad_requirements",
                )
                return
            if not result.ok:
                await self._decline(
                    msg,
                    ann,
                    "requirements",
                    result.explain(),
                    job_cid=job_cid,
                    counted_as="incompatible",
                )
                return
            match_outcome, warnings = result.outcome.value, result.warnings
        price = self.config.price_of(ann.job)
        if ann.job.max_price is not None and price > ann.job.max_price:
            await self._decline(
                msg,
                ann,
                "over_price",
                f"price {price} > max_price {ann.job.max_price}",
                job_cid=job_cid,
                counted_as="over_max_price",
            )
            return
        if ann.job.currency != self.config.currency:
            await self._decline(
                msg, ann, "currency", f"prices in {self.config.currency}", job_cid=job_cid
            )
            return
        self._expire_bids(now)
        if self.outstanding >= self.capacity:
            await self._decline(
                msg,
                ann,
                "full",
                f"running {self._running} + queued {self._queued} + reserved {self._reserved} "
                f"of capacity {self.capacity}",
                job_cid=job_cid,
                counted_as="no_capacity",
            )
            return
        unfair = self._over_share(ann.signer)
        if unfair is not None:
            await self._decline(msg, ann, "full", unfair, job_cid=job_cid, counted_as="fair_share")
            return
        if not self._buckets.take(ann.signer, now):
            await self._decline(
                msg,
                ann,
                "rate_limited",
                f"over {self.config.originator_rate:g} announces/s (burst "
                f"{self.config.originator_burst}) from this originator",
                job_cid=job_cid,
            )
            return
        slo = self.slo_for(capability)
        queue_wait = (
            (slo.p50_us or 0)
            * (self._queued + self._running)
            // max(self.config.max_concurrency, 1)
        )
        bid = Bid.build(
            signer=self.identity.did,
            ts=now,
            exp=now + self.config.bid_valid_ms,
            job=job_cid,
            nonce=os.urandom(16),
            price=price,
            currency=self.config.currency,
            slo=self.quote_at_load(capability, slo),
            load=self.load,
            est_us=(slo.p50_us or 0) + queue_wait if slo.p50_us else None,
            isolation=self.config.isolation,
            match=match_outcome,
            warnings=list(warnings),
        )
        bid_env = bid.sign(self.identity)
        trace = trace_of(msg) or default_trace(job_cid)
        rec = _BidRecord(job_cid, ann.job, bid.exp, bid_env.raw, trace=trace)
        self._bids[job_cid] = rec
        heapq.heappush(self._bid_expiry, (rec.exp, job_cid))
        self._reserved += 1
        self._reserved_by[ann.signer] = self._reserved_by.get(ann.signer, 0) + 1
        self.peak_outstanding = max(self.peak_outstanding, self.outstanding)
        await self._nc.publish(
            subjects.bids(self.federation, job_cid),
            bid_env.raw,
            headers=trace_headers(trace, job_cid),
        )
        self.metrics.job_bids.labels(capability=capability).inc()

    async def _decline(
        self,
        msg: Any,
        announce: Announce,
        reason: str,
        detail: str = "",
        *,
        job_cid: str | None = None,
        counted_as: str | None = None,
    ) -> None:
        """Say no to a VERIFIED announce: count it in ``bids_declined{reason}``
        (``counted_as`` or ``reason``) and publish a signed NoBid (RFC 0001 §8.13) on the
        job's bids subject, so the originator's window closes early and its error names
        ``reason``.  Only for an announce whose signature verified (a NoBid to a forged one
        would amplify it); at most ``max(originator_rate, 1)``/s no-bids per originator
        (burst ``max(originator_burst, 8)``; all signers off the trust list share one such
        bound), the rest are counted in ``rejections_total{kind="nobid", reason="suppressed"}``.

        ``reason`` is a wire token (see ``NO_BID_REASONS``); ``detail`` is cut to 1024."""
        self.metrics.bids_declined.labels(reason=counted_as or reason).inc()
        now = now_ms()
        # Signers off the trust list share one bound: fresh keys buy no more NoBids.
        trusted = self._trusted is None or self._trusted(announce.signer)
        if not self._nobid_buckets.take(announce.signer if trusted else "", now):
            self.metrics.reject("nobid", "suppressed")
            return
        if job_cid is None:
            job_cid = job_cid_of_canonical(announce.job.to_wire())
        nobid = NoBid.build(
            signer=self.identity.did,
            ts=now,
            job=job_cid,
            reason=reason,
            detail=detail[:1024],
        ).sign(self.identity)
        await self._nc.publish(
            subjects.bids(self.federation, job_cid),
            nobid.raw,
            headers=trace_headers(trace_of(msg) or default_trace(job_cid), job_cid),
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("no bid on %s: %s %s", job_cid, reason, detail)

    async def _on_close(self, msg: Any) -> None:
        # Every executor hears every Close: validate it (garbage is counted), then
        # ignore it unless it releases a reservation this executor holds.
        _, close = decode_message(msg.data, Close, max_len=4096)
        info = subjects.parse_subject(msg.subject)
        if info.job_cid != close.job:
            raise _Reject("subject_mismatch")
        rec = self._bids.get(close.job)
        if rec is None or not rec.reserved:
            return  # not a job we hold capacity for (or we won it)
        if close.signer != rec.job.originator:
            raise _Reject("not_originator")
        # Not signature-checked on purpose (RFC 0001 §8.7): a Close can only release
        # a soft reservation, and an assignment is still accepted only with capacity
        # free, so a forged Close cannot make this executor exceed its limits.
        if close.winner != self.identity.did:
            self._release(rec)

    # ------------------------------------------------------------------ assignment

    async def _reply(self, msg: Any, data: bytes) -> None:
        if msg.reply:
            await self._nc.publish(msg.reply, data)

    async def _reject(
        self, msg: Any, assignment: Assignment, asg_cid: str, reason: str, detail: str = ""
    ) -> None:
        self.metrics.assignments.labels(outcome=reason).inc()
        rej = Reject(
            signer=self.identity.did,
            ts=now_ms(),
            job=assignment.job,
            assignment=asg_cid,
            attempt=assignment.attempt,
            reason=reason,
            detail=detail,
        ).sign(self.identity)
        await self._reply(msg, rej.raw)
        log.info(
            "rejected an assignment",
            extra={
                "job_cid": assignment.job,
                "peer": assignment.signer,
                "reason": reason,
                "detail": detail,
            },
        )

    async def _on_assignment(self, msg: Any) -> None:
        arrived = time.perf_counter_ns()
        env, asg = decode_message(msg.data, Assignment, max_len=MAX_ASSIGNMENT_BYTES)
        now = now_ms()
        info = subjects.parse_subject(msg.subject)
        if info.node_id != did_node_id(self.identity.did):
            raise _Reject("not_for_us")
        if self._trusted is not None and not self._trusted(asg.signer):
            raise _Reject("untrusted")
        env.verify()
        if asg.executor != self.identity.did or info.job_cid != asg.job:
            # Signed and trusted, but misaddressed: say so at once (RFC 0001 §11) rather
            # than let the sender wait out its accept timeout.  Verified first, so a
            # forged assignment gets no signed answer.
            reason = "not_addressed" if asg.executor != self.identity.did else "subject_mismatch"
            self.metrics.reject("assignment", reason)
            detail = (
                f"assignment names executor {asg.executor}, this is {self.identity.did}"
                if reason == "not_addressed"
                else f"assignment for job {asg.job} came on the subject of job {info.job_cid}"
            )
            await self._reject(msg, asg, env.cid, reason, detail)
            return
        # Idempotency first: a repeated assignment for a job we accepted never runs twice.
        known = self._jobs.get(asg.job)
        if known is not None:
            job_rec = known[1]
            self.metrics.assignments.labels(outcome="duplicate").inc()
            if job_rec.handed_back is not None:  # fenced: the answer is the hand-back
                if msg.reply:
                    await self._reply(msg, job_rec.handed_back)
                else:  # a re-send after the deadline waits on the receipt subject
                    await self._nc.publish(
                        subjects.receipt_delivery(self.federation, asg.job), job_rec.handed_back
                    )
                return
            if not job_rec.accept_raw:  # a quick job: its answer is (or was) the receipt
                job_rec.accept_raw = self._accept(asg, env.cid, now).raw
                # The first request may have timed out: a receipt still to come goes
                # to the receipt subject, where the originator now waits for it.
                job_rec.answer_to = ""
            await self._reply(msg, job_rec.accept_raw)
            if job_rec.delivered:
                delivery = self.results.get(asg.job)
                if delivery is None:  # both bounds of the result cache were full
                    self.metrics.reject("assignment", "result_forgotten")
                    log.warning("job %s: its delivery is no longer kept to re-send", asg.job)
                    return
                await self._nc.publish(
                    subjects.receipt_delivery(self.federation, asg.job), delivery
                )
            return
        if asg.quote is not None:  # an assignment on a firm quote (RFC 0001 §8.14)
            rec = await self._admit_on_quote(msg, env, asg, now)
            if rec is None:
                return
        else:
            rec = self._bids.get(asg.job)
        if rec is None or rec.bid_cid != asg.offer:
            await self._reject(
                msg, asg, env.cid, "unknown_bid", "this executor made no such bid for this job"
            )
            return
        if asg.signer != rec.job.originator:
            await self._reject(
                msg, asg, env.cid, "not_originator", "assignment not signed by the job's originator"
            )
            return
        over = self.over_caps(rec.job)  # defence in depth: caps or totals may have moved
        if over is not None:
            await self._reject(msg, asg, env.cid, over.reason, over.detail)
            return

        try:
            check_fresh(
                env, now, max_age_ms=self.config.bid_valid_ms, max_skew_ms=self.config.max_skew_ms
            )
        except ProtocolError as exc:
            await self._reject(msg, asg, env.cid, "stale", str(exc))
            return
        if now > rec.exp:
            await self._reject(msg, asg, env.cid, "bid_expired", f"bid {rec.bid_cid} expired")
            return
        if not rec.reserved and self.outstanding >= self.capacity:
            await self._reject(
                msg, asg, env.cid, "no_capacity", f"queue full ({self.outstanding}/{self.capacity})"
            )
            return
        if self._draining:
            await self._reject(msg, asg, env.cid, "draining", "executor is shutting down")
            return
        if rec.job.budget is not None or asg.budget_chain is not None:
            problem = self._check_budget(rec, asg, now)
            if problem is not None:
                await self._reject(msg, asg, env.cid, *problem)
                return
        try:
            payload = open_sealed(asg.payload, self.identity, sender_did=asg.signer)
            if len(payload) != rec.job.payload_size:
                raise ProtocolError("payload size differs from the job's payload_size")
            verify_blob(payload, rec.job.payload)
        except ProtocolError as exc:
            await self._reject(msg, asg, env.cid, "payload_mismatch", str(exc))
            return
        # A quick capability (microseconds, in process) with a slot free right now
        # answers with its receipt: no Accept to sign, send and verify (§8.6).
        quick = (
            bool(msg.reply)
            and getattr(self.handlers[rec.job.capability], "quick", False)
            and self._queued == 0
            and self._running < self.config.max_concurrency
        )
        # Consume the bid: its reservation turns into a queued job.
        if self._bids.get(rec.job_cid) is rec:
            del self._bids[rec.job_cid]
        self._release(rec)
        self._queued += 1
        self.peak_outstanding = max(self.peak_outstanding, self.outstanding)
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self.metrics.assignments.labels(outcome="accepted").inc()
        self.caps_ledger.admit(asg.job, self.config.caps.effective(rec.job.constraints))
        if quick:
            job_rec = _JobRecord(asg.job, b"", answer_to=msg.reply)
        else:
            accept = self._accept(asg, env.cid, now)
            job_rec = _JobRecord(asg.job, accept.raw)
        job_rec.deadline, job_rec.epoch = asg.deadline, self.presence.epoch
        self._remember_job(job_rec, now)
        self._live[asg.job] = job_rec
        if not quick:
            await self._reply(msg, job_rec.accept_raw)
        self._jobs_running.spawn(self._execute, rec, asg, env.cid, payload, job_rec, arrived)

    async def _admit_on_quote(
        self, msg: Any, env: Envelope, asg: Assignment, now: int
    ) -> _BidRecord | None:
        """The record an Assignment on a quote runs under (as a won bid would be), or
        ``None`` once it was answered with a signed Reject (RFC 0001 §8.14 steps 1-3;
        what follows -- caps, freshness, capacity, budget, payload -- is the bid path's)."""
        spec = asg.spec
        assert spec is not None and asg.quote is not None  # validated with quote
        if job_cid_of_canonical(env.body["spec"]) != asg.job:
            await self._reject(
                msg, asg, env.cid, "subject_mismatch", "job is not the CID of the spec it carries"
            )
            return None
        signed = self.quotes.get(asg.quote, now)
        problem = check_quote_assignment(
            signed,
            capability=spec.capability,
            job=spec,
            now=now,
            max_skew_ms=self.config.max_skew_ms,
        )
        if problem is None:
            handler = self.handlers[spec.capability]  # quoted, so served here
            reason = handler.check(spec)
            if reason is not None:
                problem = "terms", _handler_detail(spec.capability, reason, spec)
            elif spec.requirements:
                try:
                    result = self._match(env.body["spec"]["requirements"])
                    if not result.ok:
                        problem = "terms", f"requirements: {result.explain()}"
                except CapabilitySpecError as exc:
                    problem = "terms", f"requirements: {exc}"
        if problem is not None:
            await self._reject(msg, asg, env.cid, *problem)
            return None
        assert signed is not None
        return _BidRecord(
            asg.job,
            spec,
            signed.quote.exp + self.config.max_skew_ms,
            signed.raw,
            reserved=False,
            trace=trace_of(msg) or default_trace(asg.job),
            _bid_cid=signed.cid,
            price=signed.quote.price,
        )

    def _accept(self, asg: Assignment, asg_cid: str, now: int) -> Envelope:
        return Accept.build(
            signer=self.identity.did,
            ts=now,
            job=asg.job,
            assignment=asg_cid,
            attempt=asg.attempt,
        ).sign(self.identity)

    # ------------------------------------------------------------------ execute

    async def _execute(
        self,
        rec: _BidRecord,
        asg: Assignment,
        asg_cid: str,
        payload: bytes,
        job_rec: _JobRecord,
        arrived_ns: int,
    ) -> None:
        """Run one accepted job and publish its receipt.

        Error handling: a crashing capability becomes an ``error`` receipt; a receipt
        that cannot be published is logged and counted (the signed delivery stays in
        the idempotency record, so a repeated assignment re-publishes it). Nothing
        raised here reaches the executor's task group.
        """
        job = rec.job
        ctx = structlog.contextvars.bound_contextvars(job_cid=rec.job_cid, trace_id=rec.trace)
        ctx.__enter__()
        try:
            log.info(
                "job started",
                extra={"capability": job.capability, "attempt": asg.attempt, "peer": asg.signer},
            )
            outcome, wall_us = Outcome("killed", None, "handed back"), 0
            with anyio.CancelScope() as job_rec.scope:
                outcome, wall_us = await self._run_handler(job, payload, rec.job_cid, job_rec)
            if self._fence_check(job_rec):
                with anyio.CancelScope(shield=True):
                    await self._hand_back(rec, asg, asg_cid, job_rec)
                return
            service_us = (time.perf_counter_ns() - arrived_ns) // 1000
            self.bench.record(
                job.capability,
                service_us,
                outcome.cpu_us,
                outcome.status == "ok",
                gpu_us=wall_us if job.constraints.accelerator in _GPU_ACCELERATORS else 0,
            )
            self.metrics.execution_seconds.labels(capability=job.capability).observe(wall_us / 1e6)
            with anyio.CancelScope(shield=True):
                try:
                    await self._publish_receipt(rec, asg, asg_cid, outcome, wall_us, job_rec)
                except Exception:
                    self.metrics.reject("receipt", "publish_failed")
                    log.exception("receipt for job %s could not be published", rec.job_cid)
        finally:
            self.caps_ledger.release(rec.job_cid)
            ctx.__exit__(None, None, None)
            job_rec.scope = None
            self._live.pop(rec.job_cid, None)
            if self._running == 0 and self._queued == 0:
                self._idle.set()

    async def _hand_back(
        self, rec: _BidRecord, asg: Assignment, asg_cid: str, job_rec: _JobRecord
    ) -> None:
        """Answer a fenced job with a signed ``handed_back`` Reject, never its result
        (RFC 0001 §10.7); a repeated assignment gets the same Reject."""
        detail = job_rec.fenced
        cause = detail.split(":", 1)[0]
        job_rec.handed_back = (
            Reject(
                signer=self.identity.did,
                ts=now_ms(),
                job=rec.job_cid,
                assignment=asg_cid,
                attempt=asg.attempt,
                reason=HANDED_BACK,
                detail=detail,
            )
            .sign(self.identity)
            .raw
        )
        job_rec.finished = True
        if rec.job.budget is not None:
            self.budgets.release_if_reserved(rec.job_cid)
        self.metrics.handed_back.labels(cause=cause).inc()
        log.warning("job %s handed back, result fenced: %s", rec.job_cid, detail)
        answer_to, job_rec.answer_to = job_rec.answer_to, ""
        try:
            await self._nc.publish(
                answer_to or subjects.receipt_delivery(self.federation, rec.job_cid),
                job_rec.handed_back,
                headers=trace_headers(rec.trace, rec.job_cid),
            )
        except Exception:
            self.metrics.reject("receipt", "publish_failed")
            log.exception("hand-back of job %s could not be published", rec.job_cid)

    async def _run_handler(
        self, job: JobSpec, payload: bytes, job_cid: str, job_rec: _JobRecord
    ) -> tuple[Outcome, int]:
        handler = self.handlers[job.capability]
        dequeued = False
        try:
            async with self._exec_slots:
                self._queued -= 1
                dequeued = True
                if self._fence_check(job_rec):  # paused while queued: never started
                    return Outcome("killed", None, job_rec.fenced), 0
                log.info("job %s started (%s)", job_cid, job.capability)
                self._running += 1
                self.peak_running = max(self.peak_running, self._running)
                self.metrics.execution_start.labels(capability=job.capability).inc()
                start = time.perf_counter_ns()
                try:
                    outcome = await handler.execute(job, payload)
                except Exception as exc:
                    log.exception("capability crashed", extra={"capability": job.capability})
                    outcome = Outcome("error", None, f"{type(exc).__name__}: {exc}"[:1000])
                finally:
                    self._running -= 1
                return outcome, (time.perf_counter_ns() - start) // 1000
        finally:
            if not dequeued:
                self._queued -= 1

    async def _publish_receipt(
        self,
        rec: _BidRecord,
        asg: Assignment,
        asg_cid: str,
        outcome: Outcome,
        wall_us: int,
        job_rec: _JobRecord,
    ) -> None:
        job = rec.job
        if self._fence_check(job_rec):  # the last moment: no await from here to signing
            await self._hand_back(rec, asg, asg_cid, job_rec)
            return
        result = outcome.result
        limit = int(getattr(self._nc, "max_payload", 0) or (1 << 20))
        if result is not None and len(result) + _DELIVERY_OVERHEAD > limit:
            outcome = Outcome(
                "output_limit",
                None,
                f"result of {len(result)} bytes does not fit the NATS max_payload of {limit} "
                "bytes; lower max_output_bytes or raise the server's max_payload",
                outcome.wall_us,
                outcome.cpu_us,
                outcome.peak_rss_kb,
            )
            result = None
        # No await from next_links() to advance(): the chain moves on atomically.
        seq, prev = self.chain.next_links()
        receipt = Receipt.build(
            signer=self.identity.did,
            ts=now_ms(),
            job=rec.job_cid,
            assignment=asg_cid,
            bid=rec.bid_cid,
            originator=job.originator,
            attempt=asg.attempt,
            status=outcome.status,
            result=None if result is None else cid_for_blob(result),
            result_size=0 if result is None else len(result),
            metering=Metering(
                wall_us=outcome.wall_us or wall_us,
                cpu_us=outcome.cpu_us,
                peak_rss_kb=outcome.peak_rss_kb,
            ),
            charge=self.price_of(rec),
            currency=self.config.currency,
            seq=seq,
            prev=prev,
            budget=job.budget,
            detail=outcome.detail,
        )
        renv = receipt.sign(self.identity)
        self.chain.advance(seq, renv.cid)
        booked = self.budgets.job(rec.job_cid) if job.budget is not None else None
        if booked is not None and booked.state == "reserved":
            self.budgets.settle(rec.job_cid, receipt.charge)
        delivery = ReceiptDelivery.build(
            receipt=renv.raw,
            result=None if result is None else seal(result, job.originator, sender=self.identity),
        ).encode()
        # Audit records (RFC 0002): the winning bid, then the receipt, deduplicated by CID.
        # Queued (and journaled) before the delivery is sent, so no receipt leaves this
        # process without its record; the store publishes them later, in batches.
        store = self.record_store
        if store is not None:
            await store.submit_many(
                [
                    (
                        subjects.bid_records(self.federation, self.identity.did),
                        rec.bid_raw,
                        rec.bid_cid,
                    ),
                    (subjects.receipts(self.federation, self.identity.did), renv.raw, renv.cid),
                ]
            )
        answer_to, job_rec.answer_to = job_rec.answer_to, ""
        try:
            await self._nc.publish(
                answer_to or subjects.receipt_delivery(self.federation, rec.job_cid),
                delivery,
                headers=trace_headers(rec.trace, rec.job_cid),
            )
        finally:
            # Kept once it went out (or failed to): a spill to disk when the cache is full
            # is off the critical path; a repeat meanwhile gets the Accept (it is in flight).
            self.results.put(rec.job_cid, delivery)
            job_rec.delivered = job_rec.finished = True
        if store is None:
            await self._nc.publish(subjects.receipts(self.federation, self.identity.did), renv.raw)
        self.metrics.receipts.labels(status=outcome.status).inc()
        log.info(
            "job finished",
            extra={
                "capability": rec.job.capability,
                "status": outcome.status,
                "duration_ms": round(wall_us / 1000, 3),
                "receipt_cid": renv.cid,
                "seq": seq,
            },
        )


def _handler_detail(capability: str, reason: str, job: JobSpec) -> str:
    """A NoBid detail for a handler's decline: its token and what the job asked."""
    c = job.constraints
    asked = ", ".join(
        f"{name}={value}"
        for name, value in (
            ("runtime", c.runtime),
            ("env_profile", c.env_profile),
            ("isolation", c.isolation),
            ("accelerator", c.accelerator),
        )
        if value is not None
    )
    return f"{capability}: {reason}" + (f" (job asks {asked})" if asked else "")


class _TokenBuckets:
    """Per-originator token buckets (bounded: the least recently seen are forgotten)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._state: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def take(self, key: str, now_ms: int) -> bool:
        tokens, last = self._state.pop(key, (float(self.burst), now_ms))
        tokens = min(float(self.burst), tokens + (now_ms - last) * self.rate / 1000)
        ok = tokens >= 1.0
        self._state[key] = (tokens - 1.0 if ok else tokens, now_ms)
        if len(self._state) > self.max_keys:
            self._state.popitem(last=False)
        return ok


class _Reject(ProtocolError):
    """Internal: drop a message with a specific reason token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
