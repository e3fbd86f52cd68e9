"""Canonical MessagePack: one encoding per value, and nothing else accepted from the wire."""

from __future__ import annotations

import concurrent.futures
import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crankmesh.protocol.encoding import (
    MAX_DEPTH,
    canonical_decode,
    canonical_encode,
    canonicalize,
    encode_canonicalized,
)
from crankmesh.protocol.errors import DecodeError, NonCanonicalError, ProtocolError

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT_MIN, max_value=INT_MAX),
    st.text(max_size=20),
    st.binary(max_size=20),
)
# Generous timing: the suite shares two cores with other work.
RELAXED: dict[str, Any] = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}

wire_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=8), children, max_size=5),
    ),
    max_leaves=25,
)
wire_maps = st.dictionaries(
    st.text(max_size=6),
    st.one_of(leaves, st.dictionaries(st.text(max_size=6), leaves, max_size=4)),
    max_size=8,
)


def shuffled(value: Any, rnd: random.Random) -> Any:
    """The same value with every map's insertion order shuffled."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


def with_float(value: Any, rnd: random.Random, f: float) -> Any:
    """``value`` with ``f`` placed somewhere inside it (or instead of it)."""
    if isinstance(value, dict) and value and rnd.random() < 0.6:
        key = rnd.choice(sorted(value))
        return {**value, key: with_float(value[key], rnd, f)}
    if isinstance(value, list) and value and rnd.random() < 0.6:
        i = rnd.randrange(len(value))
        return value[:i] + [with_float(value[i], rnd, f)] + value[i + 1 :]
    if isinstance(value, dict):
        return {**value, "\uffff-float": f}
    if isinstance(value, list):
        out = list(value)
        out.insert(rnd.randrange(len(value) + 1), f)
        return out
    return f


def map_key_order(data: bytes) -> list[list[str]]:
    """Key order of every map in ``data``, in the order the bytes hold them."""
    orders: list[list[str]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        orders.append([k for k, _ in pairs])
        return dict(pairs)

    msgpack.unpackb(data, raw=False, object_pairs_hook=hook)
    return orders


# --------------------------------------------------------------------------- encode


@settings(max_examples=60, **RELAXED)
@given(wire_values)
def test_round_trip(value: Any) -> None:
    data = canonical_encode(value)
    assert canonical_decode(data) == value
    assert canonical_encode(canonical_decode(data)) == data


@settings(max_examples=60, **RELAXED)
@given(wire_values, st.randoms(use_true_random=False))
def test_encoding_does_not_depend_on_insertion_order(value: Any, rnd: random.Random) -> None:
    assert canonical_encode(shuffled(value, rnd)) == canonical_encode(value)


@settings(max_examples=60, **RELAXED)
@given(wire_maps)
def test_map_keys_are_sorted_by_utf8_bytes(value: dict[str, Any]) -> None:
    for keys in map_key_order(canonical_encode(value)):
        encoded = [k.encode("utf-8") for k in keys]
        assert encoded == sorted(encoded)
        assert len(set(encoded)) == len(encoded)


def test_utf8_order_is_not_utf16_order() -> None:
    # U+FF21 (ef bc a1) sorts before U+1F600 (f0 9f 98 80) by UTF-8 bytes, although a
    # UTF-16 comparison (d83d < ff21) puts the emoji first: canonical order is UTF-8.
    keys = ["\U0001f600", "\uff21", "z", "\u00e9", "B", "a", "aa"]
    assert sorted(keys, key=lambda k: k.encode("utf-16-be")) != sorted(
        keys, key=lambda k: k.encode("utf-8")
    )
    data = canonical_encode({k: 0 for k in keys})
    assert map_key_order(data) == [["B", "a", "aa", "z", "\u00e9", "\uff21", "\U0001f600"]]


@pytest.mark.parametrize(
    ("value", "hex_"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "cc80"),
        (255, "ccff"),
        (256, "cd0100"),
        (65536, "ce00010000"),
        (2**32, "cf0000000100000000"),
        (2**64 - 1, "cfffffffffffffffff"),
        (-1, "ff"),
        (-32, "e0"),
        (-33, "d0df"),
        (-129, "d1ff7f"),
        (-(2**63), "d38000000000000000"),
        (None, "c0"),
        (False, "c2"),
        (True, "c3"),
        ("", "a0"),
        ("x" * 32, "d920" + "78" * 32),
        (b"", "c400"),
        (b"\x01", "c40101"),
        ([], "90"),
        ({}, "80"),
        (list(range(16)), "dc0010" + bytes(range(16)).hex()),
    ],
)
def test_shortest_forms(value: Any, hex_: str) -> None:
    assert canonical_encode(value).hex() == hex_
    assert canonical_decode(bytes.fromhex(hex_)) == value


def test_bool_and_int_are_distinct() -> None:
    assert canonical_encode(True) != canonical_encode(1)
    assert canonical_encode({"a": False}) != canonical_encode({"a": 0})


def test_tuples_and_bytes_likes_are_normalised() -> None:
    assert canonical_encode((1, 2)) == canonical_encode([1, 2])
    assert canonical_encode(bytearray(b"ab")) == canonical_encode(b"ab")
    assert canonical_encode(memoryview(b"ab")) == canonical_encode(b"ab")


@settings(max_examples=50, **RELAXED)
@given(wire_values, st.randoms(use_true_random=False), st.floats(allow_nan=True))
def test_floats_are_refused_anywhere(value: Any, rnd: random.Random, f: float) -> None:
    with pytest.raises(TypeError, match="float"):
        canonical_encode(with_float(value, rnd, f))


@pytest.mark.parametrize("key", [1, b"k", None, True, (1, 2), 1.5])
def test_non_str_keys_are_refused(key: Any) -> None:
    with pytest.raises(TypeError):
        canonical_encode({"ok": {key: 1}})


@pytest.mark.parametrize("value", [{1, 2}, object(), 1j, frozenset()])
def test_values_without_canonical_form_are_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        canonical_encode([value])


@pytest.mark.parametrize("value", [INT_MAX + 1, INT_MIN - 1, 10**30])
def test_integers_out_of_range_are_refused(value: int) -> None:
    with pytest.raises(ValueError):
        canonical_encode({"n": value})


def nested(depth: int) -> Any:
    value: Any = 0
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def test_nesting_limit_on_encode() -> None:
    canonical_encode(nested(MAX_DEPTH))  # the scalar sits at depth MAX_DEPTH
    with pytest.raises(ValueError, match="nesting"):
        canonical_encode(nested(MAX_DEPTH + 1))


def test_nesting_limit_on_decode() -> None:
    ok = b"\x91" * MAX_DEPTH + b"\x00"
    assert canonical_decode(ok) is not None
    with pytest.raises(NonCanonicalError):
        canonical_decode(b"\x91" * (MAX_DEPTH + 1) + b"\x00")
    with pytest.raises(DecodeError):  # far deeper than any stack: still only DecodeError
        canonical_decode(b"\x91" * 100_000 + b"\x00")


def test_canonicalize_then_encode_is_canonical_encode() -> None:
    value = {"b": [1, {"z": 1, "a": 2}], "a": None}
    assert encode_canonicalized(canonicalize(value)) == canonical_encode(value)
    assert list(canonicalize(value)) == ["a", "b"]


# --------------------------------------------------------------------------- decode


NON_CANONICAL = [
    ("82a16201a16102", "unsorted map"),
    ("82a16101a16102", "duplicate key"),
    ("cd0001", "uint16 for 1"),
    ("cc05", "uint8 for 5"),
    ("ce000000ff", "uint32 for 255"),
    ("d005", "int8 for a positive int"),
    ("d1ffff", "int16 for -1"),
    ("d90161", "str8 for a short str"),
    ("de0001a16101", "map16 for one entry"),
    ("dc000101", "array16 for one element"),
    ("81c4016101", "bin key (str encoded as bin)"),
    ("ca3f800000", "float32"),
    ("cb3ff0000000000000", "float64"),
    ("c70005", "ext8 of length 0"),
]


@pytest.mark.parametrize(("hex_", "why"), NON_CANONICAL)
def test_non_canonical_input_is_rejected(hex_: str, why: str) -> None:
    with pytest.raises(NonCanonicalError):
        canonical_decode(bytes.fromhex(hex_))


@pytest.mark.parametrize(
    ("hex_", "why"),
    [
        ("810101", "int key"),
        ("81900101", "array key"),
        ("d40100", "fixext1"),
        ("d6ff00000000", "timestamp extension"),
        ("c7010500", "ext8"),
        ("a1ff", "invalid UTF-8"),
        ("a2eda080", "UTF-16 surrogate in UTF-8"),
        ("c1", "reserved byte"),
        ("0102", "trailing bytes"),
        ("9201", "truncated array"),
        ("d9", "truncated str8 header"),
        ("c40561", "truncated bin"),
        ("", "empty"),
    ],
)
def test_malformed_input_is_rejected(hex_: str, why: str) -> None:
    with pytest.raises(DecodeError):
        canonical_decode(bytes.fromhex(hex_))


def test_bin_where_str_expected_decodes_as_bytes() -> None:
    # str and bin are different types: the same letters as bin are not the str.
    assert canonical_decode(bytes.fromhex("c40161")) == b"a"
    assert canonical_decode(bytes.fromhex("a161")) == "a"


def test_decode_limits_and_input_types() -> None:
    data = canonical_encode({"a": b"x" * 100})
    with pytest.raises(DecodeError, match="limit"):
        canonical_decode(data, max_len=10)
    assert canonical_decode(bytearray(data)) == canonical_decode(memoryview(data))
    for bad in ("text", None, 12, [1]):
        with pytest.raises(DecodeError):
            canonical_decode(bad)  # type: ignore[arg-type]


def test_reasons() -> None:
    assert DecodeError.reason == "decode"
    assert NonCanonicalError.reason == "non_canonical"
    assert issubclass(NonCanonicalError, DecodeError)
    assert issubclass(DecodeError, ProtocolError)


@settings(max_examples=150, **RELAXED)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        value = canonical_decode(data)
    except DecodeError:
        return
    assert canonical_encode(value) == data


@settings(max_examples=60, **RELAXED)
@given(wire_values, st.data())
def test_mutated_encodings_raise_only_decode_error(value: Any, data: st.DataObject) -> None:
    raw = bytearray(canonical_encode(value))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    try:
        decoded = canonical_decode(bytes(raw))
    except DecodeError:
        return
    assert canonical_encode(decoded) == bytes(raw)


def test_the_reused_packer_survives_failures_and_threads() -> None:
    """Encoding reuses one msgpack Packer per thread: a failed pack leaves nothing
    behind, and threads packing at once each get their own exact bytes."""
    with pytest.raises(TypeError):
        encode_canonicalized({"a": [1, object()]})
    assert encode_canonicalized({"a": 1}) == b"\x81\xa1a\x01"
    values = [{"i": i, "pad": b"x" * (i % 300)} for i in range(400)]
    expected = [canonical_encode(v) for v in values]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            assert list(pool.map(canonical_encode, values)) == expected
