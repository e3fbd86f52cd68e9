"""Content identifiers: CIDv1, sha2-256, base32 lower-case (RFC 0001 §4, fixed).

Binary form: ``0x01`` (CIDv1) ‖ varint(codec) ‖ ``0x12 0x20`` (sha2-256, 32 bytes)
‖ digest.  String form: ``"b"`` + RFC 4648 base32, lower-case, no padding.

Codecs:

* ``messagepack`` (0x0201, varint ``0x81 0x04``) — protocol documents: jobs,
  signed envelopes (bids, assignments, receipts, tokens, ...);
* ``raw`` (0x55) — opaque blobs: job payloads and results.

The ``multiformats`` package computes the same CIDs but costs 70–130 µs per
operation; these functions use ``hashlib`` and a cached prefix (≈1–2 µs) and the
unit tests check equality with ``multiformats``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from typing import Final

from .errors import ContentMismatch, InvalidCID

__all__ = [
    "CODEC_MESSAGEPACK",
    "CODEC_RAW",
    "cid_digest",
    "cid_for_blob",
    "cid_for_document",
    "cid_from_digest",
    "parse_cid",
    "verify_blob",
]

CODEC_MESSAGEPACK: Final = 0x0201
CODEC_RAW: Final = 0x55

_PREFIX: Final = {
    CODEC_MESSAGEPACK: b"\x01\x81\x04\x12\x20",
    CODEC_RAW: b"\x01\x55\x12\x20",
}
_CODEC_OF_PREFIX: Final = {v: k for k, v in _PREFIX.items()}
_STRLEN: Final = {
    CODEC_MESSAGEPACK: 1 + len(base64.b32encode(b"\0" * 37).rstrip(b"=")),
    CODEC_RAW: 1 + len(base64.b32encode(b"\0" * 36).rstrip(b"=")),
}


_B32 = "abcdefghijklmnopqrstuvwxyz234567"
#: Every 10-bit value as two base32 characters: encodes 5 bytes in 4 table look-ups.
_B32_PAIRS: Final = tuple(a + b for a in _B32 for b in _B32)


_B32_TO_INT_DIGITS: Final = str.maketrans(_B32, "0123456789abcdefghijklmnopqrstuv")
_B32_BODY_RE: Final = re.compile(r"[a-z2-7]+")


def _b32_lower_nopad(raw: bytes) -> str:
    """RFC 4648 base32, lower-case, no padding (``base64.b32encode`` is pure Python
    in 3.11 and ~10x slower)."""
    bits = len(raw) * 8
    nchars = -(-bits // 5)
    pad = -bits % 10
    n = int.from_bytes(raw, "big") << pad
    pairs = _B32_PAIRS
    out = "".join([pairs[(n >> s) & 1023] for s in range(bits + pad - 10, -1, -10)])
    return out[:nchars]


def cid_from_digest(digest: bytes, codec: int) -> str:
    """The CID string for a sha2-256 ``digest`` under ``codec``."""
    if len(digest) != 32:
        raise ValueError("a sha2-256 digest is 32 bytes")
    return "b" + _b32_lower_nopad(_PREFIX[codec] + digest)


def cid_for_document(canonical_bytes: bytes) -> str:
    """CID (codec ``messagepack``) of canonical msgpack bytes."""
    return cid_from_digest(hashlib.sha256(canonical_bytes).digest(), CODEC_MESSAGEPACK)


def cid_for_blob(data: bytes) -> str:
    """CID (codec ``raw``) of an opaque blob."""
    return cid_from_digest(hashlib.sha256(data).digest(), CODEC_RAW)


def parse_cid(text: str) -> tuple[int, bytes]:
    """Parse a CID string into ``(codec, digest)``; :class:`InvalidCID` otherwise.

    Only the forms crankmesh produces are accepted: CIDv1, base32 lower-case,
    sha2-256, codec ``messagepack`` or ``raw``.
    """
    # Type check before the cache: lru_cache would raise TypeError on unhashable input.
    if not isinstance(text, str):
        raise InvalidCID(f"not a base32 CIDv1 string: {text!r:.80}")
    return _parse_cid(text)


@functools.lru_cache(maxsize=16384)
def _parse_cid(text: str) -> tuple[int, bytes]:
    if not text.startswith("b") or len(text) > 80:
        raise InvalidCID(f"not a base32 CIDv1 string: {text!r:.80}")
    body = text[1:]
    if body != body.lower():
        raise InvalidCID(f"CID must be lower-case base32: {text!r}")
    if not _B32_BODY_RE.fullmatch(body):
        raise InvalidCID(f"bad base32 in CID {text!r}")
    # RFC 4648 base32 digits are values 0..31: translated to ``int``'s base-32
    # digits they decode in C.  The trailing pad bits must be zero, and the length
    # is fixed per codec (checked below): exactly one string per CID.
    bits = 5 * len(body)
    pad = bits % 8
    n = int(body.translate(_B32_TO_INT_DIGITS), 32)
    if n & ((1 << pad) - 1):
        raise InvalidCID(f"non-canonical CID string {text!r}")
    raw = (n >> pad).to_bytes(bits // 8, "big")
    for prefix, codec in _CODEC_OF_PREFIX.items():
        if raw.startswith(prefix) and len(raw) == len(prefix) + 32:
            if len(text) != _STRLEN[codec]:
                raise InvalidCID(f"non-canonical CID string {text!r}")
            return codec, raw[len(prefix) :]
    raise InvalidCID(
        f"unsupported CID {text!r}: crankmesh accepts CIDv1 sha2-256 with codec messagepack or raw"
    )


def cid_digest(text: str) -> bytes:
    """The sha2-256 digest inside a CID string."""
    return parse_cid(text)[1]


def verify_blob(data: bytes, cid: str) -> None:
    """Raise :class:`ContentMismatch` unless ``data`` hashes to ``cid`` (raw or document)."""
    codec, digest = parse_cid(cid)
    if hashlib.sha256(data).digest() != digest:
        raise ContentMismatch(f"content does not hash to {cid}")
    del codec
