"""Ed25519 identities and ``did:key`` identifiers (RFC 0001 §2, fixed).

A DID is ``"did:key:" + "z" + base58btc(0xed 0x01 ‖ public_key)``.  The all-zero
seed gives ``did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp``.

Payload privacy (RFC 0001 §3.3) uses authenticated boxes between the X25519 keys
derived from the two nodes' Ed25519 keys, so a DID is all one needs to encrypt to a
node.  Each node derives one key per peer and direction, once, and keeps it: a box
then costs a few microseconds instead of two X25519 operations.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import OrderedDict
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.signing

from .errors import ContentMismatch, InvalidDID, SignatureInvalid

__all__ = [
    "BOX_OVERHEAD",
    "DID_PREFIX",
    "Identity",
    "b58decode",
    "b58encode",
    "box_key",
    "did_from_public_key",
    "did_node_id",
    "open_sealed",
    "public_key_from_did",
    "seal",
    "spiffe_alias",
    "verify_signature",
]

DID_PREFIX: Final = "did:key:z"
_ED25519_MULTICODEC: Final = b"\xed\x01"
_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final = {c: i for i, c in enumerate(_B58_ALPHABET)}
#: BLAKE2b personalisation of the box key derivation (RFC 0001 §3.3), exactly 16 bytes.
_BOX_PERSON: Final = b"crankmesh/box/v1"
_BOX_NONCE: Final = 24
#: Bytes a box adds to its plaintext: the 24-byte nonce and the 16-byte Poly1305 tag.
BOX_OVERHEAD: Final = _BOX_NONCE + 16
#: Box keys an identity keeps (one per peer and direction), least recently used dropped.
_BOX_KEYS_MAX: Final = 4096


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (multibase ``z`` without the prefix)."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise ValueError(f"invalid base58 character {c!r}") from None
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def did_from_public_key(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return DID_PREFIX + b58encode(_ED25519_MULTICODEC + public_key)


def public_key_from_did(did: str) -> bytes:
    """The 32-byte Ed25519 key inside a ``did:key``; :class:`InvalidDID` otherwise."""
    # Type check before the cache: lru_cache would raise TypeError on unhashable input.
    if not isinstance(did, str) or not did.startswith(DID_PREFIX) or len(did) > 64:
        raise InvalidDID(f"not an Ed25519 did:key: {did!r:.80}")
    return _public_key_from_did(did)


@functools.lru_cache(maxsize=8192)
def _public_key_from_did(did: str) -> bytes:
    try:
        raw = b58decode(did[len(DID_PREFIX) :])
    except ValueError as exc:
        raise InvalidDID(f"bad base58 in {did!r}: {exc}") from exc
    if len(raw) != 34 or raw[:2] != _ED25519_MULTICODEC:
        raise InvalidDID(f"{did!r} is not an Ed25519 did:key (multicodec 0xed01, 32 bytes)")
    if did_from_public_key(raw[2:]) != did:
        raise InvalidDID(f"non-canonical did:key encoding {did!r}")
    return raw[2:]


def did_node_id(did: str) -> str:
    """The method-specific id (``z6Mk…``), used as a NATS subject token."""
    public_key_from_did(did)
    return did[len("did:key:") :]


def spiffe_alias(did: str, trust_domain: str) -> str:
    """Optional SPIFFE-style alias: ``spiffe://<trust_domain>/node/<z6Mk…>``."""
    return f"spiffe://{trust_domain}/node/{did_node_id(did)}"


def verify_signature(did: str, message: bytes, signature: bytes) -> None:
    """Raise :class:`SignatureInvalid` unless ``signature`` is ``did``'s over ``message``."""
    key = public_key_from_did(did)
    if len(signature) != 64:
        raise SignatureInvalid(f"signature must be 64 bytes, got {len(signature)}")
    try:
        nacl.bindings.crypto_sign_open(bytes(signature) + bytes(message), key)
    except nacl.exceptions.BadSignatureError as exc:
        raise SignatureInvalid(f"signature does not verify for {did}") from exc


@functools.lru_cache(maxsize=4096)
def _curve_public(did: str) -> bytes:
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key_from_did(did))
    except nacl.exceptions.CryptoError as exc:  # not a valid (or a small-order) point
        raise InvalidDID(f"{did} holds no usable Ed25519 public key") from exc


