"""Persisting signed records in JetStream, without ever losing one (RFC 0002 §2).

One stream per federation, ``CRANKMESH_<FED>`` by default, holds every record an
auditor needs::

    crank.<fed>.receipts.<executor node id>      Receipt envelopes
    crank.<fed>.bids.<executor node id>          the winning Bid of each receipt
    crank.<fed>.settlements.<originator node id> Settlement envelopes
    crank.<fed>.tokens.<issuer node id>          budget Token envelopes

Every record is published with ``Nats-Msg-Id`` = its envelope CID, so JetStream drops
a republished copy (within the stream's duplicate window; the audit ignores identical
copies outside it too).

Records of the hot path (an executor's winning bid and receipt, an originator's
settlement) are *submitted* (:meth:`RecordStore.submit`): queued, and published by the
background loop :meth:`RecordStore.run` in batches (up to :data:`BATCH_MAX` records back to
back, then their acks) after waiting up to ``linger_s`` for a batch to fill, so a burst of
jobs costs one event-loop trip, one socket write and one read of acks per batch instead
of per record. When JetStream cannot take a record (no responders, a timeout, JetStream
not enabled, no stream, the connection down) it stays queued and the loop retries in
order, with backoff, once JetStream answers again.

With a ``spill_path`` the queue is journaled: every submitted record is appended to
that file (one ``write(2)`` on a descriptor kept open, before ``submit`` returns) and
the file is truncated once JetStream has answered for everything in it. A store killed
at any point (SIGKILL, a crash) therefore loses no record it accepted: the next store
on the same file publishes what is left first (JetStream drops the copies it already
has, by message id). The journal is not fsynced per record (a power loss may lose its
last records), only on :meth:`RecordStore.close`. Without a spill file, up to
``buffer_limit`` records wait in memory and die with the process. Records beyond
``buffer_limit`` are kept in the journal only and read back in order. Typical use,
inside a node's task group::

    async with open_record_store(nc, federation="acme") as store:
        await store.publish_envelope(receipt_env)
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import logging
import os
import re
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.to_thread
import nats.errors
import nats.js.errors
from anyio.abc import TaskStatus
from nats.aio.client import Client
from nats.js import api

from ..protocol import subjects
from ..protocol.envelope import Envelope
from ..protocol.errors import TransportError
from ..protocol.identity import did_node_id

__all__ = [
    "BATCH_MAX",
    "RECORD_KINDS",
    "PublishOutcome",
    "RecordStore",
    "open_record_store",
    "record_subject",
    "record_subjects",
    "stream_name",
]

logger = logging.getLogger("crankmesh.receipts")

#: Envelope type → subject area of the stream.
RECORD_KINDS: Final[dict[str, str]] = {
    "receipt": "receipts",
    "bid": "bids",
    "settlement": "settlements",
    "token": "tokens",
}

PublishOutcome = Literal["stored", "duplicate", "buffered", "spilled", "dropped", "rejected"]
"""What :meth:`RecordStore.publish` did with a record.

