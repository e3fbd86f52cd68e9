"""Signed envelopes (RFC 0001 §5, fixed).

Wire form of every signed message — the canonical msgpack map::

    {"b": <bin: canonical body>, "s": <bin: 64-byte Ed25519 signature>,
     "t": <str: message type>, "v": 1}

The signature covers ``b"crankmesh/v1/" + t + b"\\x00" + b`` (domain separation:
a signature over a bid can never be replayed as an assignment).  The body is a
canonical map that always holds ``signer`` (the DID whose key signed) and ``ts``
(integer ms since the epoch), and where it matters ``exp`` (expiry, ms) and
``nonce`` (16 random bytes).  The CID of a signed message is the ``messagepack``
CID of the whole envelope bytes.

Parsing (:func:`open_envelope`) and signature verification
(:meth:`Envelope.verify`) are separate steps so that an originator can verify
bids lazily, best-scored first (ARCHITECTURE.md, "Performance design notes").
"""

from __future__ import annotations

import heapq
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

from .cid import cid_for_document
from .encoding import canonical_decode, canonicalize, encode_canonicalized
from .errors import (
    DecodeError,
    OversizedMessage,
    ReplayedMessage,
    SignatureInvalid,
    StaleMessage,
    UnsupportedVersion,
    WrongMessageType,
)
from .identity import Identity, public_key_from_did, verify_signature

__all__ = [
    "DOMAIN",
    "MAX_ENVELOPE_BYTES",
    "PROTOCOL_VERSION",
    "Envelope",
    "ReplayGuard",
    "check_fresh",
    "open_envelope",
    "sign_envelope",
    "signing_input",
    "verified_cache_size",
]

PROTOCOL_VERSION: Final = 1
DOMAIN: Final = b"crankmesh/v1/"
#: Default upper bound for one envelope on the wire (payloads ride inside assignments).
MAX_ENVELOPE_BYTES: Final = 8 * 1024 * 1024
_ENVELOPE_KEYS: Final = frozenset({"b", "s", "t", "v"})
_TYPE_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")


#: Envelope bytes whose signature verified, most recent last (bounded by count and by
#: bytes: 4,096 entries of up to 16 KiB each could pin 64 MiB; a soak filled it for minutes).
_VERIFIED: OrderedDict[bytes, None] = OrderedDict()
_VERIFIED_MAX = 4096
_VERIFIED_MAX_BYTES = 1 << 20
_verified_bytes = 0


def _remember_verified(raw: bytes) -> None:
    global _verified_bytes
    if len(raw) > 16384 or raw in _VERIFIED:  # big envelopes (assignments) are not worth it
        return
    _VERIFIED[raw] = None
    _verified_bytes += len(raw)
    while len(_VERIFIED) > _VERIFIED_MAX or _verified_bytes > _VERIFIED_MAX_BYTES:
        old, _ = _VERIFIED.popitem(last=False)
        _verified_bytes -= len(old)


def verified_cache_size() -> tuple[int, int]:
    """Entries and bytes in the cache of verified envelopes (for the node's gauges)."""
    return len(_VERIFIED), _verified_bytes


