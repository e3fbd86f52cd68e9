"""did:key identities: the W3C vector, strict parsing, signatures and boxes."""

from __future__ import annotations

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crankmesh.protocol import identity as identity_mod
from crankmesh.protocol.errors import ContentMismatch, InvalidDID, ProtocolError, SignatureInvalid
from crankmesh.protocol.identity import (
    BOX_OVERHEAD,
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


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=2048))
def test_signatures_are_libsodium_ed25519(seed: bytes, message: bytes) -> None:
    """Identity.sign calls the binding directly: the same bytes as PyNaCl's SigningKey,
    verified by verify_signature and refused for any other message."""
    ident = Identity.from_seed(seed)
    sig = ident.sign(message)
    assert sig == nacl.signing.SigningKey(seed).sign(message).signature
    verify_signature(ident.did, message, sig)
    with pytest.raises(SignatureInvalid):
        verify_signature(ident.did, message + b"x", sig)


def test_box_round_trip() -> None:
    box = seal(b"secret payload", BOB.did, sender=ALICE)
    assert len(box) == len(b"secret payload") + BOX_OVERHEAD == len(b"secret payload") + 40
    assert open_sealed(box, BOB, sender_did=ALICE.did) == b"secret payload"
    again = seal(b"secret payload", BOB.did, sender=ALICE)
    assert again[:24] != box[:24] and again != box  # a fresh random nonce each time
    assert (
        seal(b"", BOB.did, sender=ALICE)
        and open_sealed(seal(b"", BOB.did, sender=ALICE), BOB, sender_did=ALICE.did) == b""
    )


def test_box_opens_only_for_its_recipient_from_its_sender() -> None:
    carol = Identity.from_seed(b"\x07" * 32)
    box = seal(b"secret", BOB.did, sender=ALICE)
    with pytest.raises(ContentMismatch):
        open_sealed(box, carol, sender_did=ALICE.did)  # not the recipient
    with pytest.raises(ContentMismatch):
        open_sealed(box, BOB, sender_did=carol.did)  # not from this sender
    with pytest.raises(ContentMismatch):
        open_sealed(box, ALICE, sender_did=BOB.did)  # reflected: each direction has its key
    tampered = bytearray(box)
    tampered[-1] ^= 1
    with pytest.raises(ContentMismatch):
        open_sealed(bytes(tampered), BOB, sender_did=ALICE.did)
    nonce_flipped = bytearray(box)
    nonce_flipped[0] ^= 1
    with pytest.raises(ContentMismatch):
        open_sealed(bytes(nonce_flipped), BOB, sender_did=ALICE.did)
    for garbage in (b"", b"short", bytes(BOX_OVERHEAD - 1), bytes(BOX_OVERHEAD)):
        with pytest.raises(ContentMismatch):
            open_sealed(garbage, BOB, sender_did=ALICE.did)


def test_box_keys_agree_per_direction() -> None:
    a_to_b = ALICE._box_key(BOB.did, outgoing=True)
    assert a_to_b == BOB._box_key(ALICE.did, outgoing=False)
    assert ALICE._box_key(BOB.did, outgoing=False) == BOB._box_key(ALICE.did, outgoing=True)
    assert a_to_b != ALICE._box_key(BOB.did, outgoing=False)
    assert len(a_to_b) == 32


def test_box_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity_mod, "_BOX_KEYS_MAX", 4)
    me = Identity.generate()
    peers = [Identity.generate() for _ in range(10)]
    for peer in peers:
        box = seal(b"m", peer.did, sender=me)
        assert open_sealed(box, peer, sender_did=me.did) == b"m"
        assert len(me._box_keys) <= 4
    # An evicted key is derived again, identically.
    assert open_sealed(seal(b"m", peers[0].did, sender=me), peers[0], sender_did=me.did) == b"m"


def test_boxing_with_a_key_that_is_no_curve_point_is_a_protocol_error() -> None:
    for pk in (b"\xff" * 32, bytes(32), b"\x01" + bytes(31)):
        bogus = did_from_public_key(pk)
        with pytest.raises(InvalidDID):
            seal(b"x", bogus, sender=ALICE)
        with pytest.raises(InvalidDID):
            open_sealed(bytes(64), ALICE, sender_did=bogus)


def test_error_reasons() -> None:
    assert InvalidDID.reason == "invalid_did"
    assert SignatureInvalid.reason == "bad_signature"
    assert issubclass(InvalidDID, ProtocolError)
