"""Canonical MessagePack: the only bytes crankmesh ever signs or hashes.

Rules (RFC 0001 §3, fixed):

* maps have ``str`` keys only, sorted by their UTF-8 bytes, no duplicates;
* integers use the shortest msgpack form (msgpack-python always does), and lie
  in ``[-2**63, 2**64 - 1]``;
* **no floats** anywhere (money is integer micro-units, durations integer
  ms/µs, timestamps integer ms since the epoch);
* strings are UTF-8 ``str`` (fixstr/str8/16/32), byte strings are ``bin``;
* arrays for lists and tuples; ``nil`` for ``None``; ``true``/``false``;
* no extension types, no timestamps extension.

``canonical_encode`` refuses anything else with :class:`TypeError` (a bug in the
caller, never a property of peer input).  ``canonical_decode`` parses untrusted
bytes and raises :class:`~crankmesh.protocol.errors.DecodeError` for anything
malformed and :class:`~crankmesh.protocol.errors.NonCanonicalError` when the
bytes are valid msgpack but not the canonical encoding of what they decode to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from .errors import DecodeError, NonCanonicalError

__all__ = [
    "MAX_DEPTH",
    "canonical_decode",
    "canonical_encode",
    "canonicalize",
    "encode_canonicalized",
]

#: Deepest nesting accepted from the wire (a guard against stack exhaustion).
MAX_DEPTH = 32

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def canonicalize(value: Any, _depth: int = 0) -> Any:
    """Return ``value`` with every map re-ordered into canonical key order.

    Raises :class:`TypeError` for anything that has no canonical form (floats,
    non-``str`` keys, sets, arbitrary objects) and :class:`ValueError` for
    integers out of the msgpack range.
    """
    if _depth > MAX_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
    # bool is a subclass of int: test it first.
    if value is None or isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"integer {value} is outside the msgpack range")
        return value
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"map keys must be str, got {type(k).__name__}: {k!r}")
            items.append((k.encode("utf-8"), k, canonicalize(v, _depth + 1)))
        items.sort(key=lambda t: t[0])
        return {k: v for _, k, v in items}
    if isinstance(value, list | tuple):
        return [canonicalize(v, _depth + 1) for v in value]
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, float):
        raise TypeError(
            "floats are not allowed in canonical bodies; use integer micro-units, ms or µs"
        )
    raise TypeError(f"{type(value).__name__} has no canonical msgpack form")


def canonical_encode(value: Any) -> bytes:
    """Encode ``value`` as canonical msgpack bytes."""
    return msgpack.packb(canonicalize(value), use_bin_type=True)  # type: ignore[no-any-return]


def encode_canonicalized(value: Any) -> bytes:
    """Encode a value already returned by :func:`canonicalize` (skips the second walk)."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def canonical_decode(data: bytes, *, max_len: int | None = None) -> Any:
    """Decode untrusted bytes, requiring them to be canonical.

    Error handling: every failure is a :class:`DecodeError` (or its subclass
    :class:`NonCanonicalError`); nothing else escapes, whatever the input.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if max_len is not None and len(data) > max_len:
        raise DecodeError(f"{len(data)} bytes exceeds the limit of {max_len}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=len(data),
            max_str_len=len(data),
            max_array_len=len(data),
            max_map_len=len(data),
            max_ext_len=0,
        )
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
        RecursionError,
    ) as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from exc
    except Exception as exc:  # msgpack raises a few undocumented types
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}: {exc}") from exc
    try:
        again = canonical_encode(value)
    except (TypeError, ValueError) as exc:
        raise NonCanonicalError(f"not canonical: {exc}") from exc
    if again != data:
        raise NonCanonicalError(
            "msgpack is valid but not canonical (unsorted keys, non-shortest ints, "
            "or str/bin confusion)"
        )
    return value