``stored``: JetStream acknowledged it; ``duplicate``: JetStream already had a record
with this message id, or (:meth:`RecordStore.submit`) this store has already queued or
stored one recently (a quote many jobs were assigned on is sent once, not per job);
``buffered`` / ``spilled``: kept in memory / in the spill file for the flush loop;
``dropped``: the buffer was full and there is no spill file (counted in
:attr:`RecordStore.dropped`); ``rejected``: JetStream refused it for good (e.g. larger
than the stream's maximum message size; counted in :attr:`RecordStore.rejected`).
"""

_HEADER: Final = "Nats-Msg-Id"
_SPILL_HEAD: Final = struct.Struct(">HHI")  # subject length, msg id length, data length
_BACKOFF_MIN_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0
#: Records the flush loop publishes back to back before it waits for their acks (a batch).
BATCH_MAX: Final = 64
_WINDOW: Final = BATCH_MAX
#: Answered bytes at the head of the journal beyond which it is rewritten without them
#: (when it never empties under a steady load).
_COMPACT_BYTES: Final = 4 * 1024 * 1024
#: The unanswered tail a compaction copies at most (in the event loop; else it waits).
_COMPACT_TAIL_MAX: Final = 1024 * 1024
#: Message ids remembered as queued or stored, so that a repeated submit costs nothing.
_RECENT_MAX: Final = 4096


def stream_name(federation: str) -> str:
    """The default stream of a federation: ``CRANKMESH_`` + upper-case name, every
    character other than ``A-Z0-9`` replaced by ``_``."""
    subjects.check_federation(federation)
    return "CRANKMESH_" + re.sub(r"[^A-Z0-9]", "_", federation.upper())


def record_subjects(federation: str) -> list[str]:
    """The subject filters the stream binds (one per record area)."""
    subjects.check_federation(federation)
    return [f"{subjects.ROOT}.{federation}.{area}.*" for area in RECORD_KINDS.values()]


def record_subject(federation: str, env: Envelope) -> str:
    """Where a record goes: ``crank.<fed>.<area>.<signer node id>``."""
    area = RECORD_KINDS.get(env.type)
    if area is None:
        raise ValueError(
            f"a {env.type!r} envelope is not a stream record; records are {sorted(RECORD_KINDS)}"
        )
    return f"{subjects.ROOT}.{federation}.{area}.{did_node_id(env.signer)}"


@dataclass(frozen=True, slots=True)
class _Pending:
    subject: str
    data: bytes
    msg_id: str
    #: where the record ends in the journal (a logical offset, see RecordStore._jbase);
    #: -1 when it is not journaled
    end: int = -1


def _frame(record: _Pending) -> bytes:
    """A record as the journal stores it: length header, subject, message id, data."""
    subject, msg_id = record.subject.encode(), record.msg_id.encode()
    head = _SPILL_HEAD.pack(len(subject), len(msg_id), len(record.data))
    return b"".join((head, subject, msg_id, record.data))


class _Transient(Exception):
    """Internal: JetStream did not take the record now; try again later."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        #: no stream answered: JetStream is off, or the stream is missing
        self.no_stream = isinstance(cause, nats.js.errors.NoStreamResponseError)
        #: records of a pipelined window answered before this one
        self.done = 0


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, nats.js.errors.APIError):
        # 503: JetStream temporarily unavailable; other API errors are permanent.
        return isinstance(exc, nats.js.errors.ServiceUnavailableError) or exc.code == 503
    return isinstance(
        exc,
        nats.js.errors.NoStreamResponseError
        | nats.errors.NoRespondersError
        | nats.errors.TimeoutError
        | nats.errors.ConnectionClosedError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.ConnectionDrainingError
        | nats.errors.OutboundBufferLimitError
        | nats.errors.StaleConnectionError
        | TimeoutError
        | OSError,
    )


