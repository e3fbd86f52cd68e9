"""Signed envelopes: parsing, verification, domain separation, freshness and replay."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crankmesh.protocol.cid import cid_for_document
from crankmesh.protocol.encoding import canonical_decode, canonical_encode
from crankmesh.protocol.envelope import (
    DOMAIN,
    MAX_ENVELOPE_BYTES,
    PROTOCOL_VERSION,
    Envelope,
    ReplayGuard,
    _split_canonical_outer,
    check_fresh,
    open_envelope,
    sign_envelope,
    signing_input,
)
from crankmesh.protocol.errors import (
    DecodeError,
    InvalidDID,
    OversizedMessage,
    ProtocolError,
    ReplayedMessage,
    SignatureInvalid,
    StaleMessage,
    UnsupportedVersion,
    WrongMessageType,
)
from crankmesh.protocol.identity import Identity

ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(32))
T0 = 1_700_000_000_000


def small_envelope() -> Envelope:
    return sign_envelope(ALICE, "bid", {"ts": T0, "exp": T0 + 10_000, "nonce": bytes(16)})


def outer(raw: bytes) -> dict[str, Any]:
    value = canonical_decode(raw)
    assert isinstance(value, dict)
    return value


def rebuild(**changes: Any) -> bytes:
    """The small envelope with outer fields replaced (``None`` removes a field)."""
    fields = outer(small_envelope().raw)
    for key, value in changes.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    return canonical_encode(fields)


def with_body(body: dict[str, Any], **changes: Any) -> bytes:
    """An envelope carrying ``body`` as is, under the small envelope's signature."""
    env = small_envelope()
    return canonical_encode(
        {"b": canonical_encode(body), "s": env.signature, "t": env.type, "v": 1, **changes}
    )


def open_and_verify(raw: bytes, **kwargs: Any) -> Envelope:
    env = open_envelope(raw, **kwargs)
    env.verify()
    return env


# --------------------------------------------------------------------------- happy path


def test_sign_open_verify() -> None:
    env = small_envelope()
    assert env.verified
    got = open_envelope(env.raw, expected_type="bid")
    assert not got.verified
    got.verify()
    assert got.verified
    assert got.type == "bid"
    assert got.signer == ALICE.did
    assert got.ts == T0
    assert got.exp == T0 + 10_000
    assert got.body == env.body
    assert got.body_bytes == env.body_bytes
    assert got.signature == env.signature
    assert got.raw == env.raw
    assert got.cid == env.cid == cid_for_document(env.raw)


def test_wire_layout() -> None:
    env = small_envelope()
    fields = outer(env.raw)
    assert list(fields) == ["b", "s", "t", "v"]
    assert fields == {"b": env.body_bytes, "s": env.signature, "t": "bid", "v": PROTOCOL_VERSION}
    assert env.raw.startswith(b"\x84\xa1b\xc4")
    assert canonical_decode(env.body_bytes) == env.body
    assert signing_input("bid", env.body_bytes) == DOMAIN + b"bid\x00" + env.body_bytes
    assert DOMAIN == b"crankmesh/v1/"


def test_signing_is_deterministic_and_sets_the_signer() -> None:
    a = sign_envelope(ALICE, "bid", {"ts": 5})
    b = sign_envelope(ALICE, "bid", {"ts": 5, "signer": ALICE.did})
    assert a.raw == b.raw
    assert a.body["signer"] == ALICE.did


def test_sign_refuses_bad_bodies() -> None:
    with pytest.raises(ValueError, match="signer"):
        sign_envelope(ALICE, "bid", {"ts": 1, "signer": BOB.did})
    with pytest.raises(ValueError, match="ts"):
        sign_envelope(ALICE, "bid", {})
    with pytest.raises(TypeError, match="float"):
        sign_envelope(ALICE, "bid", {"ts": 1, "price": 1.5})


# --------------------------------------------------------------------------- tampering


def test_every_single_bit_flip_is_rejected() -> None:
    raw = small_envelope().raw
    for i in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[i // 8] ^= 1 << (i % 8)
        try:
            open_and_verify(bytes(flipped))
        except ProtocolError:
            continue
        pytest.fail(f"flipping bit {i} of the envelope was not detected")


@settings(max_examples=80)
@given(st.data())
def test_random_byte_changes_are_rejected(data: st.DataObject) -> None:
    raw = bytearray(small_envelope().raw)
    i = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
    raw[i] = new
    with pytest.raises(ProtocolError):
        open_and_verify(bytes(raw))


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        open_and_verify(data)


def _general_split(raw: bytes) -> tuple[str, bytes, bytes] | None:
    """What the general decoder makes of ``raw``: the triple, or None if it refuses it."""
    try:
        value = canonical_decode(raw)
    except ProtocolError:
        return None
    if not isinstance(value, dict) or set(value) != {"b", "s", "t", "v"}:
        return None
    if type(value["v"]) is not int or value["v"] != 1:
        return None
    if not isinstance(value["t"], str) or not isinstance(value["b"], bytes):
        return None
    if not isinstance(value["s"], bytes) or len(value["s"]) != 64:
        return None
    return value["t"], value["b"], value["s"]


@pytest.mark.parametrize("body_len", [0, 1, 200, 255, 256, 70_000])
@pytest.mark.parametrize("mtype", ["a", "bid", "x" * 31, "y" * 32])
def test_fast_outer_split_matches_the_general_decoder(body_len: int, mtype: str) -> None:
    body = {"ts": T0, "pad": b"\x07" * body_len}
    raw = sign_envelope(ALICE, mtype, body).raw
    split = _split_canonical_outer(raw)
    assert split is not None
    assert split == _general_split(raw)


@settings(max_examples=300)
@given(st.data())
def test_fast_outer_split_never_accepts_what_the_general_decoder_refuses(
    data: st.DataObject,
) -> None:
    raw = bytearray(small_envelope().raw)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 3))
    mutated = bytes(raw[: len(raw) - cut])
    split = _split_canonical_outer(mutated)
    if split is not None:
        assert split == _general_split(mutated)


