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

When JetStream cannot take a record (no responders, a timeout, JetStream not enabled,
no stream, the connection down), :meth:`RecordStore.publish` keeps it in a bounded
in-memory buffer (and, beyond it, in an optional spill file), and the background loop
:meth:`RecordStore.run` publishes the buffer in order, with backoff, once JetStream
answers again. Typical use, inside a node's task group::

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
with this message id; ``buffered`` / ``spilled``: kept in memory / in the spill file for
the flush loop; ``dropped``: the buffer was full and there is no spill file (counted in
:attr:`RecordStore.dropped`); ``rejected``: JetStream refused it for good (e.g. larger
than the stream's maximum message size; counted in :attr:`RecordStore.rejected`).
"""

_HEADER: Final = "Nats-Msg-Id"
_SPILL_HEAD: Final = struct.Struct(">HHI")  # subject length, msg id length, data length
_BACKOFF_MIN_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0
#: Records the flush loop publishes before it waits for their acks (pipelining).
_WINDOW: Final = 64


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
    """Publishes signed records to the federation's JetStream stream, buffering through
    outages.

    Resource handling:
        Does not own ``nc`` (the caller connects and closes it). Holds at most
        ``buffer_limit`` records in memory; with ``spill_path``, records beyond that are
        appended to that file (length-prefixed) and read back in order; a spill file
        left by a previous run is picked up at construction and published first.
        :meth:`run` must run (in the caller's task group) for buffered records to be
        published in the background; :meth:`flush` publishes them in the foreground.

    Error handling:
        :meth:`publish` never raises for JetStream trouble: a transient failure
        (no responders, timeout, no stream, JetStream disabled, disconnected) buffers
        the record; the flush loop retries with exponential backoff (50 ms to 2 s) and,
        on "no stream", re-creates the stream. A permanent refusal (any other JetStream
        API error) is logged with the record's CID and counted in :attr:`rejected`.
        Without a spill file, a record that finds the buffer full is logged and counted
        in :attr:`dropped`. :meth:`ensure_stream` raises :class:`TransportError`.
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
    ) -> None:
        self.federation = subjects.check_federation(federation)
        self.stream = stream or stream_name(federation)
        if buffer_limit < 1:
            raise ValueError("buffer_limit must be at least 1")
        if replicas < 1 or publish_timeout_s <= 0 or max_age_s < 0 or duplicate_window_s < 0:
            raise ValueError("replicas, publish_timeout_s and the durations must be positive")
        self._nc = nc
        self._js = nc.jetstream(timeout=publish_timeout_s)
        self._max_age_s = max_age_s
        self._max_bytes = max_bytes
        self._max_msg_size = max_msg_size
        self._replicas = replicas
        self._duplicate_window_s = duplicate_window_s
        self._buffer_limit = buffer_limit
        self._timeout_s = publish_timeout_s
        self._buffer: collections.deque[_Pending] = collections.deque()
        self._spill = Path(spill_path) if spill_path is not None else None
        self._spill_offset = 0  # where the next unread spilled record starts
        self._spill_count = 0  # records in the spill file not yet read back
        self._spill_lock = anyio.Lock(fast_acquire=True)
        self._flush_lock = anyio.Lock(fast_acquire=True)
        self._wake = anyio.Event()
        self._idle = anyio.Event()  # set while nothing is pending
        self._last_warning = ""
        # Pipelined acks of the flush loop: reply subject -> future of the ack message.
        self._ack_prefix = ""
        self._ack_sub: Any = None
        self._ack_waiting: dict[str, asyncio.Future[Any]] = {}
        self._ack_seq = itertools.count()
        self.stored = 0
        self.dropped = 0
        self.rejected = 0
        if self._spill is not None:
            self._spill_count = self._count_spilled(self._spill)
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
        return await self._enqueue(record)

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
        away and the spill file work exactly as for :meth:`publish`.
        """
        return await self._enqueue(_Pending(subject, bytes(raw), msg_id))

    async def _enqueue(self, record: _Pending) -> PublishOutcome:
        self._wake.set()
        if self._idle.is_set():
            self._idle = anyio.Event()
        if self._spill_count == 0 and len(self._buffer) < self._buffer_limit:
            self._buffer.append(record)
            return "buffered"
        if self._spill is None:
            self.dropped += 1
            logger.error(
                "record buffer full (%d records) and no spill file: dropping record %s on %s",
                self._buffer_limit,
                record.msg_id,
                record.subject,
            )
            return "dropped"
        async with self._spill_lock:
            await anyio.to_thread.run_sync(self._append_spill, self._spill, record)
            self._spill_count += 1
        if self._spill_count == 1:
            logger.warning("record buffer full: spilling records to %s", self._spill)
        return "spilled"

    def _warn(self, text: str) -> None:
        # one warning per kind of trouble, not one per record
        kind = text.split(" (", 1)[-1].split("(", 1)[0]
        if kind != self._last_warning:
            self._last_warning = kind
            logger.warning("%s", text)

    # ---------------------------------------------------------------- the spill file

    @staticmethod
    def _append_spill(path: Path, record: _Pending) -> None:
        subject, msg_id = record.subject.encode(), record.msg_id.encode()
        with path.open("ab") as f:
            f.write(_SPILL_HEAD.pack(len(subject), len(msg_id), len(record.data)))
            f.write(subject + msg_id + record.data)
            f.flush()

    @staticmethod
    def _read_spill(path: Path, offset: int, limit: int) -> tuple[list[_Pending], int]:
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
                out.append(_Pending(subject, body[ls + lm :], msg_id))
                offset += _SPILL_HEAD.size + ls + lm + ld
        return out, offset

    @staticmethod
    def _count_spilled(path: Path) -> int:
        if not path.exists():
            return 0
        count, size = 0, path.stat().st_size
        with path.open("rb") as f:
            offset = 0
            while True:
                head = f.read(_SPILL_HEAD.size)
                if len(head) < _SPILL_HEAD.size:
                    break
                ls, lm, ld = _SPILL_HEAD.unpack(head)
                offset += _SPILL_HEAD.size + ls + lm + ld
                if offset > size:
                    logger.warning("ignoring a torn record at the end of spill file %s", path)
                    break
                f.seek(offset)
                count += 1
        return count

    async def _refill(self) -> None:
        """Move spilled records back into the (empty) memory buffer, oldest first."""
        if self._spill is None or not self._spill_count or self._buffer:
            return
        async with self._spill_lock:
            records, offset = await anyio.to_thread.run_sync(
                self._read_spill, self._spill, self._spill_offset, self._buffer_limit
            )
            if not records:  # torn tail only
                self._spill_count = 0
            self._buffer.extend(records)
            self._spill_offset = offset
            self._spill_count -= len(records)
            if self._spill_count <= 0:
                self._spill_count = 0
                self._spill_offset = 0
                await anyio.to_thread.run_sync(self._spill.unlink, True)

    # ---------------------------------------------------------------- flushing

    async def _drain(self) -> bool:
        """Publish buffered records in order until empty (True) or a transient failure."""
        async with self._flush_lock:
            while True:
                await self._refill()
                if not self._buffer:
                    self._idle.set()
                    return True
                if not self._nc.is_connected:
                    return False
                window = list(itertools.islice(self._buffer, _WINDOW))
                try:
                    done = await self._send_window(window)
                except _Transient as exc:
                    for _ in range(exc.done):
                        self._buffer.popleft()
                    if exc.no_stream:
                        await self._recreate_stream()
                    self._warn(f"JetStream still unavailable ({exc}); {self.pending} pending")
                    return False
                for _ in range(done):
                    self._buffer.popleft()
                if not self._buffer and not self._spill_count:
                    self._last_warning = ""
                    logger.info("record buffer flushed to JetStream stream %s", self.stream)

    async def _recreate_stream(self) -> None:
        try:
            await self.ensure_stream()
        except TransportError as exc:
            logger.debug("stream not (re)created yet: %s", exc)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Background loop: publish buffered records whenever there are any.

        Start it with ``await tg.start(store.run)``; it runs until cancelled. Retries
        with exponential backoff while JetStream is unavailable.
        """
        task_status.started()
        backoff = _BACKOFF_MIN_S
        while True:
            if not self.pending:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            if await self._drain():
                backoff = _BACKOFF_MIN_S
                continue
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def wait_flushed(self) -> None:
        """Wait until nothing is pending (published by :meth:`run` or :meth:`flush`)."""
        while self.pending:
            await self._idle.wait()

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Publish everything pending, retrying for up to ``timeout_s`` seconds.

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
                "%d record(s) not yet stored in JetStream stream %s after %.1f s",
                self.pending,
                self.stream,
                timeout_s,
            )
        return not self.pending


@asynccontextmanager
async def open_record_store(
    nc: Client, *, federation: str, flush_timeout_s: float = 5.0, **options: Any
) -> AsyncIterator[RecordStore]:
    """A :class:`RecordStore` with its flush loop running, flushed on exit.

    Creates the stream when JetStream answers (a failure is logged, not raised: the
    records wait in the buffer and the loop creates the stream later). On exit,
    publishes what is pending for up to ``flush_timeout_s`` (shielded), then stops the
    loop. ``options`` go to :class:`RecordStore`.

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
                await store.flush(flush_timeout_s)
            tg.cancel_scope.cancel()
