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

import threading
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

#: One msgpack Packer per thread: ``msgpack.packb`` builds (and frees) a new Packer and
#: its buffer on every call, which is half the cost of packing a small message.
_packers = threading.local()


def _pack(value: Any) -> bytes:
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    try:
        return packer.pack(value)  # type: ignore[no-any-return]
    except BaseException:
        packer.reset()  # a failed pack may leave bytes in the buffer
        raise


_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def canonicalize(value: Any, _depth: int = 0) -> Any:
    """Return ``value`` with every map re-ordered into canonical key order.

    Raises :class:`TypeError` for anything that has no canonical form (floats,
    non-``str`` keys, sets, arbitrary objects) and :class:`ValueError` for
    integers out of the msgpack range.

    Keys are sorted as Python ``str``: code-point order is exactly the order
    of their UTF-8 bytes, so no encoding is needed to sort.
    """
    if _depth > MAX_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
    t = type(value)
    if t is str or t is bytes or t is bool or value is None:
        return value
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"integer {value} is outside the msgpack range")
        return value
    if t is dict or isinstance(value, Mapping):
        for k in value:
            if type(k) is not str:
                raise TypeError(f"map keys must be str, got {type(k).__name__}: {k!r}")
        d = _depth + 1
        return {k: canonicalize(value[k], d) for k in sorted(value)}
    if t is list or t is tuple:
        d = _depth + 1
        return [canonicalize(v, d) for v in value]
    if isinstance(value, str):  # str subclasses (e.g. StrEnum) encode as plain str
        return str.__add__("", value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return canonicalize(int(value), _depth)
    if isinstance(value, list | tuple):
        return canonicalize(list(value), _depth)
    if isinstance(value, float):
        raise TypeError(
            "floats are not allowed in canonical bodies; use integer micro-units, ms or µs"
        )
    raise TypeError(f"{type(value).__name__} has no canonical msgpack form")


def _check_canonical_tree(value: Any, depth: int = 0) -> None:
    """Raise NonCanonicalError unless decoded ``value`` has only canonical shapes:
    str keys in sorted order, no floats or ext types, bounded depth (the same
    bound :func:`canonicalize` applies, scalars included)."""
    if depth > MAX_DEPTH:
        raise NonCanonicalError(f"nesting deeper than {MAX_DEPTH} levels")
    t = type(value)
    if t is dict:
        if value and depth >= MAX_DEPTH:
            raise NonCanonicalError(f"nesting deeper than {MAX_DEPTH} levels")
        prev = None
        for k, v in value.items():
            if type(k) is not str:
                raise NonCanonicalError("map keys must be strings")
            if prev is not None and k <= prev:
                raise NonCanonicalError("map keys are not in canonical (sorted, unique) order")
            prev = k
            if type(v) not in _SCALARS:
                _check_canonical_tree(v, depth + 1)
    elif t is list:
        if value and depth >= MAX_DEPTH:
            raise NonCanonicalError(f"nesting deeper than {MAX_DEPTH} levels")
        for v in value:
            if type(v) not in _SCALARS:
                _check_canonical_tree(v, depth + 1)
    elif t is float:
        raise NonCanonicalError("floats are not allowed in canonical msgpack")
    elif t not in _SCALARS:  # e.g. msgpack.ExtType (a zero-length ext passes max_ext_len=0)
        raise NonCanonicalError(f"{t.__name__} has no canonical msgpack form")


_SCALARS = frozenset({str, bytes, int, bool, type(None)})


def canonical_encode(value: Any) -> bytes:
    """Encode ``value`` as canonical msgpack bytes."""
    return _pack(canonicalize(value))


def encode_canonicalized(value: Any) -> bytes:
    """Encode a value already returned by :func:`canonicalize` (skips the second walk)."""
    return _pack(value)


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
    _check_canonical_tree(value)
    # Same key order, no floats: re-packing reproduces the bytes exactly when
    # every int is in its shortest form and str/bin are not confused.
    if _pack(value) != data:
        raise NonCanonicalError(
            "msgpack is valid but not canonical (non-shortest ints, or str/bin confusion)"
        )
    return value
