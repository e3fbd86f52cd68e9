"""The originator SDK: ``async with Client(...) as c: result = await c.run(job)``.

One job's life (RFC 0001 §10).  The decisions (path, window, ranking, attempts, failover,
errors) are taken by the pure :class:`~crankmesh.market.Negotiation`; this class performs
the I/O it asks for and feeds back what happened.

0. the live firm quotes that admit the job are ranked by the policy; the best gets the
   Assignment (carrying the spec) at once: one request/reply, no Announce (§8.14); a
   Reject takes the next quote, and when none is left the job goes on as below;
1. the job spec (payload replaced by its CID) is content-addressed;
2. an :class:`~crankmesh.protocol.messages.Announce` goes to a power-of-k sample of the
   directory's compatible executors on ``nodes.<id>.announce`` (§10.8), or to
   ``jobs.announce.<capability>`` for an auction; bids come back on ``jobs.<cid>.bids``;
3. the bid window closes as soon as every peer the advert directory knows to
   offer the capability has answered, or a bid arrives that no outstanding
   bidder could beat, bounded by ``max_bid_window_ms``;
4. bids are ranked by the policy; signatures are verified lazily, best first;
5. the winner gets a signed Assignment (payload sealed to its key) as a NATS
   request; its signed Accept/Reject is the reply (``no responders`` means it
   is gone);
6. the receipt arrives on ``jobs.<cid>.receipt``; its signature, links and the
   result's CID are verified; a Close releases the losing bidders.

Failures (reject, no accept in time, executor gone, no receipt by the
deadline) move on to the next-best still-valid bid with ``attempt + 1``, then
to a fresh announce round; exhaustion raises
:class:`~crankmesh.protocol.errors.ExecutorsExhausted` listing every attempt.

Resource handling: a Client that creates its NATS connection closes it on
exit; a connection passed in is left open.  Error handling: NATS errors are
translated to :class:`~crankmesh.protocol.errors.TransportError`; protocol
violations by peers are counted and skipped, never raised to the caller.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import logging
import os
import random
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import nats.errors
import structlog

from .. import market
from .._tasks import TaskSet
from ..capabilities import (
    CapabilityOffer,
    MatchOutcome,
    MatchResult,
    Requirements,
    mismatch_error,
)
from ..capabilities import match as match_capabilities
from ..directory import Peer, PeerDirectory
from ..executor.stats import LatencyWindow
from ..market import negotiation as ng
from ..observability import Metrics, default_trace, trace_headers
from ..protocol import subjects
from ..protocol.cid import cid_for_blob, verify_blob
from ..protocol.envelope import Envelope, open_envelope
from ..protocol.errors import (
    Attempt,
    BudgetExceeded,
    CapabilityMismatch,
    ClientStateError,
    ExecutorsExhausted,
    NoBids,
    NoSuitableExecutor,
    OversizedMessage,
    ProtocolError,
    SelectionError,
    TokenInvalid,
    TransportError,
)
from ..protocol.identity import Identity, open_sealed, seal
from ..protocol.messages import (
    MAX_CLOSED_PER_ANNOUNCE,
    Accept,
    Announce,
    Assignment,
    Bid,
    Close,
    JobSpec,
    NoBid,
    Quote,
    Receipt,
    ReceiptDelivery,
    Reject,
    Settlement,
    decode_message,
    job_cid_of_canonical,
)
from ..protocol.tokens import TokenGrant, encode_chain, verify_chain
from ..transport import unsubscribe_quietly
from ._local_mesh import local_mesh, nats_from_environment
from .closes import PendingCloses
from .conduct import ConductBook, failure_kind
from .job import Job, JobResult

__all__ = ["Client", "ClientConfig", "CostEntry", "CostReport", "JobEvent", "JobHandle"]

log = logging.getLogger("crankmesh.originator")

#: Cost entries a client keeps for :meth:`Client.costs` (the most recent jobs).
COSTS_KEPT = 10_000


def _overhead_key(executor: str, capability: str) -> str:
    """Overhead is estimated per executor and capability (payload sizes and the work
    around a job differ between capabilities)."""
    return f"{executor} {capability}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Timeouts and defaults of an originator."""

    federation: str = "default"
    policy: str = "cost"
    max_bid_window_ms: int = 200
    min_bid_window_ms: int = 0
    accept_timeout_ms: int = 2_000
    receipt_grace_ms: int = 3_000
    max_attempts: int = 6
    max_rounds: int = 3
    #: When peers offer the capability but none bids (all full), keep re-announcing
    #: with backoff for up to this long before raising NoCapacity (0 = fail fast).
    busy_wait_s: float = 10.0
    #: Executors whose reputation (shared, audited records combined with this
    #: originator's own observations and canary probes) is below this are not used.
    #: Unknown executors count as the prior (2/3); banned ones (equivocation) as 0.
    min_reputation: float = 0.05
    announce_ttl_ms: int = 30_000
    #: How long a Close notice waits to ride on the next Announce of the same
    #: capability (RFC 0001 §8.3 ``closed``) before it goes out as a standalone
    #: Close (§8.7). 0 = always standalone, at once.
    close_linger_ms: int = 50
    liveness_check_ms: int = 250
    #: A call for bids goes to this many compatible executors, chosen by power-of-two
    #: choices from the directory (RFC 0001 §10.8); 0 = to every one (broadcast).
    sample_k: int = 3
    #: The share of sampled executors picked uniformly at random (finds new executors).
    sample_explore: float = 0.1
    #: Call for bids from every compatible executor on the broadcast subject (an explicit
    #: auction) for every job; per job: ``Job(auction=True)``.
    auction: bool = False
    #: Assign straight on the best live firm quote that admits the job (RFC 0001 §8.14);
    #: False: always a (sampled) call for bids.
    use_quotes: bool = True
    #: At most this many live quotes are ranked per job (the best by the policy's order
    #: of what they quote); 0 = all of them.
    max_quotes: int = 32


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(slots=True)
class _JobTrack:
    """Everything that arrives for one job on ``jobs.<cid>.*``.

    Bids and NoBids wait in ``inbox`` (as negotiation events) until the job's loop feeds
    them to its :class:`~crankmesh.market.Negotiation`; ``offers`` keeps each bid's (or
    quote's) envelope by CID for the assignment."""

    job_cid: str
    bids: list[tuple[Envelope, Bid]] = field(default_factory=list)
    offers: dict[str, tuple[Envelope, Any]] = field(default_factory=dict)
    inbox: list[Any] = field(default_factory=list)
    declined: int = 0
    deliveries: list[bytes] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)
    late_receipts: list[str] = field(default_factory=list)
    assigned_at: float = 0.0
    grant: TokenGrant | None = None
    trace: str = ""
    #: The job's subscription; handed to the settlement task once a result is in,
    #: so that its UNSUB and the settlement's PUB leave in one write.
    sub: Any = None
    #: The verified result of the attempt that delivered.
    result: JobResult | None = None

    def poke(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class Client:
    """An originator: announces jobs, selects executors, verifies receipts.

    Use as an async context manager.  Either pass ``nats`` (URL(s) or
    :class:`~crankmesh.transport.NatsOptions`) to let the client connect, or
    ``connection`` (an open nats-py client, e.g. a node's) to share one.  With
    neither, ``CRANKMESH_NATS`` is used when set; else (zero-config) the client
    starts a local mesh on enter -- an embedded nats-server and one node in this
    process -- and stops it on exit.
    """

    def __init__(
        self,
        *,
        nats: Any = None,
        connection: Any = None,
        identity: Identity | None = None,
        config: ClientConfig | None = None,
        directory: PeerDirectory | None = None,
        metrics: Metrics | None = None,
        local_executor: str | None = None,
        trusted: Callable[[str], bool] | None = None,
        **overrides: Any,
    ) -> None:
        if nats is None and connection is None:
            # Zero-config (seed 003 quick-start): CRANKMESH_NATS, else a local mesh on enter.
            nats = nats_from_environment()
        #: No NATS given anywhere: ``__aenter__`` starts a local mesh (see _local_mesh.py).
        self.zero_config = nats is None and connection is None
        if nats is not None and connection is not None:
            raise ValueError("pass at most one of nats= (URL or NatsOptions) or connection=")
        cfg = config or ClientConfig()
        if overrides:
            cfg = ClientConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        subjects.check_federation(cfg.federation)
        self.identity = identity or Identity.generate()
        self.metrics = metrics or Metrics()
        self._nats_target = nats
        self._nc: Any = connection
        self._owns_directory = directory is None
        # `is None`, not `or`: an empty directory is falsy (it has a __len__).
        self.directory = (
            directory
            if directory is not None
            else PeerDirectory(federation=cfg.federation, metrics=self.metrics)
        )
        self.local_executor = local_executor
        self._trusted = trusted
        self._state = _State.NEW
        self._stack: AsyncExitStack | None = None
        self._tracks: dict[str, _JobTrack] = {}
        # Last ranking per job (bounded): `explain(job_cid)` builds explanations on demand.
        self._rankings: _Bounded = _Bounded(1024)
        self._costs: deque[CostEntry] = deque(maxlen=COSTS_KEPT)  # bounded (tables.py)
        #: Spend per budget token (RFC 0001 §8.12): reserve at assignment, settle on receipt.
        self.budgets = market.BudgetLedger()
        # Observed vs promised, per executor: a local reputation used in scoring.
        # (executor, capability) -> service time / promised p95 of its recent jobs, in
        # permille (RFC 0002 §6.1): how it keeps its promises, whatever the load.
        self._observed: dict[tuple[str, str], LatencyWindow] = {}
        #: What this originator observes beyond each executor's service, from measurements.
        self.overhead = market.OverheadEstimator()
        #: Misbehaviour seen, by executor and kind; too much excludes until a canary passes.
        self.conduct = ConductBook(self.metrics)
        self._last_service: dict[tuple[str, str], int] = {}
        self._reputation: dict[str, market.LocalReputation] = {}
        #: Shared reputation from audited records on the stream (set by a node).
        self.reputation_book: Any = None
        #: (executor, capability) -> (reason, until_ms): set by canary probes.
        self._excluded: dict[tuple[str, str], tuple[str, int]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        #: Settlements being signed and published, off the job's path (see _tasks.py).
        self._settling = TaskSet()
        #: Close notices waiting for the next Announce of their capability.
        self._closes = PendingCloses(cfg.close_linger_ms / 1000, MAX_CLOSED_PER_ANNOUNCE)
        self._closes_added: anyio.Event | None = None  # made on the event loop
        #: Set by a node: persists settlements in JetStream (buffered when it is down).
        self.record_store: Any = None
        self._published_tokens: set[str] = set()
        #: Draws the power-of-k samples of calls for bids.
        self._rng = random.Random()
        #: Run once before the first job (a node starts following reputation then).
        self._first_run_hooks: list[Callable[[], Awaitable[None]]] = []

    # ------------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[None]:
        if self._nc is None:
            from ..transport import NatsOptions, connect

            target = self._nats_target
            opts = (
                target
                if isinstance(target, NatsOptions)
                else NatsOptions.from_url(target if isinstance(target, str) else ",".join(target))
            )
            nc = await connect(opts)
            owns_connection = True
            self._nc = nc
        else:
            owns_connection = False
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self._owns_directory:
                    await tg.start(self.directory.serve, self._nc)
                self._closes_added = anyio.Event()
                tg.start_soon(self._publish_due_closes)
                try:
                    yield
                finally:
                    # Settlements of jobs already returned get a moment to go out, and
                    # bidders still holding capacity for our jobs are told to let go.
                    await self._settling.aclose(grace_s=2.0)
                    with anyio.move_on_after(2.0, shield=True):
                        for notice in self._closes.drain():
                            await self._close(notice.job_cid, notice.winner, notice.bid_cid)
                    tg.cancel_scope.cancel()
        finally:
            if owns_connection:
                with anyio.move_on_after(5, shield=True):
                    try:
                        await self._nc.drain()
                    except Exception:  # e.g. still reconnecting: close instead
                        try:
                            await self._nc.close()
                        except Exception as exc:  # never mask what ended the block
                            log.debug("closing the NATS connection: %r", exc)

    async def __aenter__(self) -> Client:
        if self._state is not _State.NEW:
            raise ClientStateError(
                "Cannot reopen a client once it has been opened; create a new Client."
            )
        stack = AsyncExitStack()
        try:
            if self.zero_config:
                mesh = await stack.enter_async_context(
                    local_mesh(federation=self.config.federation)
                )
                self._nats_target = mesh.url
                self.local_executor = mesh.executor
            await stack.enter_async_context(self._lifecycle())
            if self.zero_config:
                await self._wait_for_local_node()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            raise
        self._stack = stack
        self._state = _State.RUNNING
        return self

    async def _wait_for_local_node(self, wait_s: float = 10.0) -> None:
        """Zero-config: wait (bounded) until the local node's advert is in the directory,
        so that the first job's bid window closes on its bid rather than on the timeout."""
        did = self.local_executor
        with anyio.move_on_after(wait_s):
            while did is not None and self.directory.get(did) is None:
                await self.directory.wait_changed()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._state is _State.RUNNING and self._stack is not None:
            self._state = _State.CLOSED
            await self._stack.aclose()
        self._state = _State.CLOSED

    def _check_open(self) -> None:
        if self._state is not _State.RUNNING:
            raise ClientStateError(
                "The client is not open; use `async with Client(...) as client:`."
            )

    # ------------------------------------------------------------------ helpers

    async def wait_for_peers(
        self, capability: str, count: int = 1, wait_s: float = 10.0, *, settle_s: float = 0.0
    ) -> int:
        """Wait until ``count`` peers offering ``capability`` are in the directory; returns
        how many there are (fewer than ``count`` when ``wait_s`` ran out).

        ``settle_s``: once ``count`` are in, go on waiting until no further such peer has
        joined for ``settle_s`` (all within ``wait_s``).  The nodes answer this client's
        advert sync (RFC 0001 §8.10) together, so a short settle lets the first job see
        every bidder, not just the first to answer.
        """
        # Waiting for peers is the start of originating: a node's client starts following
        # the directory now (an executor-only node follows nothing, RFC 0001 §8.15).
        while self._first_run_hooks:
            await self._first_run_hooks.pop()()
        offering = self.directory.offering
        with anyio.move_on_after(wait_s):
            while len(offering(capability)) < count:
                await self.directory.wait_changed()
            known = len(offering(capability))
            quiet_until = anyio.current_time() + settle_s
            while (left := quiet_until - anyio.current_time()) > 0:
                with anyio.move_on_after(left):
                    await self.directory.wait_changed()
                if len(offering(capability)) > known:  # a heartbeat of a known peer is no news
                    known = len(offering(capability))
                    quiet_until = anyio.current_time() + settle_s
        return len(offering(capability))

    def _build_spec(self, job: Job, now: int) -> JobSpec:
        c = job.constraints
        attempts_budget = c.timeout_ms + self.config.receipt_grace_ms
        return JobSpec(
            capability=job.capability,
            originator=self.identity.did,
            created=now,
            nonce=os.urandom(16),
            payload=cid_for_blob(job.payload),
            payload_size=len(job.payload),
            deadline=now + attempts_budget * self.config.max_attempts + 60_000,
            constraints=c,
            requirements=_requirements_wire(job.requirements),
            slo=job.slo,
            max_price=job.max_price,
            currency=job.currency,
        )

    def _grant(self, job: Job, now: int) -> TokenGrant | None:
        """Verify the job's budget chain for this originator; halt when it is spent.

        Error handling: an invalid chain raises TokenInvalid; a spent one raises
        BudgetExceeded with the figures, before anything is announced.
        """
        if not job.budget:
            return None
        grant = verify_chain(
            job.budget, now_ms=now, capability=job.capability, holder=self.identity.did
        )
        if grant.currency != job.currency:
            raise TokenInvalid(
                f"the budget token is in {grant.currency}, the job is priced in {job.currency}"
            )
        remaining = self.budgets.remaining(grant)
        needed = job.max_price if job.max_price is not None else 1
        if remaining < needed:
            raise BudgetExceeded(
                needed_micros=needed, remaining_micros=remaining, currency=grant.currency
            )
        return grant

    def _terms(self, job: Job) -> market.Terms:
        return market.Terms(
            min_reputation=self.config.min_reputation,
            currency=job.currency,
            max_price_micros=job.max_price,
            slo_p95_us=job.slo.p95_us if job.slo else None,
            slo_p99_us=job.slo.p99_us if job.slo else None,
            min_accuracy_ppm=job.slo.min_accuracy_ppm if job.slo else None,
        )

    # ------------------------------------------------------------------ run

    def submit(self, job: Job, *, policy: str | market.Policy | None = None) -> JobHandle:
        """Start ``job`` in the background; returns a :class:`JobHandle` at once."""
        self._check_open()
        assert self._tg is not None
        handle = JobHandle(job)

        async def runner() -> None:
            token = _current_handle.set(handle)
            try:
                with anyio.CancelScope() as scope:
                    handle._scope = scope
                    try:
                        handle._result = await self.run(job, policy=policy)
                        handle._emit("completed", handle.job_cid, status=handle._result.status)
                    except Exception as exc:
                        handle._error = exc
                        handle._emit("failed", handle.job_cid, error=str(exc))
                if scope.cancelled_caught:
                    handle._error = anyio.get_cancelled_exc_class()("job cancelled")
                    handle._emit("cancelled", handle.job_cid)
            finally:
                _current_handle.reset(token)
                handle._done.set()

        self._tg.start_soon(runner)
        return handle

    async def map(
        self,
        jobs: Iterable[Job],
        *,
        concurrency: int = 8,
        return_exceptions: bool = False,
        policy: str | market.Policy | None = None,
    ) -> list[Any]:
        """Run many jobs, at most ``concurrency`` at a time; results in input order.

        Error handling: the first failure is raised (after the others finish)
        unless ``return_exceptions`` is true, in which case its exception takes
        the job's place in the list.
        """
        self._check_open()
        jobs = list(jobs)
        out: list[Any] = [None] * len(jobs)
        limit = anyio.Semaphore(max(1, concurrency))

        async def one(i: int, job: Job) -> None:
            async with limit:
                try:
                    out[i] = await self.run(job, policy=policy)
                except Exception as exc:
                    out[i] = exc

        async with anyio.create_task_group() as tg:
            for i, job in enumerate(jobs):
                tg.start_soon(one, i, job)
        if not return_exceptions:
            for item in out:
                if isinstance(item, Exception):
                    raise item
        return out

    def costs(self) -> CostReport:
        """The executor, duration and charge of the last :data:`COSTS_KEPT` completed
        jobs, with totals."""
        return CostReport(tuple(self._costs))

    def reputation(self, executor: str) -> market.LocalReputation | None:
        """This originator's own record of ``executor`` (observed vs promised)."""
        return self._reputation.get(executor)

    async def run(
        self,
        job: Job,
        *,
        policy: str | market.Policy | None = None,
        executor: str | None = None,
    ) -> JobResult:
        """Run ``job`` on the mesh and return its verified result.

        With a fallback chain (``Job.python(..., accelerator="gpu", fallback=["cpu"])``)
        each accelerator is tried in turn; running on a later one is logged as a
        degraded match and noted in ``result.warnings``.

        Error handling: raises :class:`~crankmesh.protocol.errors.CapabilityMismatch`
        when the live peers offering the capability cannot meet its requirements
        (with every mismatch), :class:`NoBids` when no executor answered
        (:class:`NoCapacity` when they are busy, :class:`BidsDeclined` when every one
        that answered declined for good; both name each executor's NoBid reason),
        :class:`~crankmesh.protocol.errors.NoEligibleBid` when every bid failed
        a filter, :class:`ExecutorsExhausted` when every attempt (of every
        fallback) failed, and :class:`TransportError` when NATS is unusable.  A
        job that ran and failed returns a result whose ``status`` says so (see
        :meth:`JobResult.raise_for_status`).
        """
        self._check_open()
        while self._first_run_hooks:
            await self._first_run_hooks.pop()()
        limit = int(getattr(self._nc, "max_payload", 0) or (1 << 20))
        if len(job.payload) + 8192 > limit:
            raise OversizedMessage(len(job.payload) + 8192, limit)
        if executor is not None:
            job = dataclasses.replace(job, only_executor=executor)
        if not job.fallback:
            return await self._run_one(job, policy)
        variants = [job] + [
            replace(
                job,
                constraints=job.constraints.model_copy(update={"accelerator": acc}),
                fallback=(),
            )
            for acc in job.fallback
        ]
        attempts: list[Attempt] = []
        last: Exception | None = None
        for i, variant in enumerate(variants):
            acc = variant.constraints.accelerator or "any"
            try:
                result = await self._run_one(variant, policy)
            except (SelectionError, CapabilityMismatch) as exc:
                last = exc
                first_line = str(exc).splitlines()[0]
                attempts.extend(
                    getattr(exc, "attempts", ()) or [Attempt(0, f"({acc})", first_line)]
                )
                log.info("fallback: no %s executor for the job (%s)", acc, first_line)
                continue
            if i > 0:
                warning = (
                    f"fell back from {variants[0].constraints.accelerator} to {acc}: "
                    "expect degraded performance"
                )
                log.warning("job %s %s", result.job_cid, warning)
                result = replace(
                    result,
                    warnings=(*result.warnings, warning),
                    attempts=(*attempts, *result.attempts),
                )
            return result
        assert last is not None
        raise ExecutorsExhausted(getattr(last, "job_cid", "(fallback chain)"), attempts) from last

    async def _run_one(self, job: Job, policy: str | market.Policy | None) -> JobResult:
        started = time.perf_counter()
        now = _now_ms()
        grant = self._grant(job, now)
        spec = self._build_spec(job, now)
        if grant is not None:
            spec = spec.model_copy(update={"budget": grant.leaf_cid})
        job_cid = job_cid_of_canonical(spec.to_wire())
        track = _JobTrack(job_cid)
        track.grant = grant
        self._tracks[job_cid] = track
        pol = policy or job.policy or self.config.policy
        terms = self._terms(job)
        if job.only_executor is not None:
            # A pinned job (a canary probe) must reach its executor even when its
            # reputation is low: that is how an excluded executor gets re-tested.
            terms = dataclasses.replace(terms, min_reputation=None)
        if grant is not None:
            terms = dataclasses.replace(
                terms, budget_remaining_micros=self.budgets.remaining(grant)
            )
            await self._publish_tokens(job, grant)
        self.metrics.jobs_submitted.labels(capability=job.capability).inc()
        track.trace = default_trace(job_cid)
        trace_ctx = structlog.contextvars.bound_contextvars(job_cid=job_cid, trace_id=track.trace)
        trace_ctx.__enter__()

        async def on_msg(msg: Any) -> None:
            kind = msg.subject.rsplit(".", 1)[-1]
            if kind == "bids":
                try:
                    env = open_envelope(msg.data, max_len=64 * 1024)
                    if env.type == NoBid.TYPE:
                        self._on_nobid(track, env)
                        return
                    env, bid = decode_message(env, Bid)
                    if bid.job != job_cid:
                        raise ProtocolError("bid for another job")
                    if self._trusted is not None and not self._trusted(bid.signer):
                        self.metrics.reject("bid", "untrusted")
                        return
                except ProtocolError as exc:
                    self.metrics.reject("bid", exc.reason)
                    return
                if len(track.bids) >= 256:
                    self.metrics.reject("bid", "flood")
                    return
                track.bids.append((env, bid))
                track.offers[env.cid] = (env, bid)
                track.inbox.append(ng.BidReceived(self._candidate(env, bid, job.capability)))
                track.poke()
            elif kind == "receipt":
                if len(track.deliveries) < 64:
                    track.deliveries.append(msg.data)
                    track.poke()
                else:
                    self.metrics.reject("receipt", "flood")

        try:
            sub = await self._nc.subscribe(
                f"{subjects.ROOT}.{self.config.federation}.jobs.{job_cid}.*", cb=on_msg
            )
        except Exception as exc:
            raise TransportError(f"cannot subscribe for job {job_cid}: {exc}") from exc
        track.sub = sub
        try:
            return await self._run_rounds(job, spec, job_cid, track, pol, terms, started)
        except BaseException:
            if track.bids:
                # Abandoned with bids outstanding: release every bidder's reservation.
                with anyio.CancelScope(shield=True):
                    await self._close(job_cid, None, None)
            raise
        finally:
            trace_ctx.__exit__(None, None, None)
            if track.grant is not None:
                self.budgets.release_if_reserved(job_cid)
            self._tracks.pop(job_cid, None)
            if track.sub is not None:  # else the settlement task unsubscribes
                await unsubscribe_quietly(track.sub)

    def _on_nobid(self, track: _JobTrack, env: Envelope) -> None:
        """A signed NoBid (RFC 0001 §8.13): the executor answered this round with "no".
        Verified before it counts: a forged one must neither close the window early
        nor put words in an executor's mouth.  Error handling: defects are counted in
        ``rejections_total{kind="nobid"}`` and ignored."""
        try:
            _, nobid = decode_message(env, NoBid)
            if nobid.job != track.job_cid:
                raise ProtocolError("no-bid for another job")
            if self._trusted is not None and not self._trusted(nobid.signer):
                self.metrics.reject("nobid", "untrusted")
                return
            if track.declined >= 256:
                self.metrics.reject("nobid", "flood")
                return
            env.verify()
        except ProtocolError as exc:
            self.metrics.reject("nobid", exc.reason)
            return
        track.declined += 1
        track.inbox.append(ng.NoBidReceived(nobid.signer, nobid.reason, nobid.detail or ""))
        track.poke()

    async def _announce(
        self,
        spec: JobSpec,
        spec_cid: str,
        trace: str = "",
        targets: Sequence[str] | None = None,
    ) -> int:
        """Publish the job's signed Announce: on the capability's subject, or (a sampled
        call for bids, RFC 0001 §10.8) the same envelope on each of ``targets``' own
        announce subject."""
        now = _now_ms()
        _emit("announced", spec_cid, capability=spec.capability)
        # Earlier jobs' Close notices ride along (RFC 0001 §8.3): same receivers.
        closed = self._closes.take(spec.capability)
        env = Announce.build(
            signer=self.identity.did,
            ts=now,
            exp=now + self.config.announce_ttl_ms,
            job=spec,
            closed=closed,
        ).sign(self.identity)
        fed = self.config.federation
        to = (
            [subjects.announce(fed, spec.capability)]
            if targets is None
            else [subjects.node_announce(fed, t) for t in targets]
        )
        headers = trace_headers(trace, spec_cid)
        try:
            for subject in to:
                await self._nc.publish(subject, env.raw, headers=headers)
        except Exception as exc:
            if closed:
                self._closes.put_back(spec.capability, closed, time.monotonic())
                self._wake_close_publisher()
            raise TransportError(f"cannot publish announcement: {exc}") from exc
        return now

    def _candidate(self, env: Envelope, b: Bid, capability: str) -> market.Candidate:
        """A bid as the selector sees it, with what only this originator knows."""
        return self._offer_candidate(
            env.cid,
            b.signer,
            b,
            capability,
            est_latency_us=b.est_us,
            degraded=b.match == "degraded",
            warnings=tuple(b.warnings),
        )

    def _offer_candidate(
        self,
        cid: str,
        executor: str,
        offer: Bid | Quote,
        capability: str,
        *,
        degraded: bool,
        warnings: tuple[str, ...],
        est_latency_us: int | None = None,
    ) -> market.Candidate:
        """A bid or a firm quote (the same terms: price, SLO, load, expiry) as the selector
        sees it, with what only this originator knows of its executor."""
        slo, load = offer.slo, offer.load
        return market.Candidate(
            bid_cid=cid,
            executor=executor,
            price_micros=offer.price,
            currency=offer.currency,
            p50_us=slo.p50_us,
            p95_us=slo.p95_us,
            p99_us=slo.p99_us,
            accuracy_ppm=slo.accuracy_ppm,
            running=load.running,
            queued=load.queued,
            capacity=load.capacity,
            est_latency_us=est_latency_us,
            local=executor == self.local_executor,
            degraded=degraded,
            warnings=warnings,
            expires_ms=offer.exp,
            observed_p95_us=self._observed_p95(executor, capability, slo.p95_us),
            conduct=self._conduct_notes(executor, capability),
            network_rtt_us=self.overhead.typical(_overhead_key(executor, capability)),
            reputation=self._reputation_score(executor, capability),
        )

    def _quote_candidates(
        self, spec: JobSpec, track: _JobTrack, now: int, policy_name: str, terms: market.Terms
    ) -> list[market.Candidate]:
        """The live firm quotes (RFC 0001 §8.14) that admit the job, as candidates: the
        quote's terms fit the job, its currency is the job's, and the job's requirements
        match the quoting executor's advertised hardware.  Signatures are checked lazily,
        best first, as for bids."""
        live = self.directory.quotes(spec.capability, now)
        if not live:
            return []
        peers, matches = self._match_peers(spec)
        fitting = []
        for lq in live:
            q = lq.quote
            match = matches.get(lq.did)
            if q.currency != spec.currency or (match is not None and not match.ok):
                continue
            if q.terms.misfit(spec) is not None:
                continue
            if self._trusted is not None and not self._trusted(lq.did):
                continue
            fitting.append((lq, match))
        limit = self.config.max_quotes
        if 0 < limit < len(fitting):
            # Thousands of quotes: rank only the best ``max_quotes`` by what the policy
            # looks at (the same order a sampled call for bids uses), so the work per job
            # does not grow with the directory.
            key = ng.policy_sample_key(policy_name, terms)
            fitting = heapq.nsmallest(
                limit, fitting, key=lambda item: key(_quote_view(item[0].did, item[0].quote))
            )
        out = []
        for lq, match in fitting:
            q = lq.quote
            track.offers[lq.cid] = (lq._env, q)
            out.append(
                self._offer_candidate(
                    lq.cid,
                    lq.did,
                    q,
                    spec.capability,
                    degraded=match is not None and match.outcome is MatchOutcome.DEGRADED,
                    warnings=tuple(match.warnings) if match is not None else (),
                )
            )
        return out

    def _limits(self) -> ng.Limits:
        cfg = self.config
        return ng.Limits(
            max_bid_window_ms=cfg.max_bid_window_ms,
            min_bid_window_ms=cfg.min_bid_window_ms,
            max_attempts=cfg.max_attempts,
            max_rounds=cfg.max_rounds,
            busy_wait_ms=int(cfg.busy_wait_s * 1000),
            sample_k=cfg.sample_k,
            explore=cfg.sample_explore,
        )

    def _peer_views(self, spec: JobSpec, job_cid: str | None = None) -> tuple[ng.PeerView, ...]:
        """The live peers that may serve the job, for the negotiation (raises
        CapabilityMismatch when every one of them advertises hardware that cannot; with
        ``job_cid``, NoSuitableExecutor when the directory rules every one out)."""
        cap = spec.capability
        peers = (
            self._raise_if_mismatched(spec)
            if job_cid is None
            else self._raise_if_ruled_out(spec, job_cid)
        )
        return tuple(
            ng.PeerView(
                did=p.did,
                price_micros=p.price_of(cap),
                running=p.advert.load.running,
                queued=p.advert.load.queued,
                capacity=p.advert.load.capacity,
                reputation=self._reputation_score(p.did, cap),
                p95_us=None if slo is None else slo.p95_us,
                accuracy_ppm=None if slo is None else slo.accuracy_ppm,
                p50_us=None if slo is None else slo.p50_us,
            )
            for p in peers
            for slo in [next((c.slo for c in p.advert.capabilities if c.name == cap), None)]
        )

    async def _run_rounds(
        self,
        job: Job,
        spec: JobSpec,
        job_cid: str,
        track: _JobTrack,
        policy: str | market.Policy,
        terms: market.Terms,
        started: float,
    ) -> JobResult:
        """Drive the job's :class:`~crankmesh.market.Negotiation`: perform each action it
        asks for (the I/O) and feed back what happened, until it is done or failed."""
        started_ms = _now_ms() - int((time.perf_counter() - started) * 1000)
        auction = job.auction or self.config.auction
        use_quotes = self.config.use_quotes and not auction
        policy_name = policy if isinstance(policy, str) else policy.name
        quotes = (
            self._quote_candidates(spec, track, started_ms, policy_name, terms)
            if use_quotes
            else []
        )
        neg = market.Negotiation(
            job_cid=job_cid,
            capability=spec.capability,
            policy=policy,
            terms=terms,
            limits=self._limits(),
            started_ms=started_ms,
            only_executor=job.only_executor,
            auction=auction,
            quotes=quotes,
            rng=self._rng,
        )
        window_opened = 0.0
        while True:
            if track.inbox:
                for event in track.inbox:
                    neg.send(event)
                track.inbox.clear()
            action = neg.next_action()
            if isinstance(action, ng.CollectBids):
                wait_s = (action.until_ms - _now_ms()) / 1000
                if wait_s > 0 and not track.inbox:
                    with anyio.move_on_after(wait_s):
                        await track.changed.wait()
                neg.send(ng.Tick(_now_ms()))
                continue
            if window_opened:
                self.metrics.bid_window_seconds.observe(time.perf_counter() - window_opened)
                window_opened = 0.0
            if isinstance(action, ng.Assign):
                event = await self._attempt_on(job, spec, job_cid, track, neg, action)
                if event is None:
                    continue
                neg.send(event)
                if isinstance(event, ng.AttemptFailed):
                    self._attempt_failed(job_cid, action, event)
                continue
            if isinstance(action, ng.RefreshPeers):
                # after a round nobody bid in: NoSuitableExecutor when the directory rules
                # every live peer out (waiting for capacity would not help)
                job_cid_if = job_cid if action.after_empty_round else None
                neg.send(ng.Peers(_now_ms(), self._peer_views(spec, job_cid_if)))
            elif isinstance(action, ng.Announce):
                window_opened = time.perf_counter()
                now = await self._announce(spec, job_cid, track.trace, action.targets)
                neg.send(ng.Announced(now))
            elif isinstance(action, ng.Sleep):
                await anyio.sleep(max(0, action.until_ms - _now_ms()) / 1000)
                neg.send(ng.Woke(_now_ms()))
            elif isinstance(action, ng.Done):
                return self._finished(spec, job_cid, track, neg, action, started)
            else:
                assert isinstance(action, ng.Failed)
                if isinstance(action.error, NoBids):
                    self.metrics.jobs_failed.labels(reason="no_bids").inc()
                elif isinstance(action.error, ExecutorsExhausted):
                    self.metrics.jobs_failed.labels(reason="exhausted").inc()
                raise action.error

    async def _attempt_on(
        self,
        job: Job,
        spec: JobSpec,
        job_cid: str,
        track: _JobTrack,
        neg: market.Negotiation,
        action: ng.Assign,
    ) -> ng.Event | None:
        """Verify the chosen offer's signature (lazily, best first), then assign the job
        on it; the attempt's outcome as a negotiation event (None: a Forged was sent)."""
        cand = action.candidate
        env, bid = track.offers[cand.bid_cid]
        try:
            env.verify()
        except ProtocolError:
            self.metrics.reject("bid", "bad_signature")
            log.warning(
                "job %s: bid %s claims %s but its signature is invalid",
                job_cid,
                env.cid,
                cand.executor,
            )
            neg.send(ng.Forged(cand.bid_cid))
            return None
        assert neg.ranking is not None
        self._rankings[job_cid] = neg.ranking
        _emit("bids", job_cid, count=len(neg.bids), eligible=len(neg.ranking.eligible))
        if cand.degraded:
            log.warning(
                "job %s: degraded match on %s: %s",
                job_cid,
                cand.executor,
                "; ".join(cand.warnings) or "a preferred capability is missing",
            )
        _emit("assigned", job_cid, executor=cand.executor, attempt=action.attempt, price=bid.price)
        outcome = await self._attempt(job, spec, job_cid, track, env, bid, action.attempt)
        if isinstance(outcome, JobResult):
            track.result = outcome
            return ng.Delivered(_now_ms(), outcome.price)
        if action.path == "quote" and isinstance(outcome, ng.Rejected | ng.Unreachable):
            # A quote refused (full now, expired, the job beyond its terms) is the quote
            # mechanism working (RFC 0001 §8.14), no broken commitment: nothing recorded
            # (nor for no responders: a node advertises before its executor listens).
            return outcome
        self._record_outcome(
            cand.executor,
            success=False,
            service_us=None,
            bid=bid,
            capability=spec.capability,
            failure=outcome.outcome,
        )
        return outcome

    def _attempt_failed(self, job_cid: str, action: ng.Assign, event: ng.AttemptFailed) -> None:
        executor, n, outcome = action.candidate.executor, action.attempt, event.outcome
        _emit("attempt_failed", job_cid, executor=executor, attempt=n, outcome=outcome)
        log.info(
            "attempt failed",
            extra={"job_cid": job_cid, "attempt": n, "peer": executor, "reason": outcome},
        )
        self.metrics.reassignments.labels(cause=outcome.split(":")[0]).inc()

    def _finished(
        self,
        spec: JobSpec,
        job_cid: str,
        track: _JobTrack,
        neg: market.Negotiation,
        done: ng.Done,
        started: float,
    ) -> JobResult:
        result = track.result
        assert result is not None
        if track.grant is not None:
            self.budgets.settle(job_cid, done.settle_micros)
        elapsed = time.perf_counter() - started
        self._costs.append(
            CostEntry(
                job_cid,
                spec.capability,
                result.executor,
                result.status,
                round(elapsed * 1000, 3),
                result.price,
                result.currency,
            )
        )
        self.metrics.jobs_completed.labels(status=result.status).inc()
        self.metrics.job_seconds.labels(capability=spec.capability).observe(elapsed)
        assert neg.ranking is not None
        return replace(
            result,
            latency_ms=elapsed * 1000,
            attempts=done.attempts,
            warnings=done.candidate.warnings,
            trace_id=track.trace,
            explanation=_LazyExplanation(
                neg.ranking, job_cid, spec.requirements, neg.path, neg.quote_ranking
            ),
        )

    def _match_peers(self, spec: JobSpec) -> tuple[list[Peer], dict[str, MatchResult]]:
        """Live peers offering the capability, and how each matches the job's
        requirements and accelerator against its advertised hardware."""
        peers = self.directory.offering(spec.capability)
        reqs = _job_requirements(spec)
        results: dict[str, MatchResult] = {}
        if reqs is None:
            return peers, results
        for peer in peers:
            try:
                offer = CapabilityOffer.from_wire(peer.advert.hardware)
            except Exception:
                continue  # an advert we cannot read does not rule the peer out
            results[peer.did] = _merge_results([match_capabilities(r, offer) for r in reqs])
        return peers, results

    def _observed_p95(self, executor: str, capability: str, promised: int | None) -> int | None:
        """The p95 ``executor`` would deliver on this ``promised`` p95, judging by how
        its recent ``capability`` jobs kept theirs: ``promised × p95(service / promise)``,
        with service times measured as in RFC 0002 §6.1 (load-neutral: a promise quoted at
        the current load is compared with service times at the load of their day)."""
        w = self._observed.get((executor, capability))
        if promised is None or w is None or len(w) < 5:
            return None
        ratio = w.quantile(0.95)
        return None if ratio is None else promised * ratio // 1000

    def _reputation_score(self, executor: str, capability: str = "") -> float | None:
        """The worst of what this originator knows about ``executor``: excluded by a
        canary probe (0), the shared book from audited records, its own observations."""
        excluded = self._excluded.get((executor, capability))
        if excluded is not None:
            if excluded[1] > _now_ms():
                return 0.0
            del self._excluded[(executor, capability)]
        scores = []
        rep = self._reputation.get(executor)
        if rep is not None:
            scores.append(rep.score)
        book = self.reputation_book
        if book is not None and (book.banned(executor) or executor in book.scores()):
            scores.append(book.score(executor))
        return min(scores) if scores else None

    def _conduct_notes(self, executor: str, capability: str) -> tuple[str, ...]:
        notes = self.conduct.notes(executor)
        reason = self.excluded(executor, capability)
        return notes if reason is None else (f"excluded: {reason}", *notes)

    def service_time(self, executor: str, capability: str) -> int | None:
        """Service time (µs) of the last ``capability`` job ``executor`` finished for this
        client: observed less the overhead estimate, never below its meter (RFC 0002 §6.1)."""
        return self._last_service.get((executor, capability))

    def exclude(self, executor: str, capability: str, reason: str, for_ms: int = 600_000) -> None:
        """Stop routing ``capability`` work to ``executor`` (e.g. it failed a canary);
        lifted after ``for_ms`` or by :meth:`readmit`."""
        self._excluded[(executor, capability)] = (reason, _now_ms() + for_ms)
        log.warning(
            "excluding an executor",
            extra={"peer": executor, "capability": capability, "reason": reason},
        )

    def readmit(self, executor: str, capability: str) -> None:
        if self._excluded.pop((executor, capability), None) is not None:
            log.info("readmitting an executor", extra={"peer": executor, "capability": capability})

    def excluded(self, executor: str, capability: str) -> str | None:
        """Why ``executor`` is excluded from ``capability`` work, or None."""
        item = self._excluded.get((executor, capability))
        return item[0] if item is not None and item[1] > _now_ms() else None

    def _record_outcome(
        self,
        executor: str,
        *,
        success: bool,
        service_us: int | None,
        bid: Bid | Quote,
        capability: str = "",
        failure: str | None = None,
        misbehaviour: str | None = None,
    ) -> None:
        """Service time vs promise, and the commitment kept or broken: keeps this
        originator's local reputation of executors (and its conduct book, which excludes
        executors that break too many; see :mod:`.conduct`)."""
        slo_met: bool | None = None
        if service_us is not None:
            self._last_service[(executor, capability)] = service_us
            if bid.slo.p95_us is not None:
                slo_met = service_us <= bid.slo.p95_us
                self._observed.setdefault((executor, capability), LatencyWindow(256)).add(
                    service_us * 1000 // max(1, bid.slo.p95_us)
                )
        kind = misbehaviour if failure is None else failure_kind(failure)
        if failure is None or kind is not None:
            reason = self.conduct.commitment(executor, capability, kind)
            if reason is not None:
                self.exclude(executor, capability, reason)
        if service_us is not None and bid.slo.p95_us is not None:
            reason = self.conduct.promise(executor, capability, service_us, bid.slo.p95_us)
            if reason is not None:
                self.exclude(executor, capability, reason)
        rep = self._reputation.get(executor) or market.LocalReputation()
        self._reputation[executor] = rep.record(success=success, slo_met=slo_met)

    def _raise_if_mismatched(self, spec: JobSpec) -> list[Peer]:
        """Raise CapabilityMismatch when every live peer offering the capability
        advertises hardware that cannot serve the job (seed 003, "No compatible
        executor available"); else return the peers that might."""
        peers, results = self._match_peers(spec)
        if results and len(results) == len(peers) and not any(r.ok for r in results.values()):
            raise mismatch_error(results)
        return [p for p in peers if p.did not in results or results[p.did].ok]

    def _raise_if_ruled_out(
        self, spec: JobSpec, job_cid: str, no_bids: Iterable[tuple[str, str]] = ()
    ) -> list[Peer]:
        """As :meth:`_raise_if_mismatched`, and raise NoSuitableExecutor when the directory
        (price, env profile, isolation, memory, hardware) or the executors' own no-bid
        reasons rule every live peer out, so nobody waits for capacity that cannot help."""
        from ._diagnosis import diagnose

        usable = self._raise_if_mismatched(spec)  # all on hardware: CapabilityMismatch
        peers, results = self._match_peers(spec)
        verdict = diagnose(spec, peers, results, no_bids, originator=self.identity.did)
        if verdict.ruled_out:
            raise NoSuitableExecutor(job_cid, spec.capability, verdict.lines())
        return usable

    def explain(self, job_cid: str) -> market.Explanation | None:
        """The selection explanation of a job this client ran (most recent ranking)."""
        ranking = self._rankings.get(job_cid)
        return None if ranking is None else ranking.explanation(job_cid)

    async def _attempt(
        self,
        job: Job,
        spec: JobSpec,
        job_cid: str,
        track: _JobTrack,
        bid_env: Envelope,
        bid: Bid | Quote,
        attempt: int,
    ) -> JobResult | ng.AttemptFailed:
        cfg = self.config
        now = _now_ms()
        executor = bid.signer
        if track.grant is not None:
            # Book the bid's price against the token before committing to it; a
            # spent budget halts here with BudgetExceeded (reassignments re-book).
            self.budgets.release_if_reserved(job_cid)
            self.budgets.reserve(track.grant, job_cid, bid.price)
        asg = Assignment.build(
            signer=self.identity.did,
            ts=now,
            exp=now + cfg.accept_timeout_ms,
            job=job_cid,
            # on a quote (RFC 0001 §8.14) the assignment carries the job's spec: no
            # Announce brought it
            **(
                {"quote": bid_env.cid, "spec": spec}
                if isinstance(bid, Quote)
                else {"bid": bid_env.cid}
            ),
            executor=executor,
            attempt=attempt,
            nonce=os.urandom(16),
            payload=seal(job.payload, executor, sender=self.identity),
            deadline=now + job.constraints.timeout_ms + cfg.receipt_grace_ms,
            budget_chain=encode_chain(job.budget) if job.budget else None,
        ).sign(self.identity)
        self.metrics.assignments_sent.inc()
        track.assigned_at = time.perf_counter()
        subject = subjects.assignment(cfg.federation, job_cid, executor)
        for send in (1, 2):
            try:
                reply = await self._nc.request(
                    subject,
                    asg.raw,
                    timeout=cfg.accept_timeout_ms / 1000,
                    headers=trace_headers(track.trace, job_cid),
                )
                break
            except nats.errors.NoRespondersError:
                return ng.Unreachable("no responders on its assignment subject")
            except nats.errors.TimeoutError:
                # The request or its reply may have been lost (a server died): an
                # executor that still advertises gets the same assignment once more;
                # if it accepted already it answers with the same Accept (RFC 0001 §10.4).
                if send == 1 and self.directory.get(executor) is not None:
                    continue
                return ng.NoAccept(f"no reply within {cfg.accept_timeout_ms} ms")
            except (
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionDrainingError,
            ) as exc:
                raise TransportError(f"NATS connection unusable: {exc}") from exc
        if reply.data[:1] in _DELIVERY_STARTS:
            # The job finished before the executor answered: its ReceiptDelivery is
            # the answer and stands for the Accept (RFC 0001 §8.6).
            result = self._check_delivery(reply.data, job_cid, asg, bid_env, bid, attempt)
            if isinstance(result, _BadDelivery):
                self.metrics.reject("delivery", "invalid")
                return ng.DeliveryInvalid(result.reason)
            if result is None:
                return ng.BadAccept("the answer is no valid Accept, Reject or receipt")
            # Whatever came on the receipt subject meanwhile is checked (garbage counted,
            # late receipts recorded) exactly as on the usual path, and not used.
            for data in track.deliveries:
                self._check_delivery(data, job_cid, asg, bid_env, bid, attempt)
            track.deliveries.clear()
            if isinstance(bid, Bid):  # a quote has no other bidders to release
                await self._queue_close(spec.capability, job_cid, executor, bid_env.cid)
            _emit("accepted", job_cid, executor=executor, attempt=attempt)
            return self._use_result(spec, result, track, asg, bid)
        try:
            renv = open_envelope(reply.data, max_len=64 * 1024)
            if renv.type == "reject":
                _, rej = decode_message(renv, Reject)
                if rej.signer != executor or rej.assignment != asg.cid:
                    raise ProtocolError("reject not from the assigned executor")
                renv.verify()
                return ng.Rejected(rej.detail or "", reason=rej.reason)
            _, acc = decode_message(renv, Accept)
            if acc.signer != executor or acc.assignment != asg.cid or acc.attempt != attempt:
                raise ProtocolError("accept does not match the assignment")
            renv.verify()
        except ProtocolError as exc:
            self.metrics.reject("accept", exc.reason)
            return ng.BadAccept(str(exc))
        # Winner accepted: every other bidder may release its reservation.
        if isinstance(bid, Bid):
            await self._queue_close(spec.capability, job_cid, executor, bid_env.cid)
        _emit("accepted", job_cid, executor=executor, attempt=attempt)
        return await self._await_receipt(job, spec, job_cid, track, asg, bid_env, bid, attempt)

    async def _await_receipt(
        self,
        job: Job,
        spec: JobSpec,
        job_cid: str,
        track: _JobTrack,
        asg: Envelope,
        bid_env: Envelope,
        bid: Bid | Quote,
        attempt: int,
    ) -> JobResult | ng.AttemptFailed:
        executor = bid.signer
        deadline_ms = asg.body["deadline"]
        # Executor death shows as its adverts stopping: only usable if it advertised.
        watch_liveness = self.directory.get(executor) is not None
        resent = False
        seen = 0
        while True:
            while seen < len(track.deliveries):
                data = track.deliveries[seen]
                seen += 1
                if data[:1] not in _DELIVERY_STARTS:  # an envelope: a hand-back (§10.7)?
                    handed_back = self._check_hand_back(data, job_cid, asg, executor)
                    if handed_back is not None:
                        return handed_back
                    continue
                result = self._check_delivery(data, job_cid, asg, bid_env, bid, attempt)
                if isinstance(result, _BadDelivery):
                    # The executor's delivery for this very assignment does not verify:
                    # waiting or re-sending cannot help; the next bid gets the job now.
                    self.metrics.reject("delivery", "invalid")
                    return ng.DeliveryInvalid(result.reason)
                if result is not None:
                    return self._use_result(spec, result, track, asg, bid)
            now = _now_ms()
            if now >= deadline_ms and not resent and self.directory.get(executor) is not None:
                # The delivery may have been lost while the executor lives on: send it
                # the same assignment again; if it finished, it re-publishes the very
                # same receipt (idempotency), if not, the receipt still comes.
                resent = True
                deadline_ms = now + self.config.receipt_grace_ms
                try:
                    await self._nc.publish(
                        subjects.assignment(self.config.federation, job_cid, executor), asg.raw
                    )
                except Exception as exc:
                    log.info("re-sending the assignment of job %s failed: %s", job_cid, exc)
                continue
            if now >= deadline_ms:
                return ng.NoReceipt(
                    f"none within {job.constraints.timeout_ms} ms + "
                    f"{self.config.receipt_grace_ms} ms grace"
                )
            if watch_liveness and self.directory.get(executor) is None:
                return ng.ExecutorGone("its adverts stopped (TTL expired)")
            wait_s = min(deadline_ms - now, self.config.liveness_check_ms) / 1000
            with anyio.move_on_after(wait_s):
                await track.changed.wait()

    def _use_result(
        self, spec: JobSpec, result: JobResult, track: _JobTrack, asg: Envelope, bid: Bid | Quote
    ) -> JobResult:
        """A verified receipt for the current attempt: record what was observed against
        what was promised, and countersign it in the background."""
        observed_us = int((time.perf_counter() - track.assigned_at) * 1_000_000)
        metered_us = result.receipt.metering.wall_us
        overhead_us = self.overhead.add(
            _overhead_key(bid.signer, spec.capability), observed_us, metered_us
        )
        # Charging more than the bid (or in another currency) is signed misconduct: it
        # counts as a failure, and the settlement pays the bid's price only.
        overcharged = result.price > bid.price or result.currency != bid.currency
        self._record_outcome(
            bid.signer,
            success=result.status == "ok" and not overcharged,
            service_us=market.service_time_us(observed_us, metered_us, overhead_us),
            bid=bid,
            capability=spec.capability,
            misbehaviour="overcharge" if overcharged else None,
        )
        if self._tg is not None:
            sub, track.sub = track.sub, None
            self._settling.spawn(
                self._settle, spec, result, asg, bid, observed_us, sub, overhead_us
            )
        return result

    async def _queue_close(
        self, capability: str, job_cid: str, winner: str | None, bid_cid: str | None
    ) -> None:
        """Tell the job's other bidders that bidding is over: on the next Announce of
        the same capability, or standalone after ``close_linger_ms``."""
        if self.config.close_linger_ms <= 0 or self._tg is None:
            await self._close(job_cid, winner, bid_cid)
            return
        self._closes.add(capability, job_cid, winner, bid_cid, time.monotonic())
        self._wake_close_publisher()

    def _wake_close_publisher(self) -> None:
        if self._closes_added is not None:
            self._closes_added.set()

    async def _publish_due_closes(self) -> None:
        """Background: publish, standalone, each Close notice no Announce carried in time."""
        closes = self._closes
        while True:
            due = closes.next_due()
            if due is None:
                added = self._closes_added
                assert added is not None
                await added.wait()
                self._closes_added = anyio.Event()
                continue
            delay = due - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
                continue
            for notice in closes.due(time.monotonic()):
                await self._close(notice.job_cid, notice.winner, notice.bid_cid)

    async def _close(self, job_cid: str, winner: str | None, bid_cid: str | None) -> None:
        """Publish a Close (RFC 0001 §8.7): bidding is over (a winner accepted, or the
        job was abandoned); bidders other than the winner release their reservation."""
        close = Close.build(
            signer=self.identity.did, ts=_now_ms(), job=job_cid, winner=winner, bid=bid_cid
        ).sign(self.identity)
        try:
            await self._nc.publish(subjects.closed(self.config.federation, job_cid), close.raw)
        except Exception as exc:  # best effort: reservations also expire with the bids
            log.debug("close for job %s not published: %s", job_cid, exc)

    async def _settle(
        self,
        spec: JobSpec,
        result: JobResult,
        asg: Envelope,
        bid: Bid | Quote,
        observed_us: int,
        sub: Any = None,
        overhead_us: int | None = None,
    ) -> None:
        """Countersign the accepted receipt (RFC 0001 §8.9): both sides have now signed
        the outcome.  Runs after the result is handed back, off the critical path; it
        also ends the job's subscription, with no await in between, so that the UNSUB
        and the settlement leave in one write."""
        if sub is not None:
            await unsubscribe_quietly(sub)
        settlement = Settlement.build(
            signer=self.identity.did,
            ts=_now_ms(),
            receipt=result.receipt_cid,
            job=result.job_cid,
            executor=result.executor,
            verified=result.verified,
            observed_us=observed_us,
            promised_p95_us=bid.slo.p95_us,
            charge=min(result.price, bid.price),
            currency=result.currency,
            assignment=asg.cid,
            budget=spec.budget,
            overhead_us=overhead_us,
        ).sign(self.identity)
        try:
            await self._publish_record(
                subjects.settlements(self.config.federation, self.identity.did),
                settlement.raw,
                settlement.cid,
            )
        except Exception as exc:  # never let bookkeeping fail a finished job
            log.warning("settlement for job %s not published: %s", result.job_cid, exc)

    async def _publish_tokens(self, job: Job, grant: TokenGrant) -> None:
        """Persist each token of a budget chain once, so auditors can check spend per
        root token across every originator sharing it (RFC 0002)."""
        from ..protocol.envelope import open_envelope

        for raw, cid in zip(job.budget, grant.chain_cids, strict=True):
            if cid in self._published_tokens:
                continue
            env = open_envelope(raw)
            await self._publish_record(
                subjects.tokens(self.config.federation, env.signer), raw, cid
            )
            self._published_tokens.add(cid)

    async def _publish_record(self, subject: str, raw: bytes, cid: str) -> None:
        """Persist an audit record (JetStream through the node's record store when
        there is one, else a plain publish)."""
        store = self.record_store
        if store is not None:
            await store.submit(subject, raw, cid)
        else:
            await self._nc.publish(subject, raw, headers={"Nats-Msg-Id": cid})

    def _check_hand_back(
        self, data: bytes, job_cid: str, asg: Envelope, executor: str
    ) -> ng.HandedBack | None:
        """The attempt's outcome when ``data`` is the assigned executor's signed Reject
        of this assignment sent after its Accept (RFC 0001 §10.7: handed back on a drain
        or a pause): the job is reassigned at once.  Anything else is counted, dropped."""
        try:
            renv, rej = decode_message(data, Reject, max_len=64 * 1024)
            if rej.signer != executor or rej.assignment != asg.cid or rej.job != job_cid:
                raise ProtocolError("reject not from the assigned executor for this attempt")
            renv.verify()
        except ProtocolError as exc:
            self.metrics.reject("receipt", exc.reason)
            log.warning("dropped a message on the receipt subject of job %s: %s", job_cid, exc)
            return None
        log.warning("job %s handed back by %s: %s %s", job_cid, executor, rej.reason, rej.detail)
        return ng.HandedBack(rej.detail or "", reason=rej.reason)

    def _check_delivery(
        self,
        data: bytes,
        job_cid: str,
        asg: Envelope,
        bid_env: Envelope,
        bid: Bid | Quote,
        attempt: int,
    ) -> JobResult | _BadDelivery | None:
        """The verified result of the current attempt; None for a delivery that is not
        about it (garbage is counted, a late receipt of an earlier attempt recorded);
        a :class:`_BadDelivery` for one that names the current assignment and fails
        verification: that ends the attempt at once (RFC 0001 §10.6)."""
        current = False
        try:
            delivery = ReceiptDelivery.model_validate(_decode_map(data))
            renv, receipt = decode_message(delivery.receipt, Receipt)
            if receipt.job != job_cid:
                raise ProtocolError("receipt for another job")
            if receipt.assignment != asg.cid:
                # A receipt for an earlier attempt (a replaced executor): record, don't use.
                renv.verify()
                track = self._tracks.get(job_cid)
                if track is not None:
                    track.late_receipts.append(renv.cid)
                log.info(
                    "late receipt recorded, not used",
                    extra={"job_cid": job_cid, "receipt_cid": renv.cid, "peer": receipt.signer},
                )
                return None
            current = True
            if receipt.signer != bid.signer or receipt.bid != bid_env.cid:
                raise ProtocolError("receipt not signed by the assigned executor")
            if receipt.attempt != attempt or receipt.originator != self.identity.did:
                raise ProtocolError("receipt links do not match the assignment")
            renv.verify()
            output: bytes | None = None
            if receipt.result is not None:
                if delivery.result is None:
                    raise ProtocolError("receipt names a result but none was delivered")
                output = open_sealed(delivery.result, self.identity, sender_did=receipt.signer)
                verify_blob(output, receipt.result)
                if len(output) != receipt.result_size:
                    raise ProtocolError("result size differs from the receipt")
        except ProtocolError as exc:
            self.metrics.reject("receipt", exc.reason)
            log.warning("dropped receipt delivery for job %s: %s", job_cid, exc)
            return _BadDelivery(f"{exc.reason}: {exc}") if current else None
        except Exception as exc:  # pydantic ValidationError on the container, etc.
            self.metrics.reject("receipt", "decode")
            log.warning("dropped malformed receipt delivery for job %s: %s", job_cid, exc)
            return _BadDelivery(f"decode: {exc}") if current else None
        return JobResult(
            job_cid=job_cid,
            status=receipt.status,
            output=output,
            receipt=receipt,
            receipt_cid=renv.cid,
            executor=receipt.signer,
            price=receipt.charge,
            currency=receipt.currency,
            latency_ms=0.0,
            receipt_raw=delivery.receipt,
        )


@dataclass(frozen=True, slots=True)
class _BadDelivery:
    """A delivery naming the current assignment that failed verification."""

    reason: str


#: First bytes of a ReceiptDelivery (a canonical map of 1 or 2 entries, RFC 0001 §8.11);
#: an envelope starts with 0x84 (§6.1).
_DELIVERY_STARTS: frozenset[bytes] = frozenset({b"\x81", b"\x82"})


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One step of a submitted job's life, as seen by its originator."""

    kind: str  # announced | bids | assigned | accepted | attempt_failed | completed | failed
    job_cid: str | None
    at_ms: int
    data: dict[str, Any]


class JobHandle:
    """A job submitted with :meth:`Client.submit`: status, events, result, cancel.

    Resource handling: the job runs in the client's task group; :meth:`cancel`
    stops waiting for it (an executor that already accepted still finishes and
    publishes its receipt, which the client records and ignores).
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.job_cid: str | None = None
        self.status = "pending"
        self.events: list[JobEvent] = []
        self._changed = anyio.Event()
        self._done = anyio.Event()
        self._result: JobResult | None = None
        self._error: BaseException | None = None
        self._scope: anyio.CancelScope | None = None
        self._explain: Any = None

    def _emit(self, kind: str, job_cid: str | None, **data: Any) -> None:
        if job_cid is not None:
            self.job_cid = job_cid
        self.status = kind
        self.events.append(JobEvent(kind, job_cid, _now_ms(), data))
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def explanation(self) -> Any:
        """Why the executor was chosen (available once bids were ranked)."""
        if self._result is not None:
            return self._result.explanation
        return self._explain

    async def result(self) -> JobResult:
        """Wait for the job; return its result or raise what it raised."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    async def watch(self) -> AsyncIterator[JobEvent]:
        """Yield every event (past ones first) until the job is done."""
        seen = 0
        while True:
            while seen < len(self.events):
                seen += 1
                yield self.events[seen - 1]
            if self._done.is_set():
                return
            await self._changed.wait()

    def cancel(self) -> None:
        if self._scope is not None and not self._done.is_set():
            self._scope.cancel()

    def __repr__(self) -> str:
        return f"JobHandle(job_cid={self.job_cid!r}, status={self.status!r})"


@dataclass(frozen=True, slots=True)
class CostEntry:
    job_cid: str
    capability: str
    executor: str
    status: str
    duration_ms: float
    charge: int
    currency: str


@dataclass(frozen=True)
class CostReport:
    """What this client's jobs cost: per job, per executor and in total (per currency)."""

    jobs: tuple[CostEntry, ...]

    @property
    def total(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.jobs:
            out[e.currency] = out.get(e.currency, 0) + e.charge
        return out

    @property
    def by_executor(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for e in self.jobs:
            per = out.setdefault(e.executor, {})
            per[e.currency] = per.get(e.currency, 0) + e.charge
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs": [dataclasses.asdict(e) for e in self.jobs],
            "total": self.total,
            "by_executor": self.by_executor,
        }


_current_handle: ContextVar[JobHandle | None] = ContextVar("crankmesh_job_handle", default=None)


def _emit(kind: str, job_cid: str | None, **data: Any) -> None:
    handle = _current_handle.get()
    if handle is not None:
        handle._emit(kind, job_cid, **data)


class _Bounded(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class _LazyExplanation:
    """Builds the :class:`~crankmesh.market.Explanation` on first use (it costs ~60 µs,
    which the hot path does not pay)."""

    __slots__ = ("_ranking", "_job_cid", "_requirements", "_built", "_path", "_quotes")

    def __init__(
        self,
        ranking: market.Ranking,
        job_cid: str,
        requirements: Any,
        path: str = "call_for_bids",
        quotes: market.Ranking | None = None,
    ) -> None:
        self._ranking = ranking
        self._job_cid = job_cid
        self._requirements = requirements or None
        self._built: market.Explanation | None = None
        self._path = path
        self._quotes = quotes

    def get(self) -> market.Explanation:
        if self._built is None:
            built = self._ranking.explanation(self._job_cid, self._requirements)
            quotes = self._quotes
            considered = (
                built.considered
                if quotes is self._ranking
                else quotes.explanation(self._job_cid).considered
                if quotes is not None
                else ()
            )
            self._built = replace(built, path=self._path, quotes=considered)
        return self._built

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)

    def render(self) -> str:
        return self.get().render()


_OUTCOME_RANK = {
    MatchOutcome.COMPATIBLE: 0,
    MatchOutcome.DEGRADED: 1,
    MatchOutcome.INCOMPATIBLE: 2,
}
_ACCELERATOR_GPU_TYPE = {"cuda": "cuda", "rocm": "rocm", "mps": "metal", "gpu": None}


def _quote_view(did: str, q: Quote) -> ng.PeerView:
    """A quote as the sampling order sees a peer (price, promised latency, load)."""
    return ng.PeerView(
        did=did,
        price_micros=q.price,
        running=q.load.running,
        queued=q.load.queued,
        capacity=q.load.capacity,
        p95_us=q.slo.p95_us,
        p50_us=q.slo.p50_us,
        accuracy_ppm=q.slo.accuracy_ppm,
    )


def _job_requirements(spec: JobSpec) -> list[Requirements] | None:
    """The job's requirements as capability requirements, including a GPU of the
    right type when the job's accelerator asks for one; ``None`` if it has none."""
    reqs: list[Requirements] = []
    if spec.requirements:
        reqs.append(Requirements.from_wire(spec.requirements))
    acc = spec.constraints.accelerator
    if acc in _ACCELERATOR_GPU_TYPE:
        gpu_type = _ACCELERATOR_GPU_TYPE[acc]
        reqs.append(Requirements.parse({"gpu": {"type": gpu_type} if gpu_type else {}}))
    return reqs or None


def _merge_results(results: list[MatchResult]) -> MatchResult:
    if len(results) == 1:
        return results[0]
    worst = max(results, key=lambda r: _OUTCOME_RANK[r.outcome])
    return dataclasses.replace(
        worst,
        mismatches=tuple(m for r in results for m in r.mismatches),
        warnings=tuple(w for r in results for w in r.warnings),
    )


def _requirements_wire(requirements: dict[str, Any]) -> dict[str, Any]:
    """Human-shaped requirements (seed 003: ``{"gpu": {"min_memory_gb": 8}}``) in wire form.

    Error handling: nonsense raises :class:`~crankmesh.capabilities.CapabilitySpecError`
    naming the offending key, before anything is announced.
    """
    if not requirements:
        return {}
    return Requirements.parse(requirements).to_wire()


def _decode_map(data: bytes) -> dict[str, Any]:
    from ..protocol.encoding import canonical_decode
    from ..protocol.errors import DecodeError

    doc = canonical_decode(data, max_len=16 * 1024 * 1024)
    if not isinstance(doc, dict):
        raise DecodeError("receipt delivery must be a map")
    return doc
