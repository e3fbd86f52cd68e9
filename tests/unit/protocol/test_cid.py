"""CIDs: byte-identical to multiformats' CIDv1/sha2-256/base32, and strict parsing."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID, multihash

from crankmesh.protocol.cid import (
    CODEC_MESSAGEPACK,
    CODEC_RAW,
    cid_digest,
    cid_for_blob,
    cid_for_document,
    cid_from_digest,
    parse_cid,
    verify_blob,
)
from crankmesh.protocol.encoding import canonical_encode
from crankmesh.protocol.errors import ContentMismatch, InvalidCID, ProtocolError

DOC = canonical_encode({"hello": "world"})
DOC_CID = cid_for_document(DOC)
BLOB_CID = cid_for_blob(b"payload")


def reference(data: bytes, codec: str, base: str = "base32", hashfn: str = "sha2-256") -> str:
    return str(CID(base, 1, codec, multihash.digest(data, hashfn)))


# multiformats costs ~100 µs per operation: a modest number of examples.
@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=256))
def test_cids_equal_multiformats(data: bytes) -> None:
    for ours, codec in ((cid_for_blob(data), "raw"), (cid_for_document(data), "messagepack")):
        assert ours == reference(data, codec)
        parsed = CID.decode(ours)
        assert parsed.version == 1
        assert parsed.codec.name == codec
        assert parsed.hashfun.name == "sha2-256"
        assert parsed.raw_digest == hashlib.sha256(data).digest()


@given(st.binary(max_size=64))
def test_parse_round_trip(data: bytes) -> None:
    digest = hashlib.sha256(data).digest()
    assert parse_cid(cid_for_blob(data)) == (CODEC_RAW, digest)
    assert parse_cid(cid_for_document(data)) == (CODEC_MESSAGEPACK, digest)
    assert cid_digest(cid_for_blob(data)) == digest


def test_binary_layout_and_string_form() -> None:
    digest = hashlib.sha256(DOC).digest()
    body = DOC_CID[1:].upper()
    raw = base64.b32decode(body + "=" * (-len(body) % 8))
    assert raw == b"\x01\x81\x04\x12\x20" + digest
    assert DOC_CID.startswith("bagaqiera") and len(DOC_CID) == 61
    assert BLOB_CID.startswith("bafkrei") and len(BLOB_CID) == 59
    assert DOC_CID == DOC_CID.lower() and "=" not in DOC_CID
    assert cid_from_digest(digest, CODEC_MESSAGEPACK) == DOC_CID


def test_known_value() -> None:
    # sha256("") under raw: the well-known IPFS CID of the empty block.
    assert cid_for_blob(b"") == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_digest_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        cid_from_digest(b"\0" * 31, CODEC_RAW)


@pytest.mark.parametrize(
    "text",
    [
        DOC_CID.upper(),
        "B" + DOC_CID[1:],
        DOC_CID[:10] + DOC_CID[10].upper() + DOC_CID[11:],
        reference(b"x", "dag-pb", "base58btc").replace("z", "", 1),
        str(CID("base58btc", 0, "dag-pb", multihash.digest(b"x", "sha2-256"))),  # CIDv0 Qm…
        reference(b"x", "raw", "base58btc"),  # right CID, wrong multibase
        reference(b"x", "raw", hashfn="sha2-512"),
        reference(b"x", "raw", hashfn="blake2b-256"),
        reference(b"x", "dag-cbor"),
        reference(b"x", "dag-pb"),
        reference(b"x", "json"),
        "",
        "b",
        "bafy",
        "hello world",
        "b" + "a" * 100,
        DOC_CID[:-1],
        DOC_CID + "a",
        DOC_CID[:-2] + "!!",
        BLOB_CID[:-1] + "1",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidCID):
        parse_cid(text)


@pytest.mark.parametrize("value", [None, 1, b"bafkrei", [DOC_CID]])
def test_parse_rejects_non_str(value: object) -> None:
    with pytest.raises(InvalidCID):
        parse_cid(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("cid", "pad_bits"), [(DOC_CID, 4), (BLOB_CID, 2)])
def test_only_one_string_per_cid(cid: str, pad_bits: int) -> None:
    # The last base32 character carries padding bits; the variants that differ from the
    # CID only there spell the same digest and must be refused (multiformats refuses them
    # too).  The other variants are simply the canonical CIDs of other digests.
    digest = parse_cid(cid)[1]
    rejected = 0
    for c in "abcdefghijklmnopqrstuvwxyz234567":
        text = cid[:-1] + c
        try:
            codec, other = parse_cid(text)
        except InvalidCID:
            rejected += 1
            continue
        assert (other == digest) == (text == cid)
        assert cid_from_digest(other, codec) == text
    assert rejected == 32 - 2 ** (5 - pad_bits)  # every variant with non-zero pad bits


def test_verify_blob() -> None:
    verify_blob(b"payload", BLOB_CID)
    verify_blob(DOC, DOC_CID)  # a document CID also names bytes
    with pytest.raises(ContentMismatch):
        verify_blob(b"payloaD", BLOB_CID)
    with pytest.raises(InvalidCID):
        verify_blob(b"payload", "bafy-not-a-cid")


@settings(max_examples=50)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_verify_blob_detects_any_changed_byte(data: bytes, draw: st.DataObject) -> None:
    cid = cid_for_blob(data)
    i = draw.draw(st.integers(0, len(data) - 1))
    bit = draw.draw(st.integers(0, 7))
    changed = bytearray(data)
    changed[i] ^= 1 << bit
    with pytest.raises(ContentMismatch):
        verify_blob(bytes(changed), cid)


def test_error_reasons() -> None:
    assert InvalidCID.reason == "invalid_cid"
    assert ContentMismatch.reason == "content_mismatch"
    assert issubclass(InvalidCID, ProtocolError)
