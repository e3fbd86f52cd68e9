"""Reputation derived from receipts: from an audit report, or live, record by record.

Both use :func:`crankmesh.market.reputation_score` (a Beta(2, 1) posterior over good and
bad observations; one equivocation bans: score 0.0). An executor's observations:

* ``successes`` / ``failures``: its receipts with status ``ok`` / any other status,
  plus one failure for every finding that proves misbehaviour it signed itself
  (:data:`~crankmesh.receipts.audit.EXECUTOR_MISCONDUCT`: overcharge, a bid of someone
  else or for another job, a broken chain link);
* ``slo_met`` / ``slo_missed``: its receipts whose bid promised a p95, by whether the
  service time (the observed latency less the originator's measured overhead estimate,
  never less than the executor's meter) was within the promise (definitions in :mod:`.audit`);
* ``equivocations``: proven forks of its receipt chain.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass, replace
from typing import Final, TypeVar

from ..market import LocalReputation, reputation_score, service_time_us
from ..protocol.envelope import Envelope, open_envelope
from ..protocol.errors import ProtocolError
from ..protocol.messages import Bid, Receipt, Settlement, decode_message
from .audit import AuditReport

__all__ = ["ReputationBook", "reputation_from_report"]


def reputation_from_report(report: AuditReport) -> dict[str, float]:
    """DID → reputation (0..1) of every executor in ``report``; 0.0 means banned."""
    out: dict[str, float] = {}
    for did, s in report.executors.items():
        out[did] = reputation_score(
            successes=s.ok,
            failures=s.receipts - s.ok + s.misconduct,
            slo_met=s.slo_met,
            slo_missed=s.slo_jobs - s.slo_met,
            equivocations=int(s.equivocated),
        )
    return out


@dataclass(frozen=True, slots=True)
class _BidInfo:
    signer: str
    job: str
    price: int
    currency: str
    p95_us: int | None


@dataclass(slots=True)
class _Job:
    """What the book knows about one receipt (an executed job)."""

    executor: str
    originator: str
    job: str
    bid: str
    ok: bool
    wall_us: int
    charge: int
    currency: str
    promise: int | None = None
    observed_us: int | None = None
    overhead_us: int | None = None
    misconduct: bool = False
    # the SLO classification currently counted for this job (met, missed, None: no SLO)
    counted_slo: bool | None = None

    @property
    def service_us(self) -> int:
        if self.observed_us is None:
            return self.wall_us
        return service_time_us(self.observed_us, self.wall_us, self.overhead_us)

    def slo(self) -> bool | None:
        if self.promise is None:
            return None
        return self.service_us <= self.promise


_DEFAULT_MEMORY: Final = 100_000
_K = TypeVar("_K")
_V = TypeVar("_V")


def _trim(od: OrderedDict[_K, _V], limit: int) -> None:
    """Forget the oldest entries beyond ``limit``."""
    while len(od) > limit:
        od.popitem(last=False)


class ReputationBook:
    """Live reputation for a node that follows the receipts stream.

    Feed it every record as it arrives (:meth:`ingest`), in any order: a receipt's bid
    or settlement may come before or after the receipt. Each record is parsed and its
    signature verified; anything that does not verify is ignored (and counted in
    :attr:`rejected`). Ask :meth:`score` / :meth:`banned`. The counts follow the same
    rules as :func:`reputation_from_report`, so a book fed a whole stream agrees with
    an audit of it (fork detection is limited to the remembered window).

    Memory is bounded by ``memory``: the book remembers that many recent receipts
    (for joining bids and settlements), that many chain links per executor (for fork
    detection) and that many not yet joined bids and settlements; the oldest are
    forgotten first. Counts already made are kept.
    """

    def __init__(self, *, memory: int = _DEFAULT_MEMORY) -> None:
        if memory < 1:
            raise ValueError("memory must be at least 1")
        self._memory = memory
        self._counts: dict[str, LocalReputation] = {}
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._bids: OrderedDict[str, _BidInfo] = OrderedDict()
        self._waiting_bid: OrderedDict[str, str] = OrderedDict()
        self._settlements: OrderedDict[str, tuple[str, str, int, int | None]] = OrderedDict()
        # executor → seq → (receipt CID, its prev), and prev → receipt CID
        self._by_seq: dict[str, OrderedDict[int, tuple[str, str | None]]] = defaultdict(OrderedDict)
        self._by_prev: dict[str, OrderedDict[str, str]] = defaultdict(OrderedDict)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.rejected = 0

    # ------------------------------------------------------------------- queries

    def score(self, did: str) -> float:
        """Reputation of ``did`` in 0..1 (an executor never seen gets the prior, 2/3)."""
        return self.counts(did).score

    def banned(self, did: str) -> bool:
        """True once ``did`` has been caught equivocating (its score is 0.0 for good)."""
        return self.counts(did).banned

    def counts(self, did: str) -> LocalReputation:
        """The counts behind :meth:`score`."""
        return self._counts.get(did) or LocalReputation()

    def scores(self) -> dict[str, float]:
        """DID → score of every executor seen so far."""
        return {did: rep.score for did, rep in self._counts.items()}

    # ------------------------------------------------------------------- input

    def ingest(self, data: bytes | Envelope) -> bool:
        """Take one record (envelope bytes); True when it was new, authentic and used.

        Error handling: never raises for bad input: malformed or badly signed records
        are counted in :attr:`rejected` and ignored; other record types (tokens) and
        repeats are ignored.
        """
        try:
            env = data if isinstance(data, Envelope) else open_envelope(data)
            cid = env.cid
            if cid in self._seen or env.type not in ("receipt", "bid", "settlement"):
                return False
            if env.type == "receipt":
                _, receipt = decode_message(env, Receipt)
                env.verify()
                self._receipt(cid, env.signer, receipt)
            elif env.type == "bid":
                _, bid = decode_message(env, Bid)
                env.verify()
                self._bid(cid, env.signer, bid)
            else:
                _, settlement = decode_message(env, Settlement)
                env.verify()
                self._settlement(env.signer, settlement)
        except ProtocolError:
            self.rejected += 1
            return False
        self._seen[cid] = None
        _trim(self._seen, 4 * self._memory)
        return True

    def _set(self, did: str, rep: LocalReputation) -> None:
        self._counts[did] = rep

    def _receipt(self, cid: str, executor: str, r: Receipt) -> None:
        seqs = self._by_seq[executor]
        prevs = self._by_prev[executor]
        forked = seqs.setdefault(r.seq, (cid, r.prev))[0] != cid
        if r.prev is not None:
            forked = prevs.setdefault(r.prev, cid) != cid or forked
            _trim(prevs, self._memory)
        _trim(seqs, self._memory)
        if forked:
            self._set(executor, self.counts(executor).record_equivocation())
        broken: list[str] = []
        if not forked:
            before, after = seqs.get(r.seq - 1), seqs.get(r.seq + 1)
            if (r.seq == 1) != (r.prev is None) or (before is not None and r.prev != before[0]):
                broken.append(cid)
            if after is not None and after[1] != cid:
                broken.append(after[0])
        job = _Job(
            executor=executor,
            originator=r.originator,
            job=r.job,
            bid=r.bid,
            ok=r.status == "ok",
            wall_us=r.metering.wall_us,
            charge=r.charge,
            currency=r.currency,
        )
        settlement = self._settlements.pop(cid, None)
        if settlement is not None:
            self._apply_settlement(job, *settlement)
        self._set(executor, self.counts(executor).record(success=job.ok))
        self._jobs[cid] = job
        _trim(self._jobs, self._memory)
        for receipt_cid in broken:
            self._misconduct(executor, receipt_cid)
        info = self._bids.pop(r.bid, None)
        if info is None:
            self._waiting_bid[r.bid] = cid
            _trim(self._waiting_bid, self._memory)
        else:
            self._join_bid(cid, job, info)
        self._recount(job)

    def _bid(self, cid: str, signer: str, bid: Bid) -> None:
        info = _BidInfo(signer, bid.job, bid.price, bid.currency, bid.slo.p95_us)
        receipt_cid = self._waiting_bid.pop(cid, None)
        job = self._jobs.get(receipt_cid) if receipt_cid is not None else None
        if job is None or receipt_cid is None:
            self._bids[cid] = info
            _trim(self._bids, self._memory)
            return
        self._join_bid(receipt_cid, job, info)
        self._recount(job)

    def _join_bid(self, job_cid: str, job: _Job, bid: _BidInfo) -> None:
        """Take the promise from the receipt's bid; misconduct counts as a failure."""
        honest = (
            bid.signer == job.executor
            and bid.job == job.job
            and bid.currency == job.currency
            and job.charge <= bid.price
        )
        if bid.signer == job.executor:
            job.promise = bid.p95_us
        if not honest:
            self._misconduct(job.executor, job_cid)

    def _misconduct(self, executor: str, receipt_cid: str) -> None:
        """One failure per receipt that proves misbehaviour (audit: EXECUTOR_MISCONDUCT)."""
        job = self._jobs.get(receipt_cid)
        if job is not None:
            if job.misconduct:
                return
            job.misconduct = True
        rep = self.counts(executor)
        self._set(executor, replace(rep, failures=rep.failures + 1))

    def _settlement(self, signer: str, s: Settlement) -> None:
        job = self._jobs.get(s.receipt)
        if job is None:
            self._settlements[s.receipt] = (signer, s.executor, s.observed_us, s.overhead_us)
            _trim(self._settlements, self._memory)
            return
        self._apply_settlement(job, signer, s.executor, s.observed_us, s.overhead_us)
        self._recount(job)

    @staticmethod
    def _apply_settlement(
        job: _Job, signer: str, executor: str, observed_us: int, overhead_us: int | None
    ) -> None:
        # only the originator's word, about this executor, replaces the self-metered time
        if signer == job.originator and executor == job.executor:
            job.observed_us = observed_us
            job.overhead_us = overhead_us

    def _recount(self, job: _Job) -> None:
        new, old = job.slo(), job.counted_slo
        if new == old:
            return
        rep = self.counts(job.executor)
        self._set(
            job.executor,
            replace(
                rep,
                slo_met=rep.slo_met + (new is True) - (old is True),
                slo_missed=rep.slo_missed + (new is False) - (old is False),
            ),
        )
        job.counted_slo = new