def test_expected_type_mismatch() -> None:
    with pytest.raises(WrongMessageType) as info:
        open_envelope(small_envelope().raw, expected_type="assignment")
    assert info.value.got == "bid"
    assert info.value.expected == "assignment"
    assert info.value.reason == "wrong_type"


def test_domain_separation() -> None:
    # A bid signature presented as an assignment: the type is part of the signed bytes.
    raw = rebuild(t="assignment")
    env = open_envelope(raw, expected_type="assignment")
    with pytest.raises(SignatureInvalid):
        env.verify()


def test_signer_swapped_for_another_did() -> None:
    env = small_envelope()
    raw = with_body({**env.body, "signer": BOB.did})
    swapped = open_envelope(raw)
    assert swapped.signer == BOB.did
    with pytest.raises(SignatureInvalid):
        swapped.verify()


def test_signature_replaced() -> None:
    env = small_envelope()
    other = sign_envelope(ALICE, "bid", {"ts": T0 + 1})
    with pytest.raises(SignatureInvalid):
        open_and_verify(rebuild(s=other.signature))
    with pytest.raises(SignatureInvalid):
        open_and_verify(rebuild(s=bytes(64)))
    with pytest.raises(SignatureInvalid):
        open_envelope(rebuild(s=env.signature[:63]))
    with pytest.raises(SignatureInvalid):
        open_envelope(rebuild(s=env.signature + b"\x00"))


# --------------------------------------------------------------------------- shape


@pytest.mark.parametrize("version", [2, 0, 255, -1, 2**40])
def test_unsupported_version(version: int) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        open_envelope(rebuild(v=version))
    assert str(version) in str(info.value)
    assert info.value.version == version
    assert info.value.reason == "version"


@pytest.mark.parametrize("version", [True, "1", b"\x01", None])
def test_version_must_be_the_integer_one(version: Any) -> None:
    # ``v: true`` would be a second encoding of the same signed message (True == 1).
    raw = canonical_encode({**outer(small_envelope().raw), "v": version})
    with pytest.raises(UnsupportedVersion):
        open_envelope(raw)


def test_envelope_with_extra_or_missing_keys() -> None:
    with pytest.raises(DecodeError):
        open_envelope(rebuild(x=1))
    for key in "bst":
        with pytest.raises(DecodeError):
            open_envelope(rebuild(**{key: None}))
    with pytest.raises(DecodeError):
        open_envelope(rebuild(v=None))


@pytest.mark.parametrize(
    "changes",
    [
        {"t": ""},
        {"t": "x" * 33},
        {"t": "bíd"},
        {"t": 7},
        {"t": b"bid"},
        {"b": "not bin"},
        {"s": "not bin"},
    ],
)
def test_envelope_field_types(changes: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        open_envelope(rebuild(**changes))


@pytest.mark.parametrize("value", [[], 1, "envelope", b"x", None])
def test_envelope_must_be_a_map(value: Any) -> None:
    with pytest.raises(DecodeError):
        open_envelope(canonical_encode(value))


def test_body_must_be_canonical_map() -> None:
    with pytest.raises(DecodeError):
        open_envelope(rebuild(b=canonical_encode([1, 2])))
    with pytest.raises(DecodeError):
        open_envelope(rebuild(b=bytes.fromhex("82a16201a16102")))  # unsorted
    with pytest.raises(DecodeError):
        open_envelope(rebuild(b=b"\xc1"))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"ts": T0}, DecodeError),
        ({"ts": T0, "signer": 5}, DecodeError),
        ({"ts": T0, "signer": "did:key:zbogus"}, InvalidDID),
        ({"signer": ALICE.did}, DecodeError),
        ({"ts": True, "signer": ALICE.did}, DecodeError),
        ({"ts": -1, "signer": ALICE.did}, DecodeError),
        ({"ts": "1", "signer": ALICE.did}, DecodeError),
        ({"ts": T0, "signer": ALICE.did, "exp": "soon"}, DecodeError),
        ({"ts": T0, "signer": ALICE.did, "exp": False}, DecodeError),
    ],
)
def test_body_required_fields(body: dict[str, Any], error: type[ProtocolError]) -> None:
    with pytest.raises(error):
        open_envelope(with_body(body))