def seal(plaintext: bytes, recipient_did: str, *, sender: Identity) -> bytes:
    """Encrypt ``plaintext`` from ``sender`` to ``recipient_did`` (RFC 0001 §3.3): only
    the recipient can read it, and it can tell the box came from ``sender``.

    Output: a fresh random 24-byte nonce ‖ XSalsa20-Poly1305 ciphertext and tag.
    Raises :class:`InvalidDID` when the recipient's key is no usable curve point.
    """
    nonce = os.urandom(_BOX_NONCE)
    key = sender._box_key(recipient_did, outgoing=True)
    return nonce + nacl.bindings.crypto_secretbox_easy(plaintext, nonce, key)


def open_sealed(ciphertext: bytes, identity: Identity, *, sender_did: str) -> bytes:
    """Decrypt a box from ``sender_did`` to ``identity``; :class:`ContentMismatch` if it
    was not made by that sender for this identity, or was altered."""
    if len(ciphertext) < BOX_OVERHEAD:
        raise ContentMismatch(f"a box is at least {BOX_OVERHEAD} bytes, got {len(ciphertext)}")
    key = identity._box_key(sender_did, outgoing=False)
    try:
        return nacl.bindings.crypto_secretbox_open_easy(
            ciphertext[_BOX_NONCE:], ciphertext[:_BOX_NONCE], key
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise ContentMismatch(
            f"the box cannot be opened with this node's key as one from {sender_did}"
        ) from exc


def box_key(
    own_x25519_secret: bytes, peer_x25519_public: bytes, sender_pk: bytes, recipient_pk: bytes
) -> bytes:
    """The key of boxes from ``sender_pk`` to ``recipient_pk`` (RFC 0001 §3.3):
    BLAKE2b-256(X25519(own secret, peer public) ‖ sender Ed25519 key ‖ recipient Ed25519
    key), personalised ``crankmesh/box/v1``.  Both ends compute the same key; the two
    directions between a pair of nodes get different keys."""
    try:
        shared = nacl.bindings.crypto_scalarmult(own_x25519_secret, peer_x25519_public)
    except (nacl.exceptions.CryptoError, RuntimeError) as exc:  # all-zero: small order
        raise InvalidDID("the peer key gives no usable shared secret") from exc
    return hashlib.blake2b(
        shared + sender_pk + recipient_pk, digest_size=32, person=_BOX_PERSON
    ).digest()


class Identity:
    """An Ed25519 key pair and its ``did:key``.

    The seed never appears in ``repr``.  Construct with :meth:`generate` or
    :meth:`from_seed`; persist with :mod:`crankmesh.keystore`.
    """

    __slots__ = ("_signing_key", "_secret_key", "did", "public_key", "_x25519_secret", "_box_keys")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        #: libsodium's Ed25519 secret key: seed ‖ public key.
        self._secret_key: bytes = bytes(signing_key) + self.public_key
        self.did: str = did_from_public_key(self.public_key)
        self._x25519_secret: bytes | None = None
        #: (peer DID, outgoing?) -> box key; bounded, least recently used dropped.
        self._box_keys: OrderedDict[tuple[str, bool], bytes] = OrderedDict()

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey(os.urandom(32)))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed (handle with care)."""
        return bytes(self._signing_key)

    @property
    def node_id(self) -> str:
        return self.did[len("did:key:") :]

    def sign(self, message: bytes) -> bytes:
        # The binding itself: SigningKey.sign wraps it in objects worth ~15 µs a call.
        return nacl.bindings.crypto_sign(message, self._secret_key)[:64]

    def _box_key(self, peer_did: str, *, outgoing: bool) -> bytes:
        """The key of boxes to (``outgoing``) or from ``peer_did``, derived once."""
        keys = self._box_keys
        slot = (peer_did, outgoing)
        key = keys.get(slot)
        if key is not None:
            keys.move_to_end(slot)
            return key
        if self._x25519_secret is None:
            self._x25519_secret = bytes(self._signing_key.to_curve25519_private_key())
        peer_pk = public_key_from_did(peer_did)
        sender, recipient = (self.public_key, peer_pk) if outgoing else (peer_pk, self.public_key)
        key = box_key(self._x25519_secret, _curve_public(peer_did), sender, recipient)
        keys[slot] = key
        if len(keys) > _BOX_KEYS_MAX:
            keys.popitem(last=False)
        return key

    def __repr__(self) -> str:
        return f"Identity(did={self.did!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.did == self.did

    def __hash__(self) -> int:
        return hash(self.did)
