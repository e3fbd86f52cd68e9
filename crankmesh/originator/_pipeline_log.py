"""The local run log of pipelines: checkpoints for ``resume`` and ``reuse``.

Layout under the state directory (default ``$CRANKMESH_HOME/pipelines``, else
``~/.crankmesh/pipelines``)::

    runs/<run_id>.jsonl   one JSON object a line: {"kind": "run", ...} then one
                          {"kind": "step", ...} per verified step (fsynced as written)
    blobs/<cid>           the signed receipt envelopes and the result bytes, by CID
    steps/<step_cid>      {"receipt", "result", "job", "run"}: the latest verified
                          result of that work, for ``reuse`` across runs

Nothing read back is trusted: :meth:`RunLog.verified` re-verifies the receipt's
signature and CID, that it is ``ok``, that it names the job and the result, and that
the stored result hashes to that CID (a tampered or truncated file is just a miss).

Resource handling: every write opens, appends and closes its file.  Error handling:
an unreadable or malformed line or blob is skipped (logged), never raised.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..protocol.cid import cid_for_blob
from ..protocol.envelope import open_envelope
from ..protocol.errors import CrankmeshError
from ..protocol.messages import Receipt, decode_message

__all__ = ["RunLog", "StoredStep", "UnknownRun", "default_state_dir", "new_run_id"]

log = logging.getLogger("crankmesh.pipeline")

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_CID = re.compile(r"^b[a-z2-7]{10,120}$")


class UnknownRun(CrankmeshError, LookupError):
    """``resume`` named a run that the state directory has no log of."""

    def __init__(self, run_id: str, state_dir: Path) -> None:
        self.run_id = run_id
        super().__init__(f"no pipeline run {run_id!r} in {state_dir / 'runs'}")


def default_state_dir() -> Path:
    base = os.environ.get("CRANKMESH_HOME") or os.path.join(Path.home(), ".crankmesh")
    return Path(base) / "pipelines"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


@dataclass(frozen=True)
class StoredStep:
    """A verified result read back from the log."""

    receipt: Receipt
    receipt_cid: str
    receipt_raw: bytes
    output: bytes
    result_cid: str


class RunLog:
    """One run's checkpoint file plus the shared blob and step stores."""

    def __init__(self, state_dir: str | os.PathLike[str] | None, run_id: str) -> None:
        if not _RUN_ID.match(run_id):
            raise ValueError(f"run id {run_id!r}: use letters, digits, '_' and '-' (1-80)")
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.run_id = run_id
        self.path = self.state_dir / "runs" / f"{run_id}.jsonl"

    # ------------------------------------------------------------------ reading

    def exists(self) -> bool:
        return self.path.exists()

    def entries(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            text = self.path.read_text()
        except OSError:
            return out
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                log.warning("run log %s line %d is not JSON; skipped", self.path, n)
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def steps(self) -> dict[str, dict[str, Any]]:
        """The verified steps recorded so far, by unit key (``name`` or ``name[i]``)."""
        return {
            str(e["key"]): e
            for e in self.entries()
            if e.get("kind") == "step" and isinstance(e.get("key"), str)
        }

    def blob(self, cid: str) -> bytes | None:
        if not _CID.match(cid):
            return None
        try:
            return (self.state_dir / "blobs" / cid).read_bytes()
        except OSError:
            return None

    def verified(self, job_cid: str | None, receipt_cid: str, result_cid: str) -> StoredStep | None:
        """The stored receipt and result, re-verified; None when anything is off."""
        raw = self.blob(receipt_cid)
        output = self.blob(result_cid)
        if raw is None or output is None:
            return None
        try:
            env = open_envelope(raw)
            env.verify()
            _, receipt = decode_message(env, Receipt)
        except Exception as exc:
            log.warning("stored receipt %s does not verify: %s", receipt_cid, exc)
            return None
        if env.cid != receipt_cid or receipt.status != "ok" or receipt.result != result_cid:
            log.warning("stored receipt %s does not match its record", receipt_cid)
            return None
        if job_cid is not None and receipt.job != job_cid:
            return None
        if cid_for_blob(output) != result_cid or len(output) != receipt.result_size:
            log.warning("stored result %s does not match its CID", result_cid)
            return None
        return StoredStep(receipt, receipt_cid, raw, output, result_cid)

    def reusable(self, step_cid: str) -> tuple[dict[str, Any], StoredStep] | None:
        """The latest verified result of identical work (any run), for ``reuse``."""
        if not _CID.match(step_cid):
            return None
        try:
            doc = json.loads((self.state_dir / "steps" / step_cid).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        stored = self.verified(doc.get("job"), str(doc.get("receipt")), str(doc.get("result")))
        return None if stored is None else (doc, stored)

    # ------------------------------------------------------------------ writing

    def _append(self, doc: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _put_blob(self, cid: str, data: bytes) -> None:
        d = self.state_dir / "blobs"
        d.mkdir(parents=True, exist_ok=True)
        target = d / cid
        if target.exists():
            return
        tmp = d / f".{cid}.{secrets.token_hex(4)}"
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def start(self, doc: dict[str, Any]) -> None:
        self._append({"kind": "run", "run": self.run_id, "ts_ms": _now_ms(), **doc})

    def record_step(
        self, entry: dict[str, Any], *, receipt_raw: bytes, output: bytes, step_cid: str
    ) -> None:
        """Blobs first, then the log line: a line in the log always has its blobs."""
        self._put_blob(entry["receipt_cid"], receipt_raw)
        self._put_blob(entry["result_cid"], output)
        self._append({"kind": "step", "run": self.run_id, "ts_ms": _now_ms(), **entry})
        d = self.state_dir / "steps"
        d.mkdir(parents=True, exist_ok=True)
        pointer = {
            "job": entry["job_cid"],
            "receipt": entry["receipt_cid"],
            "result": entry["result_cid"],
            "run": self.run_id,
        }
        tmp = d / f".{step_cid}.{secrets.token_hex(4)}"
        tmp.write_text(json.dumps(pointer, sort_keys=True))
        os.replace(tmp, d / step_cid)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
