"""The peer directory is bounded: a new peer beyond ``max_peers`` is dropped and counted."""

from __future__ import annotations

import time

import pytest

from crankmesh.directory import PeerDirectory
from crankmesh.protocol.errors import ProtocolError
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import Advert


def _advert(ident: Identity, ttl_ms: int = 5_000) -> bytes:
    now = time.time_ns() // 1_000_000
    advert = Advert(signer=ident.did, ts=now, exp=now + ttl_ms, seq=1, capabilities=[])
    return advert.sign(ident).raw


def test_a_full_directory_drops_new_peers_but_refreshes_known_ones() -> None:
    d = PeerDirectory(federation="default", max_peers=3)
    known = [Identity.generate() for _ in range(3)]
    for ident in known:
        d.handle(_advert(ident))
    assert len(d) == 3
    with pytest.raises(ProtocolError) as info:
        d.handle(_advert(Identity.generate()))
    assert info.value.reason == "directory_full"
    time.sleep(0.002)
    d.handle(_advert(known[0]))  # a known peer's newer advert is still taken
    assert len(d) == 3


def test_expired_peers_make_room() -> None:
    d = PeerDirectory(federation="default", max_peers=1)
    d.handle(_advert(Identity.generate(), ttl_ms=1))
    time.sleep(0.01)
    d.handle(_advert(Identity.generate()))
    assert len(d) == 1
