"""Export files of a receipts stream, and reading the stream itself (RFC 0002 §4).

An export is UTF-8 text in JSON Lines: one header object, then one object per record,
each line ended by ``\\n``::

    {"exported_ms":1767225600000,"federation":"acme","format":"crankmesh-export-v1","records":2,"stream":"CRANKMESH_ACME"}
    {"data":"84a162c4...","msg_id":"bagaqiera...","seq":1,"subject":"crank.acme.receipts.z6Mk..."}
    {"data":"84a162c4...","msg_id":"bagaqiera...","seq":2,"subject":"crank.acme.bids.z6Mk..."}

``data`` is the stored message (a signed envelope) in lower-case hex, ``seq`` the
stream sequence number, ``msg_id`` the ``Nats-Msg-Id`` header it was stored under
(both optional). :func:`write_export` writes keys sorted, no spaces; readers accept
any JSON formatting and ignore unknown keys. :func:`read_export` never fails on a bad
record line: it returns it as a :class:`~crankmesh.receipts.audit.Record` with a
``defect``, which the audit reports as ``unreadable_record``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api

from ..protocol.errors import CrankmeshError, StreamNotFound, TransportError
from .audit import Record

__all__ = [
    "EXPORT_FORMAT",
    "ExportError",
    "ExportHeader",
    "read_export",
    "read_stream",
    "write_export",
]

logger = logging.getLogger("crankmesh.receipts")

EXPORT_FORMAT: Final = "crankmesh-export-v1"
_FETCH_BATCH: Final = 256


class ExportError(CrankmeshError):
    """An export file cannot be read (missing, not an export, unknown format version)
    or written."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportHeader:
    """The first line of an export file."""

    federation: str
    stream: str
    exported_ms: int
    records: int | None = None
    format: str = EXPORT_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            format=self.format,
            federation=self.federation,
            stream=self.stream,
            exported_ms=self.exported_ms,
        )
        if self.records is not None:
            out["records"] = self.records
        return out


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"


def write_export(
    path: str | os.PathLike[str], records: Sequence[Record], header: ExportHeader
) -> None:
    """Write ``records`` (and ``header``, with ``records`` set to their count) to ``path``.

    The file is written next to ``path`` and renamed into place, so a reader never sees
    half an export. Records with a ``defect`` are skipped.

    Error handling: raises :class:`ExportError` when the file cannot be written.
    """
    target = Path(path)
    good = [r for r in records if r.defect is None]
    head = header.to_dict()
    head["records"] = len(good)
    tmp = target.with_name(target.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            f.write(_line(head))
            for r in good:
                obj: dict[str, Any] = {"subject": r.subject, "data": r.data.hex()}
                if r.seq is not None:
                    obj["seq"] = r.seq
                if r.msg_id is not None:
                    obj["msg_id"] = r.msg_id
                f.write(_line(obj))
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"could not write the export file {target}: {exc}") from exc


def _record_from(obj: Any, lineno: int) -> Record:
    if not isinstance(obj, dict):
        return Record("", b"", defect=f"line {lineno}: not a JSON object")
    subject, data, seq, msg_id = (
        obj.get("subject"),
        obj.get("data"),
        obj.get("seq"),
        obj.get("msg_id"),
    )
    if seq is not None and (type(seq) is not int or seq < 0):
        seq = None
    if msg_id is not None and not isinstance(msg_id, str):
        msg_id = None
    problems = []
    if not isinstance(subject, str) or not subject:
        problems.append("no 'subject' string")
        subject = ""
    raw = b""
    if not isinstance(data, str):
        problems.append("no 'data' hex string")
    else:
        try:
            raw = bytes.fromhex(data)
        except ValueError:
            problems.append("'data' is not hex")
    if problems:
        where = f" (stream seq {seq})" if seq is not None else ""
        return Record(
            subject, b"", seq, msg_id, defect=f"line {lineno}{where}: {', '.join(problems)}"
        )
    return Record(subject, raw, seq, msg_id)


