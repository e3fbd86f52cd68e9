"""The offline audit of a receipts stream (RFC 0002 §5): pure rules over records.

An auditor reads every record of a federation's stream (receipts, winning bids,
settlements and budget tokens, each a signed envelope; see :mod:`.export`) and calls
:func:`audit`. Nothing here does I/O or reads a clock: ``now_ms`` is passed in.

::

    report = audit(records, now_ms=now)
    if not report.ok:
        print(report.render())

Every rule produces :class:`Finding` objects of a kind listed in :data:`FINDING_KINDS`.
A record whose bytes are not a valid, correctly signed envelope is *not evidence*: it
is reported once (``malformed_envelope`` / ``bad_signature``) and then ignored, and the
references that land on it (a settlement of a tampered receipt, the next receipt's
``prev``) are not reported a second time.

Definitions used in the per-executor summary (:class:`ExecutorSummary`):

* **observed latency** of a receipt: ``observed_us`` of the valid settlement of that
  receipt (signed by the receipt's ``originator``, naming the receipt's signer as
  ``executor``); without one, the receipt's ``metering.wall_us``.
* **promised p95** of a receipt: ``slo.p95_us`` of the bid it names (``receipt.bid``),
  when that bid is present and carries one.
* **service time** of a receipt: ``max(metering.wall_us, observed − overhead_us)`` with
  ``overhead_us`` the originator's per-executor estimate, from measurements, of what it
  observes beyond the executor's service (network and both sides' protocol work), recorded in
  the settlement (:func:`crankmesh.market.service_time_us`); without a settlement, or one with
  no ``overhead_us``, the receipt's ``metering.wall_us``.
* **SLO compliance** (``slo_met`` / ``slo_compliance``): among the executor's receipts that
  have a promised p95, the fraction whose *service time* is at most that promise. A p95
  promise kept exactly gives about 95 %; status does not matter here (failures count in the
  success rate). **End-to-end compliance** (``slo_met_e2e`` / ``slo_compliance_e2e``): the
  fraction whose *observed latency* is at most the promise (no allowance: what the originator
  saw against what was promised).
* **p95** of a list of latencies: the nearest-rank 95th percentile (the value at
  position ``ceil(0.95 * n)`` of the sorted list, 1-based).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

from ..market import service_time_us
from ..protocol.cid import cid_for_document, parse_cid
from ..protocol.envelope import Envelope, open_envelope
from ..protocol.errors import ProtocolError
from ..protocol.identity import DID_PREFIX, did_node_id
from ..protocol.messages import Bid, Receipt, Settlement, SignedMessage, decode_message

__all__ = [
    "FINDING_KINDS",
    "RECORD_AREAS",
    "EXECUTOR_MISCONDUCT",
    "AuditReport",
    "BudgetUsage",
    "ExecutorSummary",
    "Finding",
    "Record",
    "audit",
    "p95",
]

#: Every finding kind, in report order, with what it means (RFC 0002 §5 lists the same).
FINDING_KINDS: Final[dict[str, str]] = {
    "unreadable_record": "a line of an export file is not a readable record",
    "malformed_envelope": "the record's bytes are not a valid signed envelope of a known type",
    "bad_signature": "the envelope's signature does not verify for its signer",
    "cid_mismatch": "the record is stored under a message id that is not the CID of its bytes",
    "wrong_subject": "the subject does not match the envelope's type or signer",
    "untrusted_signer": "the record is signed by a DID outside the trusted set",
    "future_timestamp": "the record's ts is later than the audit time plus the allowed skew",
    "equivocation": "two different receipts of one executor share a seq or a prev (a fork)",
    "broken_link": "a receipt's prev is not the CID of the same executor's receipt seq - 1",
    "gap": "receipts of an executor are missing between its first and last seq",
    "missing_bid": "the bid a receipt names is not in the stream",
    "foreign_bid": "the bid a receipt names was signed by someone else",
    "bid_job_mismatch": "the bid a receipt names is for another job",
    "currency_mismatch": "a charge is in another currency than the bid or budget",
    "overcharge": "a receipt charges more than the price of its bid",
    "double_execution": "two or more ok receipts for one job CID: the job ran more than once",
    "orphan_settlement": "a settlement names a receipt that is not in the stream",
    "settlement_not_by_originator": "a settlement is not signed by the receipt's originator",
    "executor_mismatch": "a settlement's executor is not the receipt's signer",
    "settlement_job_mismatch": "a settlement's job is not the receipt's job",
    "assignment_mismatch": "a settlement's assignment is not the receipt's assignment",
    "settlement_charge_mismatch": "a settlement pays more than the receipt charges",
    "budget_mismatch": "a settlement and its receipt name different budget tokens",
    "missing_token": "a budget token (or one of its parents) is not in the stream",
    "overspend": "settled charges under one root budget token exceed its amount",
}
_KIND_RANK: Final = {kind: i for i, kind in enumerate(FINDING_KINDS)}

#: Findings that prove misbehaviour signed by the executor itself; reputation counts each
#: as a failed job (an equivocation bans outright).
EXECUTOR_MISCONDUCT: Final = frozenset(
    {"broken_link", "foreign_bid", "bid_job_mismatch", "currency_mismatch", "overcharge"}
)

#: Subject area (``crank.<fed>.<area>.<node id>``) → the envelope type it carries.
RECORD_AREAS: Final[dict[str, str]] = {
    "receipts": "receipt",
    "bids": "bid",
    "settlements": "settlement",
    "tokens": "token",
}
_MODELS: Final[dict[str, type[SignedMessage]]] = {
    "receipt": Receipt,
    "bid": Bid,
    "settlement": Settlement,
}
_DEFAULT_MAX_SKEW_MS: Final = 60_000


# ------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class Record:
    """One stored message: its subject and its bytes (a signed envelope).

    ``seq`` is the stream sequence number and ``msg_id`` the ``Nats-Msg-Id`` header
    (which a correct publisher sets to the envelope CID), when known. ``defect`` is set
    instead of ``data`` for a line of an export file that could not be read.
    """

    subject: str
    data: bytes
    seq: int | None = None
    msg_id: str | None = None
    defect: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong, about the record (usually the receipt) with CID ``cid``."""

    kind: str
    cid: str | None
    executor: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "cid": self.cid,
            "executor": self.executor,
            "message": self.message,
        }

    def __str__(self) -> str:
        where = f" receipt/record {self.cid}" if self.cid else ""
        return f"[{self.kind}]{where}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutorSummary:
    """What the stream says about one executor (see the module docstring for terms)."""

    executor: str
    receipts: int
    jobs: int
    ok: int
    charged: dict[str, int]
    settled: int
    promised_p95_us: int | None
    observed_p95_us: int | None
    slo_jobs: int
    slo_met: int
    equivocated: bool
    first_seq: int | None
    last_seq: int | None
    misconduct: int
    #: receipts with a promised p95 whose observed (end-to-end) latency kept it
    slo_met_e2e: int = 0
    #: p95 of the service times of its receipts (see the module docstring)
    service_p95_us: int | None = None

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.receipts if self.receipts else None

    @property
    def slo_compliance(self) -> float | None:
        """Service-time compliance: the promise against the service time."""
        return self.slo_met / self.slo_jobs if self.slo_jobs else None

    @property
    def slo_compliance_e2e(self) -> float | None:
        """End-to-end compliance: the promise against the observed latency."""
        return self.slo_met_e2e / self.slo_jobs if self.slo_jobs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "executor": self.executor,
            "receipts": self.receipts,
            "jobs": self.jobs,
            "ok": self.ok,
            "success_rate": self.success_rate,
            "charged": dict(sorted(self.charged.items())),
            "settled": self.settled,
            "promised_p95_us": self.promised_p95_us,
            "observed_p95_us": self.observed_p95_us,
            "service_p95_us": self.service_p95_us,
            "slo_jobs": self.slo_jobs,
            "slo_met": self.slo_met,
            "slo_compliance": self.slo_compliance,
            "slo_met_e2e": self.slo_met_e2e,
            "slo_compliance_e2e": self.slo_compliance_e2e,
            "equivocated": self.equivocated,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "misconduct": self.misconduct,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetUsage:
    """Settled spending under one root budget token."""

    token: str
    issuer: str
    cap: int
    currency: str
    spent: int
    settlements: int
    originators: tuple[str, ...]

    @property
    def over(self) -> bool:
        return self.spent > self.cap

    def to_dict(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "issuer": self.issuer,
            "cap": self.cap,
            "currency": self.currency,
            "spent": self.spent,
            "settlements": self.settlements,
            "originators": list(self.originators),
            "over": self.over,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """The result of :func:`audit`: ``ok`` when there is no finding at all."""

    audited_ms: int
    records: int
    duplicates: int
    counts: dict[str, int]
    findings: tuple[Finding, ...]
    executors: dict[str, ExecutorSummary]
    budgets: tuple[BudgetUsage, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.findings

    def findings_for(self, executor: str) -> list[Finding]:
        return [f for f in self.findings if f.executor == executor]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "crankmesh-audit-v1",
            "ok": self.ok,
            "audited_ms": self.audited_ms,
            "records": self.records,
            "duplicates": self.duplicates,
            "counts": dict(sorted(self.counts.items())),
            "findings": [f.to_dict() for f in self.findings],
            "executors": [s.to_dict() for s in self.executors.values()],
            "budgets": [b.to_dict() for b in self.budgets],
            "notes": list(self.notes),
        }

    def render(self) -> str:
        """A readable report: summary line, executor table, budgets, findings, notes."""
        counts = ", ".join(f"{n} {kind}s" for kind, n in sorted(self.counts.items()))
        verdict = "OK" if self.ok else f"{len(self.findings)} finding(s)"
        lines = [f"crankmesh audit: {self.records} records ({counts or 'none'}): {verdict}"]
        if self.duplicates:
            lines[0] += f"; {self.duplicates} duplicate copies ignored"
        if self.executors:
            header = (
                "executor",
                "receipts",
                "ok %",
                "charged",
                "promised p95",
                "observed p95",
                "service p95",
                "SLO met (service)",
                "SLO met (end to end)",
                "equivocation",
            )
            rows = [header]
            for s in self.executors.values():
                charged = ", ".join(f"{v} µ{c}" for c, v in sorted(s.charged.items())) or "0"
                rows.append(
                    (
                        _short_did(s.executor),
                        str(s.receipts),
                        _pct(s.success_rate),
                        charged,
                        _fmt_us(s.promised_p95_us) if s.promised_p95_us is not None else "-",
                        _fmt_us(s.observed_p95_us) if s.observed_p95_us is not None else "-",
                        _fmt_us(s.service_p95_us) if s.service_p95_us is not None else "-",
                        _pct(s.slo_compliance),
                        _pct(s.slo_compliance_e2e),
                        "YES" if s.equivocated else "no",
                    )
                )
            from .._tables import render_table  # the one table renderer

            lines.append("")
            lines.append(render_table(header, rows[1:]))
        if self.budgets:
            lines += ["", "budgets (root tokens):"]
            for b in self.budgets:
                flag = "  OVERSPENT" if b.over else ""
                lines.append(
                    f"  {b.token}  spent {b.spent} of {b.cap} µ{b.currency} by "
                    f"{b.settlements} settlement(s) from {len(b.originators)} originator(s){flag}"
                )
        if self.findings:
            lines += ["", "findings:"]
            for f in self.findings:
                who = f" {_short_did(f.executor)}" if f.executor else ""
                lines.append(f"  [{f.kind}]{who} {f.cid or '-'}")
                lines.append(f"      {f.message}")
        if self.notes:
            lines += ["", "notes:"]
            lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


def _short_did(did: str) -> str:
    """``did:key:z6MkiTBz…ooWp`` for tables."""
    if did.startswith("did:key:") and len(did) > 24:
        return f"did:key:{did[8:16]}…{did[-4:]}"
    return did


def _fmt_us(us: int) -> str:
    """A duration in µs, in the most readable unit (``850 µs``, ``12.5 ms``, ``3.2 s``)."""
    if us < 1000:
        return f"{us} µs"
    if us < 1_000_000:
        return f"{us / 1000:.4g} ms"
    return f"{us / 1_000_000:.4g} s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def p95(values: Iterable[int]) -> int | None:
    """Nearest-rank 95th percentile; ``None`` for no values."""
    xs = sorted(values)
    if not xs:
        return None
    return xs[max(0, math.ceil(0.95 * len(xs)) - 1)]


def _median(values: Iterable[int]) -> int | None:
    xs = sorted(values)
    return xs[(len(xs) - 1) // 2] if xs else None


# ------------------------------------------------------------------------------ parsing


@dataclass(frozen=True, slots=True)
class _Token:
    cid: str
    signer: str
    amount: int
    currency: str
    parent: str | None


@dataclass(slots=True)
class _Parsed:
    cid: str
    env: Envelope
    msg: Any  # Receipt | Bid | Settlement | _Token


def _token_from(env: Envelope) -> _Token:
    body = env.body
    amount, currency, parent = body.get("amount"), body.get("currency"), body.get("parent")
    if type(amount) is not int or amount < 0:
        raise ProtocolError("token 'amount' must be a non-negative integer")
    if not isinstance(currency, str) or not currency:
        raise ProtocolError("token 'currency' must be a currency code")
    if parent is not None:
        if not isinstance(parent, str):
            raise ProtocolError("token 'parent' must be a CID string")
        parse_cid(parent)
    return _Token(env.cid, env.signer, amount, currency, parent)


def _subject_parts(subject: str) -> tuple[str, str] | None:
    """``(area, node_id)`` of ``crank.<fed>.<area>.<node id>``, or None."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "crank" or parts[2] not in RECORD_AREAS:
        return None
    return parts[2], parts[3]


# ------------------------------------------------------------------------------ the audit


class _Auditor:
    def __init__(
        self,
        now_ms: int,
        trusted: Collection[str] | None,
        max_skew_ms: int,
    ) -> None:
        self.now_ms = now_ms
        self.trusted = frozenset(trusted) if trusted is not None else None
        self.max_skew_ms = max_skew_ms
        self.findings: list[Finding] = []
        self.notes: list[str] = []
        self.seen: set[str] = set()
        self.duplicates = 0
        self.counts: dict[str, int] = defaultdict(int)
        # CIDs (computed and claimed message ids) of records that are not evidence.
        self.bad: set[str] = set()
        # (executor DID, seq) claimed by receipts that are not evidence.
        self.bad_slots: set[tuple[str, int]] = set()
        self.receipts: dict[str, _Parsed] = {}
        self.bids: dict[str, _Parsed] = {}
        self.settlements: list[_Parsed] = []
        self.tokens: dict[str, _Token] = {}

    def find(self, kind: str, cid: str | None, executor: str | None, message: str) -> None:
        assert kind in _KIND_RANK, kind
        self.findings.append(Finding(kind, cid, executor, message))

    # ---------------------------------------------------------------- one record

    def add(self, record: Record) -> None:
        if record.defect is not None:
            self.find("unreadable_record", record.msg_id, None, record.defect)
            return
        cid = cid_for_document(record.data)
        where = f"record on {record.subject!r}" + (
            f" (stream seq {record.seq})" if record.seq is not None else ""
        )
        moved = record.msg_id is not None and record.msg_id != cid
        if cid in self.seen:
            self.duplicates += 1
            if moved and cid not in self.bad:
                self.find(
                    "cid_mismatch",
                    record.msg_id,
                    None,
                    f"{where} is a copy of {cid} stored under message id {record.msg_id}",
                )
            return
        self.seen.add(cid)
        ident = record.msg_id if record.msg_id is not None else cid
        moved_note = (
            f"; its bytes no longer hash to its message id (they hash to {cid})" if moved else ""
        )
        try:
            env = open_envelope(record.data)
        except ProtocolError as exc:
            self._not_evidence(cid, record)
            self.find("malformed_envelope", ident, None, f"{where}: {exc}{moved_note}")
            return
        signer = env.signer
        executor = signer if env.type in ("receipt", "bid") else None
        try:
            env.verify()
        except ProtocolError as exc:
            self._not_evidence(cid, record, env)
            self.find(
                "bad_signature",
                ident,
                executor,
                f"{where}: the {env.type} signature does not verify for {signer} ({exc}); "
                f"the record was altered or forged{moved_note}",
            )
            return
        try:
            msg: Any
            if env.type == "token":
                msg = _token_from(env)
            elif env.type in _MODELS:
                _, msg = decode_message(env, _MODELS[env.type])
            else:
                msg = None
        except ProtocolError as exc:
            # signed by its signer, but not a valid message: the signer's own defect
            self._not_evidence(cid, record, env)
            self.find("malformed_envelope", ident, executor, f"{where}: {exc}{moved_note}")
            return
        # From here on the envelope is authentic: it is evidence.
        if moved:
            self.find(
                "cid_mismatch",
                cid,
                executor,
                f"{where} ({env.type} signed by {signer}) is stored under message id "
                f"{record.msg_id}, but its bytes hash to {cid}",
            )
        if msg is None:
            self.find(
                "wrong_subject",
                cid,
                None,
                f"{where}: a {env.type!r} envelope does not belong in the receipts stream",
            )
            return
        self.counts[env.type] += 1
        parts = _subject_parts(record.subject)
        expected_area = next(a for a, t in RECORD_AREAS.items() if t == env.type)
        if parts is None or parts[0] != expected_area or parts[1] != did_node_id(signer):
            self.find(
                "wrong_subject",
                cid,
                executor,
                f"{where}: a {env.type} signed by {signer} belongs on "
                f"crank.<fed>.{expected_area}.{did_node_id(signer)}",
            )
        if self.trusted is not None and signer not in self.trusted:
            self.find(
                "untrusted_signer",
                cid,
                executor,
                f"{where}: {env.type} signed by {signer}, who is not in the trusted set",
            )
        if env.ts > self.now_ms + self.max_skew_ms:
            self.find(
                "future_timestamp",
                cid,
                executor,
                f"{where}: {env.type} ts {env.ts} is {env.ts - self.now_ms} ms after the "
                f"audit time {self.now_ms} (allowed skew {self.max_skew_ms} ms)",
            )
        parsed = _Parsed(cid, env, msg)
        if env.type == "receipt":
            self.receipts[cid] = parsed
        elif env.type == "bid":
            self.bids[cid] = parsed
        elif env.type == "settlement":
            self.settlements.append(parsed)
        else:
            self.tokens[cid] = msg

    def _not_evidence(self, cid: str, record: Record, env: Envelope | None = None) -> None:
        self.bad.add(cid)
        if record.msg_id is not None:
            self.bad.add(record.msg_id)
        if env is not None and env.type == "receipt":
            seq = env.body.get("seq")
            if type(seq) is int:
                self.bad_slots.add((env.signer, seq))

    # ---------------------------------------------------------------- the whole history

    def finish(self) -> AuditReport:
        by_executor: dict[str, list[_Parsed]] = defaultdict(list)
        for p in self.receipts.values():
            by_executor[p.env.signer].append(p)
        equivocated: set[str] = set()
        seq_ranges: dict[str, tuple[int, int]] = {}
        for executor in sorted(by_executor):
            chain = by_executor[executor]
            if self._check_chain(executor, chain):
                equivocated.add(executor)
            seqs = [p.msg.seq for p in chain]
            seq_ranges[executor] = (min(seqs), max(seqs))
        for p in self.receipts.values():
            self._check_bid(p)
        self._check_double_execution()
        settled = self._check_settlements()
        budgets = self._check_budgets(settled)
        executors = {
            executor: self._summary(
                executor, by_executor[executor], settled, executor in equivocated, seq_ranges
            )
            for executor in sorted(by_executor)
        }
        findings = sorted(
            self.findings, key=lambda f: (_KIND_RANK[f.kind], f.executor or "", f.cid or "")
        )
        return AuditReport(
            audited_ms=self.now_ms,
            records=len(self.seen),
            duplicates=self.duplicates,
            counts=dict(self.counts),
            findings=tuple(findings),
            executors=executors,
            budgets=budgets,
            notes=tuple(self.notes),
        )

    def _check_chain(self, executor: str, chain: list[_Parsed]) -> bool:
        """Forks, links and gaps of one executor's receipts; True on equivocation."""
        by_seq: dict[int, list[_Parsed]] = defaultdict(list)
        by_prev: dict[str, list[_Parsed]] = defaultdict(list)
        for p in sorted(chain, key=lambda p: (p.msg.seq, p.cid)):
            by_seq[p.msg.seq].append(p)
            if p.msg.prev is not None:
                by_prev[p.msg.prev].append(p)
        forked = False
        reported: list[frozenset[str]] = []
        implicated: set[str] = set()
        for seq, group in sorted(by_seq.items()):
            if len(group) > 1:
                forked = True
                cids = frozenset(p.cid for p in group)
                reported.append(cids)
                implicated |= cids
                self.find(
                    "equivocation",
                    group[0].cid,
                    executor,
                    f"{len(group)} different receipts with seq {seq} signed by {executor}: "
                    + ", ".join(p.cid for p in group)
                    + " (a forked chain)",
                )
        for prev, group in sorted(by_prev.items()):
            cids = frozenset(p.cid for p in group)
            if len(group) > 1 and not any(cids <= r for r in reported):
                forked = True
                reported.append(cids)
                implicated |= cids
                self.find(
                    "equivocation",
                    group[0].cid,
                    executor,
                    f"{len(group)} different receipts signed by {executor} all follow {prev}: "
                    + ", ".join(f"{p.cid} (seq {p.msg.seq})" for p in group)
                    + " (a forked chain)",
                )
        cid_seq = {p.cid: p.msg.seq for p in chain}
        for seq, group in sorted(by_seq.items()):
            for p in group:
                prev = p.msg.prev
                if seq == 1:
                    if prev is not None:
                        self.find(
                            "broken_link",
                            p.cid,
                            executor,
                            f"receipt seq 1 must not have a prev, but names {prev}",
                        )
                    continue
                if prev is None:
                    self.find(
                        "broken_link",
                        p.cid,
                        executor,
                        f"receipt seq {seq} has no prev (only seq 1 may start a chain)",
                    )
                    continue
                before = by_seq.get(seq - 1)
                if before is None or prev in self.bad or p.cid in implicated:
                    continue  # a gap (reported below), or explained by another finding
                if prev not in {b.cid for b in before}:
                    target = (
                        f"this executor's receipt seq {cid_seq[prev]}"
                        if prev in cid_seq
                        else "no receipt in the stream"
                    )
                    self.find(
                        "broken_link",
                        p.cid,
                        executor,
                        f"receipt seq {seq} names prev {prev} ({target}), but this executor's "
                        f"receipt seq {seq - 1} is {before[0].cid}",
                    )
        present = set(by_seq) | {s for (e, s) in self.bad_slots if e == executor}
        first = min(present)
        if first > 1:
            self.notes.append(
                f"{executor}: history starts at receipt seq {first} "
                "(older receipts expired from the stream or were not exported)"
            )
        ordered = sorted(present)
        # runs of missing positions between consecutive present ones (never materialise a
        # range: a signed seq can be as large as 2**63 - 1)
        holes = [(a + 1, b - 1) for a, b in zip(ordered, ordered[1:], strict=False) if b > a + 1]
        for lo, end in holes:
            hi = end
            after = by_seq.get(end + 1, [])
            if after and all(p.msg.prev in self.bad for p in after):
                hi -= 1  # the receipt before it is in the stream, but tampered
            if hi < lo:
                continue
            span = f"seq {lo}" if lo == hi else f"seqs {lo}..{hi}"
            next_cid = after[0].cid if after else None
            self.find(
                "gap",
                next_cid,
                executor,
                f"receipt {span} of {executor} missing from the stream "
                f"({hi - lo + 1} receipt(s) between seq {lo - 1} and seq {end + 1})",
            )
        return forked

    def _check_bid(self, p: _Parsed) -> None:
        r: Receipt = p.msg
        executor = p.env.signer
        bp = self.bids.get(r.bid)
        if bp is None:
            if r.bid not in self.bad:
                self.find(
                    "missing_bid",
                    p.cid,
                    executor,
                    f"receipt seq {r.seq} for job {r.job} names bid {r.bid}, "
                    "which is not in the stream",
                )
            return
        bid: Bid = bp.msg
        if bp.env.signer != executor:
            self.find(
                "foreign_bid",
                p.cid,
                executor,
                f"receipt seq {r.seq} names bid {r.bid}, signed by {bp.env.signer}, "
                f"not by the receipt's signer {executor}",
            )
        if bid.job != r.job:
            self.find(
                "bid_job_mismatch",
                p.cid,
                executor,
                f"receipt seq {r.seq} is for job {r.job}, but its bid {r.bid} is for job {bid.job}",
            )
        if bid.currency != r.currency:
            self.find(
                "currency_mismatch",
                p.cid,
                executor,
                f"receipt seq {r.seq} charges in {r.currency}, its bid {r.bid} priced "
                f"in {bid.currency}",
            )
        elif r.charge > bid.price:
            self.find(
                "overcharge",
                p.cid,
                executor,
                f"receipt seq {r.seq} charges {r.charge} µ{r.currency}, above its bid's "
                f"price of {bid.price} µ{bid.currency} (bid {r.bid})",
            )

    def _check_double_execution(self) -> None:
        """A job CID with more than one ``ok`` receipt ran (and was delivered) more than
        once (RFC 0002 §5.4): one finding per receipt after the first, by ``ts`` then CID."""
        by_job: dict[str, list[_Parsed]] = defaultdict(list)
        for p in self.receipts.values():
            if p.msg.status == "ok":
                by_job[p.msg.job].append(p)
        for job, oks in by_job.items():
            if len(oks) < 2:
                continue
            oks.sort(key=lambda p: (p.env.ts, p.cid))
            first: Receipt = oks[0].msg
            for p in oks[1:]:
                r: Receipt = p.msg
                self.find(
                    "double_execution",
                    p.cid,
                    p.env.signer,
                    f"job {job} has {len(oks)} ok receipts: this one (attempt {r.attempt}, "
                    f"seq {r.seq}) after {oks[0].cid} by {oks[0].env.signer} "
                    f"(attempt {first.attempt}, seq {first.seq})",
                )

    def _check_settlements(self) -> dict[str, _Parsed]:
        """Settlement checks; returns receipt CID → the settlement that settled it.

        A settlement counts (for budgets) when signed by the receipt's originator; among
        several for one receipt, the one with the largest charge counts (never twice).
        """
        settled: dict[str, _Parsed] = {}
        for sp in sorted(self.settlements, key=lambda sp: (sp.env.ts, sp.cid)):
            s: Settlement = sp.msg
            rp = self.receipts.get(s.receipt)
            if rp is None:
                if s.receipt not in self.bad:
                    self.find(
                        "orphan_settlement",
                        s.receipt,
                        s.executor,
                        f"settlement {sp.cid} by {sp.env.signer} settles receipt {s.receipt}, "
                        "which is not in the stream",
                    )
                continue
            r: Receipt = rp.msg
            executor = rp.env.signer
            if sp.env.signer != r.originator:
                self.find(
                    "settlement_not_by_originator",
                    rp.cid,
                    executor,
                    f"settlement {sp.cid} of receipt seq {r.seq} is signed by {sp.env.signer}, "
                    f"not by the job's originator {r.originator}",
                )
                continue
            if s.executor != executor:
                self.find(
                    "executor_mismatch",
                    rp.cid,
                    executor,
                    f"settlement {sp.cid} names executor {s.executor}, but the receipt is "
                    f"signed by {executor}",
                )
            if s.job != r.job:
                self.find(
                    "settlement_job_mismatch",
                    rp.cid,
                    executor,
                    f"settlement {sp.cid} is for job {s.job}, the receipt for job {r.job}",
                )
            assignment = getattr(s, "assignment", None)
            if assignment is not None and assignment != r.assignment:
                self.find(
                    "assignment_mismatch",
                    rp.cid,
                    executor,
                    f"settlement {sp.cid} names assignment {assignment}, the receipt executed "
                    f"assignment {r.assignment}",
                )
            if s.currency != r.currency or s.charge > r.charge:
                self.find(
                    "settlement_charge_mismatch",
                    rp.cid,
                    executor,
                    f"settlement {sp.cid} pays {s.charge} µ{s.currency}, the receipt charges "
                    f"{r.charge} µ{r.currency}",
                )
            budget = getattr(s, "budget", None)
            if budget is not None and r.budget is not None and budget != r.budget:
                self.find(
                    "budget_mismatch",
                    rp.cid,
                    executor,
                    f"settlement {sp.cid} charges budget token {budget}, the receipt names "
                    f"{r.budget}",
                )
            current = settled.get(rp.cid)
            if current is None or s.charge > current.msg.charge:
                settled[rp.cid] = sp
        return settled

    def _root_of(self, token_cid: str, receipt_cid: str, missing: set[str]) -> _Token | None:
        cid: str | None = token_cid
        visited: set[str] = set()
        token: _Token | None = None
        while cid is not None:
            if cid in visited:  # cannot happen with real hashes; never loop anyway
                return None
            visited.add(cid)
            token = self.tokens.get(cid)
            if token is None:
                if cid not in missing and cid not in self.bad:
                    missing.add(cid)
                    what = "budget token" if cid == token_cid else f"parent of {token_cid}:"
                    self.find(
                        "missing_token",
                        cid,
                        None,
                        f"{what} {cid} is not in the stream, so spending under it "
                        f"(e.g. receipt {receipt_cid}) cannot be checked",
                    )
                return None
            cid = token.parent
        return token

    def _check_budgets(self, settled: dict[str, _Parsed]) -> tuple[BudgetUsage, ...]:
        spent: dict[str, int] = defaultdict(int)
        count: dict[str, int] = defaultdict(int)
        originators: dict[str, set[str]] = defaultdict(set)
        roots: dict[str, _Token] = {}
        missing: set[str] = set()
        for receipt_cid, sp in sorted(settled.items()):
            s: Settlement = sp.msg
            r: Receipt = self.receipts[receipt_cid].msg
            budget = getattr(s, "budget", None) or r.budget
            if budget is None:
                continue
            root = self._root_of(budget, receipt_cid, missing)
            if root is None:
                continue
            if s.currency != root.currency:
                self.find(
                    "currency_mismatch",
                    receipt_cid,
                    self.receipts[receipt_cid].env.signer,
                    f"settlement {sp.cid} pays {s.charge} µ{s.currency} from budget token "
                    f"{budget}, whose root {root.cid} is in {root.currency}",
                )
                continue
            roots[root.cid] = root
            spent[root.cid] += s.charge
            count[root.cid] += 1
            originators[root.cid].add(sp.env.signer)
        usages = []
        for cid in sorted(roots):
            root = roots[cid]
            usage = BudgetUsage(
                token=cid,
                issuer=root.signer,
                cap=root.amount,
                currency=root.currency,
                spent=spent[cid],
                settlements=count[cid],
                originators=tuple(sorted(originators[cid])),
            )
            usages.append(usage)
            if usage.over:
                self.find(
                    "overspend",
                    cid,
                    None,
                    f"budget token {cid} (issued by {root.signer}) caps spending at "
                    f"{root.amount} µ{root.currency}, but {usage.settlements} settlement(s) "
                    f"from {len(usage.originators)} originator(s) ("
                    + ", ".join(usage.originators)
                    + f") spent {usage.spent} µ{root.currency} under it, "
                    f"{usage.spent - root.amount} over",
                )
        return tuple(usages)

    def _summary(
        self,
        executor: str,
        chain: list[_Parsed],
        settled: dict[str, _Parsed],
        equivocated: bool,
        seq_ranges: dict[str, tuple[int, int]],
    ) -> ExecutorSummary:
        charged: dict[str, int] = defaultdict(int)
        observed: list[int] = []
        services: list[int] = []
        promises: list[int] = []
        slo_jobs = slo_met = slo_met_e2e = ok = n_settled = 0
        for p in chain:
            r: Receipt = p.msg
            charged[r.currency] += r.charge
            ok += r.status == "ok"
            latency = service = r.metering.wall_us
            sp = settled.get(p.cid)
            if sp is not None and sp.msg.executor == executor:
                n_settled += 1
                latency = sp.msg.observed_us
                service = service_time_us(latency, r.metering.wall_us, sp.msg.overhead_us)
            observed.append(latency)
            services.append(service)
            bp = self.bids.get(r.bid)
            promise = bp.msg.slo.p95_us if bp is not None and bp.env.signer == executor else None
            if promise is not None:
                promises.append(promise)
                slo_jobs += 1
                slo_met += service <= promise
                slo_met_e2e += latency <= promise
        first, last = seq_ranges[executor]
        return ExecutorSummary(
            executor=executor,
            receipts=len(chain),
            jobs=len({p.msg.job for p in chain}),
            ok=ok,
            charged=dict(charged),
            settled=n_settled,
            promised_p95_us=_median(promises),
            observed_p95_us=p95(observed),
            slo_jobs=slo_jobs,
            slo_met=slo_met,
            slo_met_e2e=slo_met_e2e,
            service_p95_us=p95(services),
            equivocated=equivocated,
            first_seq=first,
            last_seq=last,
            misconduct=len(
                {
                    f.cid
                    for f in self.findings
                    if f.executor == executor and f.kind in EXECUTOR_MISCONDUCT
                }
            ),
        )


def audit(
    records: Iterable[Record],
    *,
    now_ms: int,
    trusted: Collection[str] | None = None,
    max_skew_ms: int = _DEFAULT_MAX_SKEW_MS,
) -> AuditReport:
    """Audit a receipts stream (every rule of RFC 0002 §5); pure, deterministic.

    ``records`` in any order (duplicates of the same bytes are counted once).
    ``now_ms`` is the audit time: records dated more than ``max_skew_ms`` after it are
    reported (``future_timestamp``). ``trusted``, when given, is the set of DIDs whose
    records the auditor accepts; anything signed by another DID is reported
    (``untrusted_signer``) and still audited.

    Error handling: never raises for bad input; every defect is a :class:`Finding`.
    """
    if trusted is not None and any(not d.startswith(DID_PREFIX) for d in trusted):
        raise ValueError("trusted must be a collection of did:key DIDs")
    auditor = _Auditor(now_ms, trusted, max_skew_ms)
    for record in records:
        auditor.add(record)
    return auditor.finish()