def signing_input(mtype: str, body_bytes: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers."""
    return DOMAIN + mtype.encode("ascii") + b"\x00" + body_bytes


@dataclass(slots=True, eq=False)
class Envelope:
    """A parsed (not necessarily verified) signed message.

    ``raw`` is the envelope exactly as received or produced; ``body`` is the
    decoded body map.  Call :meth:`verify` before trusting anything in it.
    """

    type: str
    body: dict[str, Any]
    body_bytes: bytes
    signature: bytes
    raw: bytes
    _cid: str | None = field(default=None, repr=False)
    _verified: bool = field(default=False, repr=False)

    @property
    def signer(self) -> str:
        return self.body["signer"]  # type: ignore[no-any-return]

    @property
    def ts(self) -> int:
        return self.body["ts"]  # type: ignore[no-any-return]

    @property
    def exp(self) -> int | None:
        return self.body.get("exp")

    @property
    def cid(self) -> str:
        if self._cid is None:
            self._cid = cid_for_document(self.raw)
        return self._cid

    @property
    def verified(self) -> bool:
        return self._verified

    def verify(self) -> None:
        """Check the signature against the ``signer`` DID; raise :class:`SignatureInvalid`.

        Results are remembered process-wide by the exact envelope bytes (identical bytes
        always verify the same way), so a message reaching several subscribers of one
        process -- a node's executor, client and reputation book -- is checked once.
        """
        if self._verified:
            return
        if self.raw in _VERIFIED:
            self._verified = True
            return
        verify_signature(self.signer, signing_input(self.type, self.body_bytes), self.signature)
        self._verified = True
        _remember_verified(self.raw)


def sign_envelope(
    identity: Identity, mtype: str, body: dict[str, Any], *, canonical: bool = False
) -> Envelope:
    """Sign ``body`` as a message of type ``mtype``.

    ``body["signer"]`` is set to the identity's DID (a different value is a bug
    and raises :class:`ValueError`); ``ts`` must be present.  ``canonical=True``
    promises that ``body`` is already in canonical form (what ``to_wire()`` of a
    message model returns) and skips re-sorting it; it must then hold ``signer``.
    """
    if canonical:
        if body.get("signer") != identity.did:
            raise ValueError(f"a canonical body must be signed by its signer {identity.did!r}")
        canonical_body = body
    else:
        signer = body.setdefault("signer", identity.did)
        if signer != identity.did:
            raise ValueError(f"body signer {signer!r} is not the signing identity {identity.did!r}")
        canonical_body = canonicalize(body)
    if not isinstance(body.get("ts"), int):
        raise ValueError("a signed body needs an integer 'ts' (ms since the epoch)")
    body_bytes = encode_canonicalized(canonical_body)
    if mtype.__class__ is not str or not _TYPE_RE.match(mtype):
        raise ValueError(f"message type {mtype!r} must match [a-z][a-z0-9_]{{0,31}}")
    signature = identity.sign(signing_input(mtype, body_bytes))
    # The outer map's keys are already in canonical order.
    raw = encode_canonicalized({"b": body_bytes, "s": signature, "t": mtype, "v": PROTOCOL_VERSION})
    env = Envelope(mtype, canonical_body, body_bytes, signature, raw)
    env._verified = True
    _remember_verified(raw)
    return env


def open_envelope(
    data: bytes,
    *,
    expected_type: str | None = None,
    max_len: int = MAX_ENVELOPE_BYTES,
) -> Envelope:
    """Parse an envelope from untrusted bytes, without verifying the signature.

    Error handling: raises a :class:`~crankmesh.protocol.errors.ProtocolError`
    subclass for every defect (size, encoding, version, type, shape); nothing
    else escapes.
    """
    if len(data) > max_len:
        raise OversizedMessage(len(data), max_len)
    split = _split_canonical_outer(data) if type(data) is bytes else None
    if split is not None:
        mtype, body_bytes, signature = split
        if expected_type is not None and mtype != expected_type:
            raise WrongMessageType(mtype, expected_type)
        return _open_body(data, mtype, body_bytes, signature)
    # Anything but the one canonical layout: the general decoder says what is wrong.
    outer = canonical_decode(data)
    if not isinstance(outer, dict):
        raise DecodeError("an envelope is a map")
    # ``type(...) is not int``: True == 1 in Python, and the unsigned ``v`` must
    # not admit a second encoding (it would give the same signature a new CID).
    if "v" in outer and (type(outer["v"]) is not int or outer["v"] != PROTOCOL_VERSION):
        raise UnsupportedVersion(outer["v"], (PROTOCOL_VERSION,))
    if set(outer) != _ENVELOPE_KEYS:
        raise DecodeError(f"envelope keys must be {sorted(_ENVELOPE_KEYS)}, got {sorted(outer)}")
    mtype, body_bytes, signature = outer["t"], outer["b"], outer["s"]
    if not isinstance(mtype, str) or not _TYPE_RE.match(mtype):
        raise DecodeError("envelope type must match [a-z][a-z0-9_]{0,31}")
    if not isinstance(body_bytes, bytes) or not isinstance(signature, bytes):
        raise DecodeError("envelope body and signature must be bin")
    if len(signature) != 64:
        raise SignatureInvalid(f"signature must be 64 bytes, got {len(signature)}")
    if expected_type is not None and mtype != expected_type:
        raise WrongMessageType(mtype, expected_type)
    return _open_body(data, mtype, body_bytes, signature)


def _split_canonical_outer(data: bytes) -> tuple[str, bytes, bytes] | None:
    """``(type, body, signature)`` when ``data`` is exactly the canonical envelope
    layout (RFC 0001 §5.1), else None.

    A canonical envelope is a fixed byte pattern: ``84 a1 'b' <bin> a1 's' c4 40
    <64 bytes> a1 't' <str> a1 'v' 01`` with the shortest bin and str headers.
    Matching it directly skips a general decode, a tree walk and a re-encode on
    every inbound message; anything else takes the general path.
    """
    if data[:3] != b"\x84\xa1b":
        return None
    n = len(data)
    tag = data[3] if n > 3 else 0
    if tag == 0xC4:
        start, blen = 5, data[4] if n > 4 else 0
    elif tag == 0xC5:
        start, blen = 6, int.from_bytes(data[4:6], "big")
        if blen < 0x100:
            return None
    elif tag == 0xC6:
        start, blen = 8, int.from_bytes(data[4:8], "big")
        if blen < 0x10000:
            return None
    else:
        return None
    i = start + blen
    if data[i : i + 4] != b"\xa1s\xc4\x40":
        return None
    signature = data[i + 4 : i + 68]
    i += 68
    if data[i : i + 2] != b"\xa1t":
        return None
    tag = data[i + 2] if n > i + 2 else 0
    if 0xA1 <= tag <= 0xBF:
        tlen, i = tag - 0xA0, i + 3
    elif tag == 0xD9 and n > i + 3 and data[i + 3] == 32:  # str8: only a 32-char type
        tlen, i = 32, i + 4
    else:
        return None
    if i + tlen + 3 != n or data[i + tlen :] != b"\xa1v\x01":
        return None
    try:
        mtype = data[i : i + tlen].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not _TYPE_RE.match(mtype):
        return None
    return mtype, data[start : start + blen], signature


def _open_body(data: bytes, mtype: str, body_bytes: bytes, signature: bytes) -> Envelope:
    body = canonical_decode(body_bytes)
    if not isinstance(body, dict):
        raise DecodeError("a message body is a map")
    signer = body.get("signer")
    if not isinstance(signer, str):
        raise DecodeError("message body has no 'signer'")
    public_key_from_did(signer)  # InvalidDID early, before anyone looks further
    ts = body.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        raise DecodeError("message body has no integer 'ts'")
    exp = body.get("exp")
    if exp is not None and (not isinstance(exp, int) or isinstance(exp, bool)):
        raise DecodeError("'exp' must be an integer (ms since the epoch)")
    return Envelope(mtype, body, body_bytes, signature, bytes(data))


def check_fresh(
    env: Envelope,
    now_ms: int,
    *,
    max_age_ms: int,
    max_skew_ms: int = 5_000,
) -> None:
    """Raise :class:`StaleMessage` if ``env`` is expired, too old, or from the future.

    A message is fresh when ``ts <= now + max_skew``, ``now - ts <= max_age``,
    and (when it has one) ``now <= exp``.
    """
    ts = env.ts
    if ts > now_ms + max_skew_ms:
        raise StaleMessage(
            f"{env.type} from {env.signer} is {ts - now_ms} ms in the future "
            f"(allowed skew {max_skew_ms} ms)"
        )
    if now_ms - ts > max_age_ms:
        raise StaleMessage(
            f"{env.type} from {env.signer} is {now_ms - ts} ms old (max age {max_age_ms} ms)"
        )
    exp = env.exp
    if exp is not None and now_ms > exp:
        raise StaleMessage(f"{env.type} from {env.signer} expired {now_ms - exp} ms ago")


class ReplayGuard:
    """Remembers message ids until they expire, to reject replays and duplicates.

    Memory is bounded by ``capacity``: when full, the entries closest to
    expiry are forgotten first (they are about to be rejected as stale anyway,
    provided ``max_age`` used with :func:`check_fresh` does not exceed the
    retention).  Pure: the caller passes the clock.
    """

    __slots__ = ("_capacity", "_expiry", "_heap", "_pushes", "evictions")

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._expiry: dict[bytes | str, int] = {}
        # (expiry, push counter, key): the counter breaks ties so that keys are
        # never compared (bytes < str raises TypeError when both kinds are used).
        self._heap: list[tuple[int, int, bytes | str]] = []
        self._pushes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, key: bytes | str) -> bool:
        return key in self._expiry

    def _prune(self, now_ms: int) -> None:
        heap = self._heap
        while heap and (heap[0][0] < now_ms or len(self._expiry) > self._capacity):
            exp, _, key = heapq.heappop(heap)
            if self._expiry.get(key) == exp:
                if exp >= now_ms:
                    self.evictions += 1
                del self._expiry[key]

    def remember(self, key: bytes | str, expires_ms: int, now_ms: int) -> None:
        """Record ``key``; raise :class:`ReplayedMessage` if it is already known."""
        self._prune(now_ms)
        if key in self._expiry:
            raise ReplayedMessage(f"message {key!r:.80} was already seen")
        self._expiry[key] = expires_ms
        self._pushes += 1
        heapq.heappush(self._heap, (expires_ms, self._pushes, key))
        if len(self._expiry) > self._capacity:
            self._prune(now_ms)
