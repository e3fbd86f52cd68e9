"""RFC 0001 test vectors: the code reproduces every one byte for byte, and the RFC quotes them.

The inputs are read from ``rfcs/vectors/0001.json`` and the outputs recomputed with the
reference implementation, independently of ``scripts/gen_rfc_vectors.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest

from crankmesh.protocol.cid import cid_for_blob, cid_for_document
from crankmesh.protocol.encoding import canonical_decode, canonical_encode
from crankmesh.protocol.envelope import open_envelope, sign_envelope, signing_input
from crankmesh.protocol.errors import DecodeError
from crankmesh.protocol.identity import Identity, open_sealed
from crankmesh.protocol.messages import (
    MESSAGE_TYPES,
    Announce,
    Assignment,
    JobSpec,
    Quote,
    Receipt,
    ReceiptDelivery,
    decode_message,
    job_cid_of,
)

ROOT = Path(__file__).resolve().parents[3]
VECTORS_PATH = ROOT / "rfcs" / "vectors" / "0001.json"
RFC_PATH = ROOT / "rfcs" / "0001-crankmesh-wire-protocol.md"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
RFC = RFC_PATH.read_text(encoding="utf-8")


def from_json(value: Any) -> Any:
    """Tagged JSON (``{"$bin": hex}``, ``{"$int": str}``) to wire values."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        if set(value) == {"$int"}:
            return int(value["$int"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


IDENTITIES = {
    v["name"]: Identity.from_seed(bytes.fromhex(v["seed_hex"])) for v in VECTORS["identities"]
}


def test_fixed_seeds() -> None:
    assert IDENTITIES["executor"].seed == bytes(32)
    assert IDENTITIES["originator"].seed == bytes(range(32))


@pytest.mark.parametrize("vector", VECTORS["identities"], ids=lambda v: v["name"])
def test_identity(vector: dict[str, Any]) -> None:
    ident = IDENTITIES[vector["name"]]
    assert ident.public_key.hex() == vector["public_key_hex"]
    assert (b"\xed\x01" + ident.public_key).hex() == vector["multicodec_key_hex"]
    assert ident.did == vector["did"]
    assert ident.node_id == vector["node_id"]
    x_pk = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ident.public_key)
    x_sk = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(ident.seed + ident.public_key)
    assert x_pk.hex() == vector["x25519_public_hex"]
    assert x_sk.hex() == vector["x25519_secret_hex"]


def test_w3c_vector_is_included() -> None:
    dids = {v["did"] for v in VECTORS["identities"]}
    assert "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp" in dids


@pytest.mark.parametrize("vector", VECTORS["canonical"], ids=lambda v: v["name"])
def test_canonical_encoding(vector: dict[str, Any]) -> None:
    value = from_json(vector["value"])
    assert canonical_encode(value).hex() == vector["hex"]
    assert canonical_decode(bytes.fromhex(vector["hex"])) == value


@pytest.mark.parametrize("vector", VECTORS["non_canonical"], ids=lambda v: v["name"])
def test_rejected_encodings(vector: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as info:
        canonical_decode(bytes.fromhex(vector["hex"]))
    assert info.value.reason == vector["reason"]


@pytest.mark.parametrize("vector", VECTORS["blobs"], ids=lambda v: v["name"])
def test_blob_cids(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["data_hex"])
    cid = cid_for_blob(data) if vector["codec"] == "raw" else cid_for_document(data)
    assert cid == vector["cid"]


def test_job() -> None:
    job = VECTORS["job"]
    wire = from_json(job["wire"])
    data = canonical_encode(wire)
    assert data.hex() == job["canonical_hex"]
    assert cid_for_document(data) == job_cid_of(wire) == job["cid"]
    spec = JobSpec.model_validate(wire)
    assert spec.to_wire() == wire
    payload = next(b for b in VECTORS["blobs"] if b["name"] == "payload")
    assert spec.payload == payload["cid"]
    assert spec.payload_size == len(bytes.fromhex(payload["data_hex"]))
    assert spec.originator == IDENTITIES["originator"].did


def box_with_nonce(plaintext: bytes, sender: Identity, recipient: Identity, nonce: bytes) -> bytes:
    """RFC 0001 §3.3 spelled out with libsodium primitives, independently of the
    reference: nonce ‖ secretbox_easy(m, nonce, BLAKE2b-256(X25519 ‖ pk_s ‖ pk_r))."""
    x_sk = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
        nacl.bindings.crypto_sign_seed_keypair(sender.seed)[1]
    )
    x_pk = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(recipient.public_key)
    shared = nacl.bindings.crypto_scalarmult(x_sk, x_pk)
    data = shared + sender.public_key + recipient.public_key
    key = hashlib.blake2b(data, digest_size=32, person=b"crankmesh/box/v1").digest()
    return nonce + nacl.bindings.crypto_secretbox_easy(plaintext, nonce, key)


@pytest.mark.parametrize("vector", VECTORS["boxes"], ids=lambda v: v["name"])
def test_boxes(vector: dict[str, Any]) -> None:
    sender = IDENTITIES[vector["sender"]]
    recipient = IDENTITIES[vector["recipient"]]
    nonce = bytes.fromhex(vector["nonce_hex"])
    assert nonce == hashlib.sha256(vector["nonce_label"].encode()).digest()[:24]
    plaintext = bytes.fromhex(vector["plaintext_hex"])
    box = bytes.fromhex(vector["box_hex"])
    assert box_with_nonce(plaintext, sender, recipient, nonce) == box
    assert box[:24] == nonce and len(box) == len(plaintext) + 40
    # Both ends derive the key of the vector (the recipient from its own secret).
    assert sender._box_key(recipient.did, outgoing=True).hex() == vector["key_hex"]
    assert recipient._box_key(sender.did, outgoing=False).hex() == vector["key_hex"]
    x_pk = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(sender.public_key)
    x_sk = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
        nacl.bindings.crypto_sign_seed_keypair(recipient.seed)[1]
    )
    assert nacl.bindings.crypto_scalarmult(x_sk, x_pk).hex() == vector["shared_secret_hex"]
    assert open_sealed(box, recipient, sender_did=sender.did) == plaintext