def test_oversized() -> None:
    raw = small_envelope().raw
    with pytest.raises(OversizedMessage) as info:
        open_envelope(raw, max_len=len(raw) - 1)
    assert info.value.size == len(raw)
    assert info.value.limit == len(raw) - 1
    assert info.value.reason == "oversized"
    open_envelope(raw, max_len=len(raw))
    big = sign_envelope(ALICE, "bid", {"ts": 1, "blob": bytes(1024)})
    with pytest.raises(OversizedMessage):
        open_envelope(big.raw, max_len=1024)
    assert MAX_ENVELOPE_BYTES >= 1 << 20


# --------------------------------------------------------------------------- freshness


def test_fresh_message_passes() -> None:
    env = small_envelope()
    check_fresh(env, T0, max_age_ms=1_000)
    check_fresh(env, T0 + 1_000, max_age_ms=1_000)  # exactly max_age old
    check_fresh(env, T0 - 5_000, max_age_ms=1_000)  # exactly at the skew limit
    check_fresh(env, T0 + 10_000, max_age_ms=60_000)  # exactly at exp


def test_expired() -> None:
    with pytest.raises(StaleMessage, match="expired"):
        check_fresh(small_envelope(), T0 + 10_001, max_age_ms=60_000)


def test_too_old() -> None:
    with pytest.raises(StaleMessage, match="old"):
        check_fresh(small_envelope(), T0 + 1_001, max_age_ms=1_000)


def test_from_the_future() -> None:
    with pytest.raises(StaleMessage, match="future"):
        check_fresh(small_envelope(), T0 - 5_001, max_age_ms=1_000)
    with pytest.raises(StaleMessage):
        check_fresh(small_envelope(), T0 - 101, max_age_ms=1_000, max_skew_ms=100)


def test_message_without_exp_is_bounded_by_age_only() -> None:
    env = sign_envelope(ALICE, "accept", {"ts": T0})
    assert env.exp is None
    check_fresh(env, T0 + 59_999, max_age_ms=60_000)
    with pytest.raises(StaleMessage):
        check_fresh(env, T0 + 60_001, max_age_ms=60_000)


def test_stale_reason() -> None:
    assert StaleMessage.reason == "stale"
    assert ReplayedMessage.reason == "replay"


# --------------------------------------------------------------------------- replay


def test_replay_is_rejected() -> None:
    guard = ReplayGuard()
    env = small_envelope()
    guard.remember(env.cid, T0 + 10_000, T0)
    assert env.cid in guard
    with pytest.raises(ReplayedMessage):
        guard.remember(env.cid, T0 + 10_000, T0 + 1)


def test_expiry_frees_entries() -> None:
    guard = ReplayGuard()
    guard.remember("a", 100, 0)
    guard.remember("b", 200, 0)
    with pytest.raises(ReplayedMessage):
        guard.remember("a", 100, 100)  # still remembered at its expiry instant
    guard.remember("c", 300, 101)  # pruning happens on the next remember
    assert "a" not in guard and "b" in guard
    guard.remember("a", 400, 101)  # and the key may be used again
    assert len(guard) == 3
    assert guard.evictions == 0


def test_capacity_is_bounded_and_evictions_counted() -> None:
    guard = ReplayGuard(capacity=10)
    for i in range(25):
        guard.remember(f"k{i}", 1_000 + i, 0)
        assert len(guard) <= 10
    assert len(guard) == 10
    assert guard.evictions == 15
    # The entries closest to expiry went first; the newest are still remembered.
    assert all(f"k{i}" in guard for i in range(15, 25))
    assert not any(f"k{i}" in guard for i in range(15))


def test_expired_entries_are_not_counted_as_evictions() -> None:
    guard = ReplayGuard(capacity=3)
    for i in range(3):
        guard.remember(i.to_bytes(1, "big"), 10, 0)
    guard.remember(b"late", 100, 50)
    assert len(guard) == 1
    assert guard.evictions == 0


def test_bytes_and_str_keys_can_share_a_guard() -> None:
    # Equal expiries must never make the heap compare a bytes key with a str key.
    guard = ReplayGuard(capacity=4)
    for key in ("n", b"n", "m", b"m", "o", b"o"):
        guard.remember(key, 10, 0)
    assert len(guard) == 4
    assert guard.evictions == 2
    assert "o" in guard and b"o" in guard


def test_the_cache_of_verified_envelopes_is_bounded_by_bytes() -> None:
    from crankmesh.protocol.envelope import _VERIFIED_MAX_BYTES, verified_cache_size

    ident = Identity.generate()
    for i in range(400):  # ~8 KiB each: 3.2 MiB signed in all
        sign_envelope(ident, "note", {"signer": ident.did, "ts": i, "pad": bytes(8000)})
    entries, size = verified_cache_size()
    assert size <= _VERIFIED_MAX_BYTES and 100 <= entries <= 140