def read_export(path: str | os.PathLike[str]) -> tuple[ExportHeader, list[Record]]:
    """Read an export file: its header and its records, in file order.

    A record line that is not valid becomes a ``Record`` with a ``defect`` (the audit
    reports it); a header that promises more or fewer records than the file holds adds
    one such defect record (a truncated export).

    Error handling: raises :class:`ExportError` when the file cannot be read or its
    first line is not a ``crankmesh-export-v1`` header.
    """
    source = Path(path)
    try:
        blob = source.read_bytes()
    except OSError as exc:
        raise ExportError(f"could not read the export file {source}: {exc}") from exc
    lines = blob.split(b"\n")
    try:
        head = json.loads(lines[0].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        head = None
    if not isinstance(head, dict) or "format" not in head:
        raise ExportError(
            f"{source} is not a crankmesh export: its first line is not a JSON header "
            f'with "format": "{EXPORT_FORMAT}"'
        )
    if head["format"] != EXPORT_FORMAT:
        raise ExportError(
            f"{source} has export format {head['format']!r}; this version reads "
            f"{EXPORT_FORMAT!r} only"
        )
    known = {"format", "federation", "stream", "exported_ms", "records"}
    count = head.get("records")
    exported = head.get("exported_ms")
    header = ExportHeader(
        federation=str(head.get("federation", "")),
        stream=str(head.get("stream", "")),
        exported_ms=exported if type(exported) is int else 0,
        records=count if type(count) is int else None,
        extra={k: v for k, v in head.items() if k not in known},
    )
    records: list[Record] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            records.append(Record("", b"", defect=f"line {lineno}: not JSON ({exc})"))
            continue
        records.append(_record_from(obj, lineno))
    if header.records is not None and header.records != len(records):
        records.append(
            Record(
                "",
                b"",
                defect=f"the header promises {header.records} records, the file holds "
                f"{len(records)} (a truncated or edited export)",
            )
        )
    return header, records


async def read_stream(
    nc: Client,
    stream: str,
    *,
    batch: int = _FETCH_BATCH,
    idle_timeout_s: float = 2.0,
) -> list[Record]:
    """Every message of ``stream``, in stream order, up to its last sequence at the call.

    Uses an ephemeral pull consumer (no acks, memory storage, deleted afterwards). Stops
    when the consumer reports nothing pending, at the last sequence the stream had when
    the call began, or when no message arrives for ``idle_timeout_s`` (messages removed
    by the stream's limits while reading) — it always terminates.

    Error handling: raises :class:`StreamNotFound` (a :class:`TransportError`) when the
    stream does not exist, :class:`TransportError` when JetStream cannot be reached.
    """
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError as exc:
        raise StreamNotFound(f"there is no JetStream stream {stream!r} on this server") from exc
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise TransportError(f"could not read JetStream stream {stream!r}: {exc!r}") from exc
    last = info.state.last_seq or 0
    if not info.state.messages:
        return []
    name = f"crankmesh-export-{secrets.token_hex(8)}"
    config = api.ConsumerConfig(
        name=name,
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.ALL,
        inactive_threshold=max(30.0, 4 * idle_timeout_s),
        mem_storage=True,
        num_replicas=1,
    )
    records: list[Record] = []
    try:
        await js.add_consumer(stream, config=config)
        sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise TransportError(f"could not read JetStream stream {stream!r}: {exc!r}") from exc
    try:
        done = False
        while not done:
            try:
                msgs = await sub.fetch(batch, timeout=idle_timeout_s)
            except (nats.errors.TimeoutError, TimeoutError):
                logger.warning(
                    "stream %s: nothing more after seq %s (last seq was %d); stopping",
                    stream,
                    records[-1].seq if records else "-",
                    last,
                )
                break
            for m in msgs:
                meta = m.metadata
                seq = meta.sequence.stream
                headers = m.headers or {}
                records.append(Record(m.subject, bytes(m.data), seq, headers.get("Nats-Msg-Id")))
                if seq >= last or meta.num_pending == 0:
                    done = True
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(f"lost JetStream stream {stream!r} while reading: {exc!r}") from exc
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await sub.unsubscribe()
                await js.delete_consumer(stream, name)
            except Exception as exc:  # the server forgets it after inactive_threshold
                logger.debug("could not delete the export consumer: %r", exc)
    return records
