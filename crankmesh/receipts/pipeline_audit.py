"""Auditing pipeline runs: the receipts of a run, grouped by run and step.  Pure.

A pipeline's run log (``crankmesh pipeline run``; ``originator/_pipeline_log.py``)
names, per verified step, its job CID and receipt CID.  :func:`group_by_pipeline_run`
checks each of those against the audited record stream: the receipt must be in it,
must be the ``ok`` receipt of that job, and no audit finding may concern it; every
other ``ok`` receipt for the same job is reported too (work paid twice).

Error handling: never raises for bad input; malformed run-log entries and records are
reported as problems of their run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol.envelope import open_envelope
from ..protocol.messages import Receipt, decode_message
from .audit import AuditReport, Record

__all__ = ["PipelineRunAudit", "StepAudit", "group_by_pipeline_run"]


@dataclass(frozen=True)
class StepAudit:
    key: str
    job_cid: str
    receipt_cid: str
    executor: str | None
    #: ``verified`` | ``missing`` (not in the stream) | ``mismatch`` | ``finding``
    verdict: str
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "job_cid": self.job_cid,
            "receipt_cid": self.receipt_cid,
            "executor": self.executor,
            "verdict": self.verdict,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class PipelineRunAudit:
    run_id: str
    pipeline: str | None
    steps: tuple[StepAudit, ...]
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems and all(s.verdict == "verified" for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "ok": self.ok,
            "steps": [s.to_dict() for s in self.steps],
            "problems": list(self.problems),
        }

    def render(self) -> str:
        lines = [
            f"pipeline run {self.run_id} ({self.pipeline or '?'}): "
            f"{'OK' if self.ok else 'PROBLEMS'}, {len(self.steps)} step receipt(s)"
        ]
        for s in self.steps:
            extra = f" — {'; '.join(s.problems)}" if s.problems else ""
            lines.append(f"  {s.key:<20} {s.verdict:<9} {s.receipt_cid} {s.executor or ''}{extra}")
        lines.extend(f"  problem: {p}" for p in self.problems)
        return "\n".join(lines)


def _receipts(records: Iterable[Record]) -> dict[str, Receipt]:
    out: dict[str, Receipt] = {}
    for rec in records:
        if rec.data is None or rec.defect:
            continue
        try:
            env = open_envelope(rec.data)
            if env.type != "receipt":
                continue
            _, receipt = decode_message(env, Receipt)
        except Exception:
            continue  # the audit itself reports undecodable records
        out[env.cid] = receipt
    return out


def group_by_pipeline_run(
    records: Iterable[Record],
    report: AuditReport,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[PipelineRunAudit]:
    """Audit each run (``run_id`` -> its run-log entries) against the stream's records."""
    receipts = _receipts(records)
    ok_by_job: dict[str, list[str]] = {}
    for cid, r in receipts.items():
        if r.status == "ok":
            ok_by_job.setdefault(r.job, []).append(cid)
    findings: dict[str, list[str]] = {}
    for f in report.findings:
        if f.cid:
            findings.setdefault(f.cid, []).append(f"[{f.kind}] {f.message}")
    out: list[PipelineRunAudit] = []
    for run_id, entries in runs.items():
        pipeline: str | None = None
        steps: dict[str, StepAudit] = {}
        problems: list[str] = []
        for entry in entries:
            if entry.get("kind") == "run":
                pipeline = str(entry.get("pipeline") or "") or pipeline
                continue
            if entry.get("kind") != "step":
                continue
            key, job, rcid = entry.get("key"), entry.get("job_cid"), entry.get("receipt_cid")
            if not (isinstance(key, str) and isinstance(job, str) and isinstance(rcid, str)):
                problems.append(f"a malformed step entry in the run log: {dict(entry)!r:.120}")
                continue
            steps[key] = _audit_step(key, job, rcid, receipts, ok_by_job, findings)
        out.append(PipelineRunAudit(run_id, pipeline, tuple(steps.values()), tuple(problems)))
    return out


def _audit_step(
    key: str,
    job: str,
    rcid: str,
    receipts: Mapping[str, Receipt],
    ok_by_job: Mapping[str, list[str]],
    findings: Mapping[str, list[str]],
) -> StepAudit:
    receipt = receipts.get(rcid)
    if receipt is None:
        return StepAudit(key, job, rcid, None, "missing", ("the receipt is not in the stream",))
    problems: list[str] = []
    if receipt.job != job:
        problems.append(f"the receipt is for job {receipt.job}, the run log says {job}")
    if receipt.status != "ok":
        problems.append(f"the receipt's status is {receipt.status}")
    others = [c for c in ok_by_job.get(job, []) if c != rcid]
    if others:
        problems.append(f"{len(others)} other ok receipt(s) for the same job: {', '.join(others)}")
    if problems:
        return StepAudit(key, job, rcid, receipt.signer, "mismatch", tuple(problems))
    if rcid in findings:
        return StepAudit(key, job, rcid, receipt.signer, "finding", tuple(findings[rcid]))
    return StepAudit(key, job, rcid, receipt.signer, "verified")
