"""The live advert directory: which peers are up, what they offer, their quotes.

Every node puts its signed :class:`~crankmesh.protocol.messages.Advert` (carrying
its firm Quotes) in the federation's JetStream key-value bucket (RFC 0001 §8.15);
where JetStream is missing it publishes it on ``crank.<fed>.nodes.adverts`` every
heartbeat instead (§8.10).  The directory follows one or the other, keeps the newest
advert per signer and forgets it when its ``exp`` (TTL) passes.  The originator uses
it to know whom to expect bids from, and ranks its live quotes
(:meth:`PeerDirectory.quotes`).

Error handling: malformed, forged, stale or out-of-order adverts are dropped
and counted (``kind="advert"``), and so are adverts of a protocol revision this
node does not speak (``proto_unsupported``, logged once per peer).  A quote that
does not decode is counted (``kind="quote"``) and left out of :meth:`quotes`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import nats.errors
from anyio.abc import TaskStatus

from .directory_kv import open_bucket
from .observability import Metrics
from .protocol import subjects
from .protocol.envelope import Envelope, check_fresh
from .protocol.errors import ProtocolError
from .protocol.identity import did_node_id
from .protocol.messages import PROTOCOL_REVISION, Advert, Quote, decode_message
from .transport import unsubscribe_quietly

__all__ = ["LiveQuote", "Peer", "PeerDirectory"]

log = logging.getLogger("crankmesh.directory")
MAX_ADVERT_BYTES = 64 * 1024


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Peer:
    did: str
    advert: Advert
    received_ms: int

    @property
    def expires_ms(self) -> int:
        return self.advert.exp

    def offers(self, capability: str) -> bool:
        return any(c.name == capability for c in self.advert.capabilities)

    def price_of(self, capability: str) -> int | None:
        for c in self.advert.capabilities:
            if c.name == capability:
                return c.price
        return None


@dataclass(slots=True)
class LiveQuote:
    """A peer's firm quote for one capability, decoded from its advert (RFC 0001 §8.14).

    Not yet signature-checked: call :meth:`verify` (cached) before assigning on it."""

    did: str
    quote: Quote
    raw: bytes
    advert: Advert
    _env: Envelope
    verified: bool = False

    @property
    def cid(self) -> str:
        return self._env.cid

    def verify(self) -> None:
        """Check the quote's signature once (raises ``SignatureInvalid``)."""
        if not self.verified:
            self._env.verify()
            self.verified = True


