"""The live advert directory: which peers are up and what they offer.

Every node publishes a signed :class:`~crankmesh.protocol.messages.Advert` on
``crank.<fed>.nodes.adverts`` every heartbeat; the directory keeps the newest
per signer and forgets it when its ``exp`` (TTL) passes.  The originator uses
it to know whom to expect bids from, so it can close the bid window early.

Error handling: malformed, forged, stale or out-of-order adverts are dropped
and counted (``kind="advert"``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from .observability import Metrics
from .protocol import subjects
from .protocol.envelope import check_fresh
from .protocol.errors import ProtocolError
from .protocol.messages import Advert, decode_message
from .transport import unsubscribe_quietly

__all__ = ["Peer", "PeerDirectory"]

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

    def handle(self, data: bytes) -> Advert:
        """Validate raw advert bytes and record them (raises ProtocolError)."""
        env, advert = decode_message(data, Advert, max_len=MAX_ADVERT_BYTES)
        now = _now_ms()
        check_fresh(env, now, max_age_ms=self._max_ttl_ms)
        if advert.exp - advert.ts > self._max_ttl_ms:
            raise _Drop("ttl_too_long")
        if self._trusted is not None and not self._trusted(advert.signer):
            raise _Drop("untrusted")
        env.verify()
        if self._impostor is not None and self._impostor(advert):
            raise _Drop("own_key_elsewhere")
        if advert.signer not in self._peers and len(self._peers) >= self.max_peers:
            self.sweep(now)
            if len(self._peers) >= self.max_peers:
                raise _Drop("directory_full")
        self.observe(advert, now)
        return advert

    async def serve(
        self,
        nc: Any,
        *,
        solicit: bool = True,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow the adverts subject until cancelled.

        With ``solicit`` (the default), once subscribed it asks every node of the
        federation to advertise now (RFC 0001 §8.10), so that the directory fills in
        milliseconds instead of one advert interval.  A failed solicitation is only
        logged: the heartbeats fill the directory anyway.
        """

        async def cb(msg: Any) -> None:
            try:
                self.handle(msg.data)
            except ProtocolError as exc:
                self.metrics.reject("advert", exc.reason)
            except Exception:
                self.metrics.reject("advert", "handler_error")
                log.exception("advert handler failed")

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


class _Drop(ProtocolError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