@pytest.mark.parametrize("vector", VECTORS["messages"], ids=lambda v: v["name"])
def test_signed_message(vector: dict[str, Any]) -> None:
    signer = IDENTITIES[vector["signer"]]
    body = from_json(vector["body"])
    assert body["signer"] == signer.did
    env = sign_envelope(signer, vector["type"], body)
    assert env.body_bytes.hex() == vector["body_hex"]
    if "signing_input_hex" in vector:
        assert signing_input(env.type, env.body_bytes).hex() == vector["signing_input_hex"]
    assert env.signature.hex() == vector["signature_hex"]
    assert env.raw.hex() == vector["envelope_hex"]
    assert env.cid == vector["envelope_cid"]
    # The vector is a valid message of its type, and verifies when received.
    got, msg = decode_message(bytes.fromhex(vector["envelope_hex"]), MESSAGE_TYPES[env.type])
    got.verify()
    assert msg.to_wire() == body


def test_bid_signing_input_is_spelled_out() -> None:
    bid = next(m for m in VECTORS["messages"] if m["type"] == "bid")
    data = bytes.fromhex(bid["signing_input_hex"])
    assert data == b"crankmesh/v1/bid\x00" + bytes.fromhex(bid["body_hex"])


def test_messages_link_up() -> None:
    """The vectors form one consistent flow: announce → bid → assignment → accept → receipt."""
    by_name = {m["name"]: m for m in VECTORS["messages"]}
    envs = {t: open_envelope(bytes.fromhex(m["envelope_hex"])) for t, m in by_name.items()}
    job_cid = VECTORS["job"]["cid"]
    _, announce = decode_message(envs["announce"], Announce)
    assert job_cid_of(envs["announce"].body["job"]) == job_cid
    assert announce.job.to_wire() == from_json(VECTORS["job"]["wire"])
    for t in ("bid", "assignment", "accept", "receipt"):
        assert envs[t].body["job"] == job_cid
    assert envs["assignment"].body["bid"] == envs["bid"].cid
    assert envs["accept"].body["assignment"] == envs["assignment"].cid
    boxes = {b["name"]: bytes.fromhex(b["box_hex"]) for b in VECTORS["boxes"]}
    assert envs["assignment"].body["payload"] == boxes["assignment payload"]
    _, receipt = decode_message(envs["receipt"], Receipt)
    assert receipt.bid == envs["bid"].cid and receipt.assignment == envs["assignment"].cid
    assert receipt.seq == 1 and receipt.prev is None
    result = open_sealed(
        boxes["delivered result"], IDENTITIES["originator"], sender_did=receipt.signer
    )
    assert cid_for_blob(result) == receipt.result and len(result) == receipt.result_size