class RecordStore:
    """Publishes signed records to the federation's JetStream stream, in batches off
    the hot path, buffering through outages.

    Resource handling:
        Does not own ``nc`` (the caller connects and closes it). Holds at most
        ``buffer_limit`` records in memory. With ``spill_path``, every record queued
        for the loop is also appended to that file (the journal, see the module doc)
        and records beyond ``buffer_limit`` live only there until they are read back
        in order; a journal left by a previous run (killed, or stopped while JetStream
        was away) is picked up at construction and published first. :meth:`run` must
        run (in the caller's task group) for queued records to be published in the
        background; :meth:`flush` publishes them in the foreground; :meth:`close`
        flushes, then fsyncs and closes the journal.

    Batching: the loop publishes a batch once ``batch_size`` records are queued or
    the oldest has waited ``linger_s`` seconds (0: at once), whichever is first.

    Error handling:
        :meth:`publish` and :meth:`submit` never raise for JetStream trouble: a
        transient failure (no responders, timeout, no stream, JetStream disabled,
        disconnected) keeps the record queued; the loop retries with exponential
        backoff (50 ms to 2 s) and, on "no stream", re-creates the stream. A permanent
        refusal (any other JetStream API error) is logged with the record's CID and
        counted in :attr:`rejected`. A record that finds the buffer full with no
        journal to take it is logged and counted in :attr:`dropped`. A journal that
        cannot be written (disk full, read-only) is logged once and switched off: the
        store goes on in memory. :meth:`ensure_stream` raises :class:`TransportError`.
    """

    def __init__(
        self,
        nc: Client,
        *,
        federation: str,
        stream: str | None = None,
        max_age_s: float = 90 * 86_400.0,
        max_bytes: int = -1,
        max_msg_size: int = 8 * 1024 * 1024 + 4096,
        replicas: int = 1,
        duplicate_window_s: float = 3600.0,
        buffer_limit: int = 100_000,
        spill_path: str | Path | None = None,
        publish_timeout_s: float = 2.0,
        linger_s: float = 0.02,
        batch_size: int = BATCH_MAX,
    ) -> None:
        self.federation = subjects.check_federation(federation)
        self.stream = stream or stream_name(federation)
        if buffer_limit < 1:
            raise ValueError("buffer_limit must be at least 1")
        if replicas < 1 or publish_timeout_s <= 0 or max_age_s < 0 or duplicate_window_s < 0:
            raise ValueError("replicas, publish_timeout_s and the durations must be positive")
        if linger_s < 0 or not 1 <= batch_size <= BATCH_MAX:
            raise ValueError(f"linger_s must be ≥ 0 and batch_size within 1..{BATCH_MAX}")
        self._nc = nc
        self._js = nc.jetstream(timeout=publish_timeout_s)
        self._max_age_s = max_age_s
        self._max_bytes = max_bytes
        self._max_msg_size = max_msg_size
        self._replicas = replicas
        self._duplicate_window_s = duplicate_window_s
        self._buffer_limit = buffer_limit
        self._timeout_s = publish_timeout_s
        self._linger_s = linger_s
        self._batch_size = batch_size
        self._buffer: collections.deque[_Pending] = collections.deque()
        self._spill = Path(spill_path) if spill_path is not None else None
        self._journal_ok = self._spill is not None  # off after a failed write
        # The journal: logical offsets grow for ever; file byte 0 is logical _jbase.
        self._jfd: int | None = None
        self._jbase = 0
        self._jend = 0  # logical end of the journal
        self._answered = 0  # logical offset up to which JetStream answered every record
        self._spill_offset = 0  # logical offset of the first record not in memory
        self._spill_count = 0  # journaled records not in memory (not yet read back)
        self._spill_lock = anyio.Lock(fast_acquire=True)
        self._flush_lock = anyio.Lock(fast_acquire=True)
        self._wake = anyio.Event()
        self._full = anyio.Event()  # set when a batch is ready (batch_size queued)
        self._idle = anyio.Event()  # set while nothing is pending
        self._last_warning = ""
        # Pipelined acks of the flush loop: reply subject -> future of the ack message.
        self._ack_prefix = ""
        self._ack_sub: Any = None
        self._ack_waiting: dict[str, asyncio.Future[Any]] = {}
        self._ack_seq = itertools.count()
        # Message ids queued or stored lately (oldest first): a repeat is not sent again.
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.stored = 0
        self.dropped = 0
        self.rejected = 0
        #: submits skipped because this store had queued or stored the same record lately
        self.repeats = 0
        #: batches the loop (or a flush) published
        self.batches = 0
        if self._spill is not None:
            self._spill_count, self._jend = self._recover(self._spill)
            if self._spill_count:
                self._wake.set()
                logger.warning(
                    "%d record(s) left in the spill file %s by an earlier run will be "
                    "published first",
                    self._spill_count,
                    self._spill,
                )
        if not self._spill_count:
            self._idle.set()

    def __repr__(self) -> str:
        return (
            f"<RecordStore stream={self.stream!r} federation={self.federation!r} "
            f"pending={self.pending}>"
        )

    @property
    def pending(self) -> int:
        """Records accepted but not yet acknowledged by JetStream (memory + spill file)."""
        return len(self._buffer) + self._spill_count

    # ---------------------------------------------------------------- the stream

    def _config(self, subject_list: list[str]) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.stream,
            description=f"crankmesh receipts, bids, settlements and tokens of {self.federation}",
            subjects=subject_list,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_age=self._max_age_s,
            max_bytes=self._max_bytes,
            max_msg_size=self._max_msg_size,
            storage=api.StorageType.FILE,
            num_replicas=self._replicas,
            duplicate_window=self._duplicate_window_s,
        )

    async def ensure_stream(self) -> api.StreamInfo:
        """Create the stream, or update it to bind our subjects and limits.

        Error handling: raises :class:`TransportError` when JetStream is unavailable
        or refuses the configuration (e.g. the subjects overlap another stream).
        """
        wanted = record_subjects(self.federation)
        try:
            try:
                info = await self._js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                info = await self._js.add_stream(self._config(wanted))
                logger.info("created JetStream stream %s for %s", self.stream, wanted)
                return info
            # An existing stream belongs to whoever created it (an operator may run it
            # replicated, with their own limits): only bind subjects it lacks, and keep
            # its replicas and limits as they are.
            if (info.config.num_replicas or 1) < self._replicas:
                logger.warning(
                    "JetStream stream %s has %d replica(s), fewer than the %d configured; "
                    "it is left as it is (scale it with `nats stream edit --replicas`)",
                    self.stream,
                    info.config.num_replicas or 1,
                    self._replicas,
                )
            have = list(info.config.subjects or [])
            merged = have + [s for s in wanted if s not in have]
            if merged != have:
                info = await self._js.update_stream(
                    dataclasses.replace(info.config, subjects=merged)
                )
                logger.info("updated JetStream stream %s (subjects %s)", self.stream, merged)
            return info
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise TransportError(
                f"could not create or update the JetStream stream {self.stream!r}: {exc!r}; "
                "check that the NATS server runs with JetStream enabled and that no other "
                f"stream binds {', '.join(wanted)}"
            ) from exc

    # ---------------------------------------------------------------- publishing

    async def publish_envelope(self, env: Envelope) -> PublishOutcome:
        """Publish a receipt, bid, settlement or token on its subject, id = its CID."""
        return await self.publish(record_subject(self.federation, env), env.raw, env.cid)

    async def publish(self, subject: str, raw: bytes, msg_id: str) -> PublishOutcome:
        """Publish one record; never raises for JetStream trouble (see the class doc).

        The record goes straight to JetStream when nothing is buffered and the
        connection is up; otherwise it joins the end of the buffer, so records reach
        the stream in the order they were buffered.
        """
        record = _Pending(subject, bytes(raw), msg_id)
        if not self._buffer and not self._spill_count and self._nc.is_connected:
            try:
                return await self._send(record)
            except _Transient as exc:
                self._warn(f"JetStream did not take record {msg_id} ({exc}); buffering")
        return self._enqueue([record])[0]

    async def _send(self, record: _Pending) -> PublishOutcome:
        """One JetStream publish; :class:`_Transient` when it may work later."""
        try:
            ack = await self._js.publish(
                record.subject,
                record.data,
                timeout=self._timeout_s,
                headers={_HEADER: record.msg_id},
            )
        except Exception as exc:
            self._refused(record, exc)
            return "rejected"
        self.stored += 1
        return "duplicate" if ack.duplicate else "stored"

    def _refused(self, record: _Pending, exc: Exception) -> None:
        """JetStream said no: raise :class:`_Transient` if it may say yes later, else
        count and log a refusal for good."""
        if _is_transient(exc):
            raise _Transient(exc) from exc
        self.rejected += 1
        logger.error(
            "JetStream refused record %s on %s for good: %r; it is not stored",
            record.msg_id,
            record.subject,
            exc,
        )

    async def _on_ack(self, msg: Any) -> None:
        fut = self._ack_waiting.pop(msg.subject, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _send_window(self, window: list[_Pending]) -> int:
        """Publish ``window`` back to back, then take the acks in order.

        Returns how many records from the start of ``window`` JetStream answered for
        (stored, duplicate or refused for good).  Raises :class:`_Transient` (after
        counting those) when a record got a transient answer or none in time; the
        caller re-sends from there, and the message ids make re-sent copies of
        records that did land duplicates.
        """
        nc = self._nc
        if self._ack_sub is None:
            self._ack_prefix = nc.new_inbox()
            self._ack_sub = await nc.subscribe(self._ack_prefix + ".*", cb=self._on_ack)
        loop = asyncio.get_running_loop()
        futures: list[tuple[str, asyncio.Future[Any]]] = []
        done = 0
        try:
            try:
                for record in window:
                    reply = f"{self._ack_prefix}.{next(self._ack_seq)}"
                    fut = loop.create_future()
                    self._ack_waiting[reply] = fut
                    futures.append((reply, fut))
                    await nc.publish(
                        record.subject, record.data, reply=reply, headers={_HEADER: record.msg_id}
                    )
            except Exception as exc:
                if _is_transient(exc):
                    raise _Transient(exc) from exc
                raise
            with anyio.move_on_after(self._timeout_s):
                for record, (_, fut) in zip(window, futures, strict=False):
                    self._take_ack(record, await fut)
                    done += 1
            if done < len(futures):
                raise _Transient(nats.errors.TimeoutError())
            return done
        except _Transient as exc:
            exc.done = done
            raise
        finally:
            for reply, fut in futures:
                if self._ack_waiting.pop(reply, None) is not None:
                    fut.cancel()

    def _take_ack(self, record: _Pending, msg: Any) -> None:
        """Account for one JetStream ack; :class:`_Transient` when it says "later"."""
        headers = msg.headers or {}
        status = headers.get(api.Header.STATUS)
        try:
            if status == "503" and not msg.data:
                raise nats.js.errors.NoStreamResponseError  # no responders: no stream
            if status is not None and not msg.data:
                nats.js.errors.APIError.from_msg(msg)
            resp = json.loads(msg.data)
            if "error" in resp:
                nats.js.errors.APIError.from_error(resp["error"])
        except Exception as exc:
            self._refused(record, exc)
            return
        self.stored += 1

    async def submit(self, subject: str, raw: bytes, msg_id: str) -> PublishOutcome:
        """Queue one record for the background loop (:meth:`run`) and return at once.

        For hot paths (an executor's receipts): the JetStream ack is awaited by the
        loop, not by the caller; ordering, deduplication, buffering while JetStream is
        away and the journal work exactly as for :meth:`publish`. With a journal the
        record is in it when this returns.
        """
        return (await self.submit_many([(subject, raw, msg_id)]))[0]

    async def submit_many(self, records: list[tuple[str, bytes, str]]) -> list[PublishOutcome]:
        """:meth:`submit` for several ``(subject, raw, msg_id)`` records, in order, with
        one journal write for all of them.

        A record whose message id this store queued or stored lately (the last
        4,096 ids) is not queued again: its outcome is ``duplicate``, counted in
        :attr:`repeats`. A record that was dropped is not remembered, so it can be
        submitted again.
        """
        fresh: list[_Pending] = []
        repeat: list[bool] = []
        recent = self._recent
        for subject, raw, msg_id in records:
            seen = msg_id in recent or any(r.msg_id == msg_id for r in fresh)
            if seen:
                self.repeats += 1
            else:
                fresh.append(_Pending(subject, bytes(raw), msg_id))
            repeat.append(seen)
        queued = iter(self._enqueue(fresh) if fresh else ())
        return ["duplicate" if seen else next(queued) for seen in repeat]

    def _remember(self, msg_id: str) -> None:
        recent = self._recent
        recent[msg_id] = None
        recent.move_to_end(msg_id)
        if len(recent) > _RECENT_MAX:
            recent.popitem(last=False)

    def _enqueue(self, records: list[_Pending]) -> list[PublishOutcome]:
        journaled = self._journal(records)
        if journaled is not None:
            records = journaled
        outcomes: list[PublishOutcome] = []
        for record in records:
            if self._spill_count == 0 and len(self._buffer) < self._buffer_limit:
                self._buffer.append(record)
                self._remember(record.msg_id)
                outcomes.append("buffered")
            elif record.end >= 0:  # in the journal only, read back when there is room
                if self._spill_count == 0:
                    self._spill_offset = record.end - len(_frame(record))
                    logger.warning("record buffer full: spilling records to %s", self._spill)
                self._spill_count += 1
                self._remember(record.msg_id)
                outcomes.append("spilled")
            else:
                self.dropped += 1
                logger.error(
                    "record buffer full (%d records) and no spill file: dropping record %s on %s",
                    self._buffer_limit,
                    record.msg_id,
                    record.subject,
                )
                outcomes.append("dropped")
        if self.pending:
            self._wake.set()
            if self._idle.is_set():
                self._idle = anyio.Event()
            if len(self._buffer) >= self._batch_size or self._spill_count:
                self._full.set()
        return outcomes

    def _warn(self, text: str) -> None:
        # one warning per kind of trouble, not one per record
        kind = text.split(" (", 1)[-1].split("(", 1)[0]
        if kind != self._last_warning:
            self._last_warning = kind
            logger.warning("%s", text)

    # ---------------------------------------------------------------- the journal

    def _journal(self, records: list[_Pending]) -> list[_Pending] | None:
        """Append ``records`` to the journal in one write; the records with their
        journal offsets, or None when there is no journal (or it just failed)."""
        if not self._journal_ok:
            return None
        frames = [_frame(r) for r in records]
        data = b"".join(frames)
        try:
            fd = self._open_journal()
            if os.write(fd, data) != len(data):  # regular files: all or an error
                raise OSError(f"short write to {self._spill}")
        except OSError as exc:
            logger.error(
                "cannot write the record journal %s (%s): records are kept in memory only "
                "from now on, and die with the process",
                self._spill,
                exc,
            )
            self._journal_ok = False  # a torn write is cut off when a later store recovers it
            self._close_journal(fsync=False)
            return None
        out, end = [], self._jend
        for record, frame in zip(records, frames, strict=True):
            end += len(frame)
            out.append(_Pending(record.subject, record.data, record.msg_id, end))
        self._jend = end
        return out

    def _answer(self, records: list[_Pending]) -> None:
        """JetStream answered for ``records`` (the oldest queued): forget them in the
        journal, truncating it when nothing in it is waiting any more."""
        ends = [r.end for r in records if r.end >= 0]
        if not ends or not self._journal_ok:
            return
        self._answered = max(self._answered, ends[-1])
        try:
            if self._answered >= self._jend:  # everything journaled is answered
                os.ftruncate(self._open_journal(), 0)
                self._jbase = self._jend
            elif (
                self._answered - self._jbase > _COMPACT_BYTES
                and self._jend - self._answered <= _COMPACT_TAIL_MAX
            ):
                self._compact()
        except OSError as exc:  # the journal is only longer than it needs to be
            logger.warning("could not truncate the record journal %s: %s", self._spill, exc)

    def _open_journal(self) -> int:
        assert self._spill is not None
        if self._jfd is None:
            self._jfd = os.open(self._spill, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._jfd

    def _compact(self) -> None:
        """Rewrite the journal without its answered head: copy the tail, rename."""
        assert self._spill is not None and self._jfd is not None
        with self._spill.open("rb") as f:
            f.seek(self._answered - self._jbase)
            tail = f.read()
        tmp = self._spill.with_name(self._spill.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, tail)
        finally:
            os.close(fd)
        os.replace(tmp, self._spill)  # a SIGKILL leaves the old journal or the new one
        os.close(self._jfd)
        self._jfd = os.open(self._spill, os.O_WRONLY | os.O_APPEND, 0o600)
        self._jbase = self._answered

    def _close_journal(self, *, fsync: bool = True) -> None:
        fd, self._jfd = self._jfd, None
        if fd is None:
            return
        try:
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _read_spill(path: Path, offset: int, limit: int) -> tuple[list[_Pending], int]:
        """Up to ``limit`` records from file offset ``offset`` (ends as file offsets)."""
        out: list[_Pending] = []
        with path.open("rb") as f:
            f.seek(offset)
            while len(out) < limit:
                head = f.read(_SPILL_HEAD.size)
                if len(head) < _SPILL_HEAD.size:
                    break
                ls, lm, ld = _SPILL_HEAD.unpack(head)
                body = f.read(ls + lm + ld)
                if len(body) < ls + lm + ld:
                    break  # a torn last write: the count below ignores it too
                subject = body[:ls].decode("utf-8", "replace")
                msg_id = body[ls : ls + lm].decode("utf-8", "replace")
                offset += _SPILL_HEAD.size + ls + lm + ld
                out.append(_Pending(subject, body[ls + lm :], msg_id, offset))
        return out, offset

    @staticmethod
    def _recover(path: Path) -> tuple[int, int]:
        """Count the whole records of a journal left by an earlier run and cut off a
        torn last one (a write cut short), so that appends continue a readable file.
        Returns ``(records, end of the last whole record)``."""
        if not path.exists():
            return 0, 0
        count, offset, size = 0, 0, path.stat().st_size
        with path.open("rb") as f:
            while True:
                head = f.read(_SPILL_HEAD.size)
                if len(head) < _SPILL_HEAD.size:
                    break
                ls, lm, ld = _SPILL_HEAD.unpack(head)
                if offset + _SPILL_HEAD.size + ls + lm + ld > size:
                    break
                offset += _SPILL_HEAD.size + ls + lm + ld
                f.seek(offset)
                count += 1
        if offset < size:
            logger.warning("ignoring a torn record at the end of spill file %s", path)
            try:
                os.truncate(path, offset)
            except OSError as exc:
                logger.error("cannot cut the torn record off %s: %s", path, exc)
        return count, offset

    async def _refill(self) -> None:
        """Move journal-only records back into the (empty) memory buffer, oldest first."""
        if self._spill is None or not self._spill_count or self._buffer:
            return
        async with self._spill_lock:
            records, _ = await anyio.to_thread.run_sync(
                self._read_spill,
                self._spill,
                self._spill_offset - self._jbase,
                min(self._buffer_limit, self._spill_count),
            )
            if not records:  # torn tail only
                self._spill_count = 0
                return
            base = self._jbase
            self._buffer.extend(
                _Pending(r.subject, r.data, r.msg_id, r.end + base) for r in records
            )
            self._spill_offset = self._buffer[-1].end
            self._spill_count -= len(records)

    # ---------------------------------------------------------------- flushing

    async def _drain(self, *, batched: bool = False) -> bool:
        """Publish queued records in order until empty (True) or a transient failure
        (False). ``batched`` (the background loop): stop early, returning True, when
        fewer than a batch are left, so the loop lingers for more."""
        async with self._flush_lock:
            while True:
                await self._refill()
                if not self._buffer:
                    self._idle.set()
                    return True
                if not self._nc.is_connected:
                    return False
                window = list(itertools.islice(self._buffer, _WINDOW))
                self.batches += 1
                try:
                    done = await self._send_window(window)
                except _Transient as exc:
                    self._answer([self._buffer.popleft() for _ in range(exc.done)])
                    if exc.no_stream:
                        await self._recreate_stream()
                    self._warn(f"JetStream still unavailable ({exc}); {self.pending} pending")
                    return False
                self._answer([self._buffer.popleft() for _ in range(done)])
                if not self._buffer and not self._spill_count:
                    if self._last_warning:
                        self._last_warning = ""
                        logger.info("record buffer flushed to JetStream stream %s", self.stream)
                elif batched and len(self._buffer) < self._batch_size and not self._spill_count:
                    return True

    async def _recreate_stream(self) -> None:
        try:
            await self.ensure_stream()
        except TransportError as exc:
            logger.debug("stream not (re)created yet: %s", exc)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Background loop: publish queued records in batches whenever there are any.

        Start it with ``await tg.start(store.run)``; it runs until cancelled. Waits up
        to ``linger_s`` for a batch to fill; retries with exponential backoff while
        JetStream is unavailable.
        """
        task_status.started()
        backoff = _BACKOFF_MIN_S
        while True:
            if not self.pending:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            if self._linger_s and len(self._buffer) < self._batch_size and not self._spill_count:
                with anyio.move_on_after(self._linger_s):
                    await self._full.wait()
            self._full = anyio.Event()
            if await self._drain(batched=True):
                backoff = _BACKOFF_MIN_S
                continue
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def wait_flushed(self) -> None:
        """Wait until nothing is pending (published by :meth:`run` or :meth:`flush`)."""
        while self.pending:
            await self._idle.wait()

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Publish everything pending now (no lingering), retrying for up to
        ``timeout_s`` seconds.

        Returns True when nothing is pending any more. For shutdown, call it under a
        shielded scope (``with anyio.CancelScope(shield=True)``).
        """
        backoff = _BACKOFF_MIN_S
        with anyio.move_on_after(timeout_s):
            while not await self._drain():
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
        if self.pending:
            logger.warning(
                "%d record(s) not yet stored in JetStream stream %s after %.1f s%s",
                self.pending,
                self.stream,
                timeout_s,
                f"; they stay in {self._spill} for the next start" if self._spill else "",
            )
        return not self.pending

    async def close(self, timeout_s: float = 5.0) -> bool:
        """Flush (for up to ``timeout_s``), then fsync and close the journal, removing
        it when it is empty. What JetStream has not taken stays in the journal for the
        next store on the same file (without one, it is lost: logged). Idempotent;
        returns True when nothing was left pending."""
        flushed = await self.flush(timeout_s)
        spill = self._spill
        try:
            self._close_journal()
            if spill is not None and flushed and spill.exists() and not spill.stat().st_size:
                spill.unlink()
        except OSError as exc:
            logger.warning("could not close the record journal %s: %s", spill, exc)
        if not flushed and spill is None:
            logger.error(
                "%d record(s) never reached JetStream stream %s and are lost (no spill file)",
                self.pending,
                self.stream,
            )
        return flushed


@asynccontextmanager
async def open_record_store(
    nc: Client, *, federation: str, flush_timeout_s: float = 5.0, **options: Any
) -> AsyncIterator[RecordStore]:
    """A :class:`RecordStore` with its flush loop running, flushed and closed on exit.

    Creates the stream when JetStream answers (a failure is logged, not raised: the
    records wait in the buffer and the loop creates the stream later). On exit,
    publishes what is pending for up to ``flush_timeout_s`` (shielded) and closes the
    journal (:meth:`RecordStore.close`), then stops the loop. ``options`` go to
    :class:`RecordStore`.

    Error handling: an exception raised in the body reaches the caller inside an
    ``ExceptionGroup`` (the loop's task group), after the flush.
    """
    store = RecordStore(nc, federation=federation, **options)
    try:
        await store.ensure_stream()
    except TransportError as exc:
        logger.warning("%s; records will be buffered until it succeeds", exc)
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        try:
            yield store
        finally:
            with anyio.CancelScope(shield=True):
                await store.close(flush_timeout_s)
            tg.cancel_scope.cancel()
