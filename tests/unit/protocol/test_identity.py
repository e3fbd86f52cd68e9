"""did:key identities: the W3C vector, strict parsing, signatures and sealed boxes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crankmesh.protocol.errors import ContentMismatch, InvalidDID, ProtocolError, SignatureInvalid
from crankmesh.protocol.identity import (
    DID_PREFIX,
    Identity,
    b58decode,
    b58encode,
    did_from_public_key,
    did_node_id,
    open_sealed,
    public_key_from_did,
    seal,
    spiffe_alias,
    verify_signature,
)

ZERO_DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
ZERO_PK = bytes.fromhex("3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29")
ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(32))


def test_w3c_zero_seed_vector() -> None:
    ident = Identity.from_seed(bytes(32))
    assert ident.did == ZERO_DID
    assert ident.public_key == ZERO_PK
    assert ident.node_id == ZERO_DID.removeprefix("did:key:")
    assert public_key_from_did(ZERO_DID) == ZERO_PK


@given(st.binary(min_size=32, max_size=32))
def test_did_round_trip_for_random_seeds(seed: bytes) -> None:
    ident = Identity.from_seed(seed)
    assert ident.did.startswith("did:key:z6Mk")
    assert len(ident.did) == 56
    assert public_key_from_did(ident.did) == ident.public_key
    assert did_from_public_key(ident.public_key) == ident.did


@given(st.binary(min_size=32, max_size=32))
def test_did_round_trip_for_any_32_bytes(public_key: bytes) -> None:
    did = did_from_public_key(public_key)
    assert len(did) == 56
    assert public_key_from_did(did) == public_key


@given(st.binary(max_size=40))
def test_base58_round_trip(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


def test_base58_rejects_foreign_characters() -> None:
    for c in "0OIl+/ ":
        with pytest.raises(ValueError):
            b58decode("2" + c)


def _multicodec_did(prefix: bytes, key_len: int = 32) -> str:
    return "did:key:z" + b58encode(prefix + bytes(range(1, key_len + 1)))


BODY = ZERO_DID.removeprefix(DID_PREFIX)


@pytest.mark.parametrize(
    "did",
    [
        "",
        "did:key:",
        "did:key:z",
        BODY,
        "did:web:example.com",
        "did:example:z" + BODY,
        "did:key:" + BODY,  # no multibase prefix
        "did:key:Z" + BODY,  # wrong multibase prefix
        "did:key:f" + BODY,
        "DID:KEY:z" + BODY,
        " " + ZERO_DID,
        ZERO_DID + " ",
        ZERO_DID + "\n",
        _multicodec_did(b"\xe7\x01", 33),  # secp256k1-pub
        _multicodec_did(b"\xec\x01"),  # x25519-pub
        _multicodec_did(b"\x80\x24", 33),  # p256-pub
        _multicodec_did(b"\xed\x01", 31),  # truncated key
        _multicodec_did(b"\xed\x01", 33),  # over-long key
        _multicodec_did(b"\xed"),  # no varint continuation
        ZERO_DID[:-1],  # truncated
        ZERO_DID[:-5],
        ZERO_DID + "a",
        ZERO_DID + "a" * 100,  # over-long
        "did:key:z" + "1" + BODY,  # non-canonical leading zero byte
        "did:key:z11" + BODY,
        *(ZERO_DID[:20] + c + ZERO_DID[21:] for c in "0OIl"),  # not base58
        ZERO_DID[:20] + "é" + ZERO_DID[21:],
        ZERO_DID.replace("z6Mk", "z6MK"),  # a different (wrong-multicodec) number
    ],
)
def test_malformed_dids_are_rejected(did: str) -> None:
    with pytest.raises(InvalidDID):
        public_key_from_did(did)


@pytest.mark.parametrize("value", [None, 1, ZERO_DID.encode(), [ZERO_DID], {"did": 1}])
def test_non_str_dids_are_rejected(value: object) -> None:
    with pytest.raises(InvalidDID):
        public_key_from_did(value)  # type: ignore[arg-type]


def test_node_id_and_alias() -> None:
    node_id = "z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
    assert did_node_id(ZERO_DID) == node_id
    assert spiffe_alias(ZERO_DID, "mesh.example") == f"spiffe://mesh.example/node/{node_id}"
    with pytest.raises(InvalidDID):
        did_node_id("did:key:zbogus")


def test_from_seed_checks_length() -> None:
    with pytest.raises(ValueError):
        Identity.from_seed(b"\x00" * 31)


def test_identity_does_not_leak_its_seed() -> None:
    ident = Identity.from_seed(bytes(range(32)))
    assert ident.seed == bytes(range(32))
    assert ident.seed.hex() not in repr(ident)
    assert repr(ident) == f"Identity(did={ident.did!r})"


def test_equality_is_by_did() -> None:
    assert Identity.from_seed(bytes(32)) == BOB
    assert hash(Identity.from_seed(bytes(32))) == hash(BOB)
    assert ALICE != BOB
    assert len({Identity.generate(), Identity.generate()}) == 2


def test_sign_and_verify() -> None:
    sig = ALICE.sign(b"message")
    assert len(sig) == 64
    verify_signature(ALICE.did, b"message", sig)
    assert ALICE.sign(b"message") == sig  # Ed25519 is deterministic
    with pytest.raises(SignatureInvalid):
        verify_signature(ALICE.did, b"messagE", sig)
    with pytest.raises(SignatureInvalid):
        verify_signature(BOB.did, b"message", sig)
    with pytest.raises(SignatureInvalid):
        verify_signature(ALICE.did, b"message", sig[:63])
    with pytest.raises(SignatureInvalid):
        verify_signature(ALICE.did, b"message", bytes(64))
    with pytest.raises(InvalidDID):
        verify_signature("did:key:zbogus", b"message", sig)


def test_signature_verification_fails_for_non_curve_keys() -> None:
    for pk in (b"\xff" * 32, bytes(32), b"\x01" + bytes(31)):
        with pytest.raises(SignatureInvalid):
            verify_signature(did_from_public_key(pk), b"m", bytes(64))


def test_sealed_box_round_trip() -> None:
    box = seal(b"secret payload", BOB.did)
    assert len(box) == len(b"secret payload") + 48
    assert open_sealed(box, BOB) == b"secret payload"
    assert seal(b"secret payload", BOB.did) != box  # fresh ephemeral key each time


def test_sealed_box_only_opens_for_its_recipient() -> None:
    box = seal(b"secret", BOB.did)
    with pytest.raises(ContentMismatch):
        open_sealed(box, ALICE)
    tampered = bytearray(box)
    tampered[-1] ^= 1
    with pytest.raises(ContentMismatch):
        open_sealed(bytes(tampered), BOB)
    for garbage in (b"", b"short", bytes(47)):
        with pytest.raises(ContentMismatch):
            open_sealed(garbage, BOB)


def test_sealing_to_a_key_that_is_no_curve_point_is_a_protocol_error() -> None:
    for pk in (b"\xff" * 32, bytes(32), b"\x01" + bytes(31)):
        with pytest.raises(InvalidDID):
            seal(b"x", did_from_public_key(pk))


def test_error_reasons() -> None:
    assert InvalidDID.reason == "invalid_did"
    assert SignatureInvalid.reason == "bad_signature"
    assert issubclass(InvalidDID, ProtocolError)