class PeerDirectory:
    """Newest advert per peer, expired by TTL.

    ``trusted`` (production mode): when set, adverts from other DIDs are
    rejected and counted with reason ``untrusted``.  ``impostor``: a node's check
    that an advert signed with its own key was not published by itself; such
    adverts are dropped with reason ``own_key_elsewhere``.
    """

    def __init__(
        self,
        *,
        federation: str,
        metrics: Metrics | None = None,
        trusted: Callable[[str], bool] | None = None,
        max_ttl_ms: int = 120_000,
        impostor: Callable[[Advert], bool] | None = None,
        max_peers: int = 10_000,
    ) -> None:
        self.federation = federation
        #: Bound on the table: a new peer beyond it is dropped (``directory_full``).
        self.max_peers = max_peers
        self.metrics = metrics or Metrics()
        self._trusted = trusted
        self._impostor = impostor
        self._max_ttl_ms = max_ttl_ms
        self._peers: dict[str, Peer] = {}
        self._changed = anyio.Event()
        #: (did, capability) -> (quote bytes, decoded quote or None when it was bad).
        self._quotes: dict[tuple[str, str], tuple[bytes, LiveQuote | None]] = {}
        self._proto_logged: set[str] = set()
        #: Where the directory is fed from once served: "kv", "subject" or "" (not yet).
        self.source = ""

    def __len__(self) -> int:
        self.sweep()
        return len(self._peers)

    def sweep(self, now: int | None = None) -> None:
        now = _now_ms() if now is None else now
        dead = [did for did, p in self._peers.items() if p.expires_ms < now]
        for did in dead:
            del self._peers[did]
            log.info("peer expired from the directory", extra={"peer": did})
        if dead:
            self._notify()
        self.metrics.directory_size.set(len(self._peers))

    def peers(self, now: int | None = None) -> list[Peer]:
        self.sweep(now)
        return list(self._peers.values())

    def get(self, did: str) -> Peer | None:
        p = self._peers.get(did)
        if p is not None and p.expires_ms < _now_ms():
            self.sweep()
            return None
        return p

    def offering(self, capability: str, now: int | None = None) -> list[Peer]:
        """Live, non-draining peers that advertise ``capability``."""
        return [p for p in self.peers(now) if p.offers(capability) and not p.advert.draining]

    def quotes(self, capability: str, now: int | None = None) -> list[LiveQuote]:
        """The live quotes for ``capability``: one per live, non-draining peer whose
        advert carries a quote for it that is signed by the peer and not expired.
        Decoded once per advert; signatures are checked by the caller (lazily)."""
        now = _now_ms() if now is None else now
        out: list[LiveQuote] = []
        for peer in self.offering(capability, now):
            for cap in peer.advert.capabilities:
                if cap.name == capability and cap.quote is not None:
                    live = self._live_quote(peer, capability, cap.quote)
                    if live is not None and live.quote.exp >= now:
                        out.append(live)
                    break
        return out

    def _live_quote(self, peer: Peer, capability: str, raw: bytes) -> LiveQuote | None:
        key = (peer.did, capability)
        hit = self._quotes.get(key)
        if hit is not None and hit[0] == raw:
            return hit[1]
        live: LiveQuote | None = None
        try:
            env, quote = decode_message(raw, Quote, max_len=4096)
            if quote.signer != peer.did or quote.capability != capability:
                raise _Drop("quote_mismatch")
            live = LiveQuote(peer.did, quote, raw, peer.advert, env)
        except ProtocolError as exc:
            self.metrics.reject("quote", exc.reason)
        if len(self._quotes) > 4 * max(len(self._peers), 64):
            self._quotes.clear()
        self._quotes[key] = (raw, live)
        return live

    def is_alive(self, did: str) -> bool:
        return self.get(did) is not None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def observe(self, advert: Advert, now: int | None = None) -> bool:
        """Record a verified advert; returns False if an equal or newer one is known."""
        now = _now_ms() if now is None else now
        known = self._peers.get(advert.signer)
        if known is not None and (advert.ts, advert.seq) <= (known.advert.ts, known.advert.seq):
            return False
        self._peers[advert.signer] = Peer(advert.signer, advert, now)
        if known is None:
            log.info(
                "peer joined",
                extra={
                    "peer": advert.signer,
                    "capability": ",".join(c.name for c in advert.capabilities),
                },
            )
        self._notify()
        self.metrics.directory_size.set(len(self._peers))
        return True

    def handle(self, data: bytes, *, key: str | None = None) -> Advert:
        """Validate raw advert bytes and record them (raises ProtocolError).

        ``key``: the bucket key the advert came under (RFC 0001 §8.15), which must be
        the node id of its signer."""
        env, advert = decode_message(data, Advert, max_len=MAX_ADVERT_BYTES)
        now = _now_ms()
        if key is not None and key != did_node_id(advert.signer):
            raise _Drop("subject_mismatch")
        check_fresh(env, now, max_age_ms=self._max_ttl_ms)
        if advert.exp - advert.ts > self._max_ttl_ms:
            raise _Drop("ttl_too_long")
        if self._trusted is not None and not self._trusted(advert.signer):
            raise _Drop("untrusted")
        env.verify()
        if self._impostor is not None and self._impostor(advert):
            raise _Drop("own_key_elsewhere")
        if advert.proto is not None and advert.proto > PROTOCOL_REVISION:
            if advert.signer not in self._proto_logged and len(self._proto_logged) < 10_000:
                self._proto_logged.add(advert.signer)
                log.warning(
                    "node %s speaks crankmesh protocol revision %d; this node speaks %d: "
                    "its adverts are ignored",
                    advert.signer,
                    advert.proto,
                    PROTOCOL_REVISION,
                )
            raise _Drop("proto_unsupported")
        if advert.signer not in self._peers and len(self._peers) >= self.max_peers:
            self.sweep(now)
            if len(self._peers) >= self.max_peers:
                raise _Drop("directory_full")
        self.observe(advert, now)
        return advert

    def _count(self, exc: Exception) -> None:
        if isinstance(exc, ProtocolError):
            self.metrics.reject("advert", exc.reason)
        else:
            self.metrics.reject("advert", "handler_error")
            log.exception("advert handler failed", exc_info=exc)

    async def follow_bucket(
        self,
        kv: Any,
        *,
        nc: Any = None,
        reopen: Callable[[], Any] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow the directory bucket (RFC 0001 §8.15) until cancelled: every current
        value first -- ``task_status.started()`` once they are all in --, then each
        update.  Deletions and the server's expiry markers are ignored: the adverts'
        own ``exp`` ages peers out (:meth:`sweep`).

        Error handling: with ``nc`` and ``reopen`` (an async callable returning the bucket,
        or None), a reconnect to NATS or a watch that ends makes it reopen the bucket --
        a restarted server may have lost it (it lives in memory), and then ``reopen``
        creates it again -- and watch anew, so the directory never goes quietly stale."""
        started = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sweep_forever)
            while True:
                seen = reconnect_count(nc)
                try:
                    watcher = await kv.watchall()
                except Exception as exc:
                    if reopen is None or not started:
                        raise
                    log.warning("cannot watch the directory bucket again (%r); retrying", exc)
                    await anyio.sleep(1.0)
                    kv = await reopen() or kv
                    continue
                done = anyio.Event()
                try:
                    with anyio.CancelScope() as scope:
                        if reopen is not None and nc is not None:
                            tg.start_soon(cancel_on_reconnect, nc, seen, scope, done)
                        async for entry in watcher:
                            if entry is None:  # the initial values are all in
                                if not started:
                                    started = True
                                    self.source = "kv"
                                    task_status.started()
                                continue
                            if entry.operation is not None or not entry.value:
                                continue  # DEL / PURGE / expiry marker
                            try:
                                self.handle(entry.value, key=entry.key)
                            except Exception as exc:
                                self._count(exc)
                finally:
                    done.set()
                    with anyio.CancelScope(shield=True):
                        try:
                            await watcher.stop()
                        except Exception:
                            pass
                if reopen is None:
                    break  # the watch ended and nothing can renew it
                if not scope.cancel_called:
                    await anyio.sleep(1.0)  # it ended by itself: no hot loop
                log.info("NATS reconnected (or the watch ended): watching the directory anew")
                kv = await reopen() or kv
            tg.cancel_scope.cancel()

    async def _sweep_forever(self) -> None:
        while True:
            await anyio.sleep(1.0)
            self.sweep()

    async def serve(
        self,
        nc: Any,
        *,
        solicit: bool = True,
        bucket: bool = True,
        kv: Any = None,
        reopen: Callable[[], Any] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow the directory until cancelled: the JetStream bucket (RFC 0001 §8.15,
        :meth:`follow_bucket`; ``kv`` when given, else opened when ``bucket``) and
        the adverts subject (§8.10), where nodes without JetStream (or of revision 1,
        or in ``directory = "subject"`` mode) advertise.  Ready once the bucket's
        current values are in and the subject is subscribed.

        On the subject, with ``solicit`` (the default), once subscribed it asks every
        node of the federation to advertise now, so that the directory fills in
        milliseconds instead of one advert interval.  A failed solicitation is only
        logged: the heartbeats fill the directory anyway.  Nodes in bucket mode do not
        heartbeat on the subject, so following it costs nothing that grows with them.
        """
        if kv is None and bucket:
            kv = await open_bucket(nc, self.federation)
        async with anyio.create_task_group() as tg:
            if kv is not None:
                try:
                    await tg.start(
                        partial(
                            self.follow_bucket,
                            kv,
                            nc=nc,
                            reopen=reopen or partial(open_bucket, nc, self.federation),
                        )
                    )
                except (nats.errors.Error, OSError, TimeoutError) as exc:
                    log.warning(
                        "cannot watch the directory bucket (%r): following the adverts "
                        "subject only",
                        exc,
                    )
                    kv = None
            await tg.start(partial(self._follow_subject, nc, solicit=solicit))
            self.source = "kv" if kv is not None else "subject"
            task_status.started()

    async def _follow_subject(
        self, nc: Any, *, solicit: bool, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async def cb(msg: Any) -> None:
            try:
                self.handle(msg.data)
            except Exception as exc:
                self._count(exc)

        sub = await nc.subscribe(subjects.adverts(self.federation), cb=cb)
        try:
            if solicit:
                try:
                    await nc.publish(subjects.advert_sync(self.federation), b"")
                except Exception as exc:  # disconnected: the heartbeats still come
                    log.warning("advert sync not sent: %s", exc)
            await nc.flush()
            task_status.started()
            while True:
                await anyio.sleep(1.0)
                self.sweep()
        finally:
            await unsubscribe_quietly(sub)


def reconnect_count(nc: Any) -> int:
    """How often ``nc`` (a nats-py client) has reconnected; 0 without one."""
    stats = getattr(nc, "stats", None)
    return int(stats.get("reconnects", 0)) if isinstance(stats, dict) else 0


async def cancel_on_reconnect(
    nc: Any, seen: int, scope: anyio.CancelScope, done: anyio.Event
) -> None:
    """Cancel ``scope`` once ``nc`` reconnects (checked every second); ends at ``done``."""
    while not done.is_set():
        with anyio.move_on_after(1.0):
            await done.wait()
        if not done.is_set() and reconnect_count(nc) != seen:
            scope.cancel()
            return


class _Drop(ProtocolError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
