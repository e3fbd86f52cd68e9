"""Ed25519 identities and ``did:key`` identifiers (RFC 0001 §2, fixed).

A DID is ``"did:key:" + "z" + base58btc(0xed 0x01 ‖ public_key)``.  The all-zero
seed gives ``did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp``.

Payload privacy uses libsodium sealed boxes to the X25519 key derived from the
recipient's Ed25519 key, so a DID is all one needs to encrypt to a node.
"""

from __future__ import annotations

import functools
import os
from typing import Final

import nacl.exceptions
import nacl.public
import nacl.signing

from .errors import ContentMismatch, InvalidDID, SignatureInvalid

__all__ = [
    "DID_PREFIX",
    "Identity",
    "b58decode",
    "b58encode",
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


@functools.lru_cache(maxsize=8192)
def _verify_key(did: str) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(public_key_from_did(did))


def verify_signature(did: str, message: bytes, signature: bytes) -> None:
    """Raise :class:`SignatureInvalid` unless ``signature`` is ``did``'s over ``message``."""
    key = _verify_key(did)
    if len(signature) != 64:
        raise SignatureInvalid(f"signature must be 64 bytes, got {len(signature)}")
    try:
        key.verify(message, signature)
    except nacl.exceptions.BadSignatureError as exc:
        raise SignatureInvalid(f"signature does not verify for {did}") from exc


@functools.lru_cache(maxsize=4096)
def _curve_public(did: str) -> nacl.public.PublicKey:
    try:
        curve = _verify_key(did).to_curve25519_public_key()
    except nacl.exceptions.CryptoError as exc:  # not a valid (or a small-order) point
        raise InvalidDID(f"{did} holds no usable Ed25519 public key") from exc
    return nacl.public.PublicKey(bytes(curve))


def seal(plaintext: bytes, recipient_did: str) -> bytes:
    """Encrypt ``plaintext`` so that only ``recipient_did`` can read it (sealed box)."""
    return bytes(nacl.public.SealedBox(_curve_public(recipient_did)).encrypt(plaintext))


def open_sealed(ciphertext: bytes, identity: Identity) -> bytes:
    """Decrypt a sealed box addressed to ``identity``; :class:`ContentMismatch` if not ours."""
    try:
        return bytes(identity._sealed_box.decrypt(ciphertext))
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise ContentMismatch("sealed payload cannot be opened with this node's key") from exc


class Identity:
    """An Ed25519 key pair and its ``did:key``.

    The seed never appears in ``repr``.  Construct with :meth:`generate` or
    :meth:`from_seed`; persist with :mod:`crankmesh.keystore`.
    """

    __slots__ = ("_signing_key", "did", "public_key", "_sealed_box_cache")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.did: str = did_from_public_key(self.public_key)
        self._sealed_box_cache: nacl.public.SealedBox[nacl.public.PrivateKey] | None = None

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
        return bytes(self._signing_key.sign(message).signature)

    @property
    def _sealed_box(self) -> nacl.public.SealedBox[nacl.public.PrivateKey]:
        if self._sealed_box_cache is None:
            private = nacl.public.PrivateKey(bytes(self._signing_key.to_curve25519_private_key()))
            self._sealed_box_cache = nacl.public.SealedBox(private)
        return self._sealed_box_cache

    def __repr__(self) -> str:
        return f"Identity(did={self.did!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.did == self.did

    def __hash__(self) -> int:
        return hash(self.did)