def test_assignment_on_a_quote_links_up() -> None:
    """Revision 2: the second assignment is made on the executor's quote, not a bid."""
    by_name = {m["name"]: m for m in VECTORS["messages"]}
    quote_env = open_envelope(bytes.fromhex(by_name["quote"]["envelope_hex"]))
    _, quote = decode_message(quote_env, Quote)
    _, asg = decode_message(
        bytes.fromhex(by_name["assignment on a quote"]["envelope_hex"]), Assignment
    )
    assert asg.quote == quote_env.cid and asg.bid is None
    body = open_envelope(bytes.fromhex(by_name["assignment on a quote"]["envelope_hex"])).body
    assert job_cid_of(body["spec"]) == asg.job  # the job document rides on the assignment
    assert asg.executor == quote.signer and asg.job == VECTORS["job"]["cid"]
    assert quote.capability == from_json(VECTORS["job"]["wire"])["capability"]
    assert quote.exp > asg.ts > quote.ts


def test_receipt_delivery() -> None:
    vector = VECTORS["receipt_delivery"]
    receipt = next(m for m in VECTORS["messages"] if m["name"] == vector["receipt"])
    box = next(b for b in VECTORS["boxes"] if b["name"] == vector["result_box"])
    delivery = ReceiptDelivery(
        receipt=bytes.fromhex(receipt["envelope_hex"]), result=bytes.fromhex(box["box_hex"])
    )
    assert delivery.encode().hex() == vector["hex"]


# --------------------------------------------------------------------------- the RFC text


def _quoted_values(markdown: str) -> set[str]:
    """Every fenced block (whitespace removed) and every inline code span of the RFC."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.S | re.M)
    quoted = {re.sub(r"\s+", "", block) for block in blocks}
    quoted |= set(re.findall(r"`([^`\n]+)`", markdown))
    return quoted


def _vector_strings(value: Any, key: str = "") -> list[str]:
    """Every hex string, DID and CID in the vectors (the values an implementer checks)."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return []  # tagged inputs: shown inside the JSON blocks
        return [s for k, v in value.items() for s in _vector_strings(v, k)]
    if isinstance(value, list):
        return [s for v in value for s in _vector_strings(v, key)]
    if (
        isinstance(value, str)
        and value
        and (key.endswith("hex") or key in {"did", "node_id", "cid", "envelope_cid"})
    ):
        return [value]
    return []


def test_every_vector_value_is_quoted_in_the_rfc() -> None:
    quoted = _quoted_values(RFC)
    strings = _vector_strings({k: v for k, v in VECTORS.items() if k != "job"})
    strings += [VECTORS["job"]["canonical_hex"], VECTORS["job"]["cid"]]
    assert len(strings) > 50
    missing = [s for s in strings if s not in quoted]
    assert not missing, f"{len(missing)} vector values are not quoted in {RFC_PATH.name}"


def test_rfc_appendix_is_the_rendering_of_the_json() -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_rfc_vectors", ROOT / "scripts" / "gen_rfc_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.render_markdown(VECTORS) in RFC
    assert gen.from_json(VECTORS["job"]["wire"]) == from_json(VECTORS["job"]["wire"])


def test_rfc_quotes_the_fixed_decisions() -> None:
    for text in (
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        '"crankmesh/v1/" ‖ t ‖ 0x00 ‖ b',
        "0x81 0x04",
        "0x55",
        "crypto_sign_ed25519_pk_to_curve25519",
        "crypto_secretbox_easy",
        "crankmesh/box/v1",
    ):
        assert text in RFC
    for mtype in MESSAGE_TYPES:
        assert f'`t = "{mtype}"`' in RFC, f"message type {mtype!r} is not specified in the RFC"
