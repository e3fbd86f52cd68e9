#!/usr/bin/env python3
"""(Re)generate the test vectors of RFC 0001 from fixed seeds, timestamps and nonces.

Writes ``rfcs/vectors/0001.json`` and rewrites the generated appendix of
``rfcs/0001-crankmesh-wire-protocol.md`` (between the ``BEGIN GENERATED VECTORS``
and ``END GENERATED VECTORS`` markers).  Everything is deterministic: Ed25519
signatures are deterministic, and the two boxes use fixed nonces instead of random
ones (the construction is spelled out in :func:`box_with_nonce`).

Usage::

    python scripts/gen_rfc_vectors.py           # rewrite the JSON and the RFC appendix
    python scripts/gen_rfc_vectors.py --check   # exit 1 if either is out of date

Values in the JSON that are not plain JSON use a tagged form: byte strings are
``{"$bin": "<hex>"}`` and integers outside ±(2**53 - 1) are ``{"$int": "<decimal>"}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.signing

from crankmesh.protocol.cid import cid_for_blob, cid_for_document
from crankmesh.protocol.encoding import canonical_decode, canonical_encode
from crankmesh.protocol.envelope import Envelope, signing_input
from crankmesh.protocol.errors import DecodeError
from crankmesh.protocol.fencing import HANDED_BACK
from crankmesh.protocol.identity import Identity, open_sealed
from crankmesh.protocol.messages import (
    Accept,
    Announce,
    Assignment,
    Bid,
    BidSlo,
    Constraints,
    JobSpec,
    Load,
    Metering,
    NoBid,
    Receipt,
    ReceiptDelivery,
    Reject,
    Settlement,
)

ROOT = Path(__file__).resolve().parent.parent
JSON_PATH = ROOT / "rfcs" / "vectors" / "0001.json"
MD_PATH = ROOT / "rfcs" / "0001-crankmesh-wire-protocol.md"
BEGIN = "<!-- BEGIN GENERATED VECTORS: edit scripts/gen_rfc_vectors.py, not this section -->"
END = "<!-- END GENERATED VECTORS -->"

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z, in ms since the epoch
_SAFE_INT = 2**53 - 1


# --------------------------------------------------------------------------- typed JSON


def to_json(value: Any) -> Any:
    """A wire value as JSON: bytes as ``{"$bin": hex}``, big ints as ``{"$int": str}``."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -_SAFE_INT <= value <= _SAFE_INT else {"$int": str(value)}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    raise TypeError(f"no JSON form for {type(value).__name__}")


def from_json(value: Any) -> Any:
    """Inverse of :func:`to_json`."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        if set(value) == {"$int"}:
            return int(value["$int"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


# --------------------------------------------------------------------------- helpers


def box_with_nonce(
    plaintext: bytes, sender: Identity, recipient: Identity, nonce: bytes
) -> tuple[bytes, bytes, bytes]:
    """An RFC 0001 §3.3 box with a caller-chosen nonce (vectors only!), spelled out.

    Returns ``(shared secret, key, box)``: shared = X25519(sender's X25519 secret,
    recipient's X25519 public key), both converted from the Ed25519 keys; key =
    BLAKE2b-256(shared ‖ sender Ed25519 pk ‖ recipient Ed25519 pk, personal
    ``crankmesh/box/v1``); box = nonce ‖ crypto_secretbox_easy(plaintext, nonce, key).
    Real senders MUST use a fresh random nonce for every box.
    """
    sender_x_sk = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(
        nacl.bindings.crypto_sign_seed_keypair(sender.seed)[1]
    )
    recipient_x_pk = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(recipient.public_key)
    shared = nacl.bindings.crypto_scalarmult(sender_x_sk, recipient_x_pk)
    key = hashlib.blake2b(
        shared + sender.public_key + recipient.public_key,
        digest_size=32,
        person=b"crankmesh/box/v1",
    ).digest()
    return shared, key, nonce + nacl.bindings.crypto_secretbox_easy(plaintext, nonce, key)


def _label_key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _identity_vector(name: str, ident: Identity) -> dict[str, Any]:
    sk = nacl.signing.SigningKey(ident.seed)
    return {
        "name": name,
        "seed_hex": ident.seed.hex(),
        "public_key_hex": ident.public_key.hex(),
        "multicodec_key_hex": (b"\xed\x01" + ident.public_key).hex(),
        "did": ident.did,
        "node_id": ident.node_id,
        "x25519_public_hex": bytes(sk.verify_key.to_curve25519_public_key()).hex(),
        "x25519_secret_hex": bytes(sk.to_curve25519_private_key()).hex(),
    }


def _signed_vector(name: str, signer: str, env: Envelope, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "type": env.type,
        "signer": signer,
        "body": to_json(env.body),
        "body_hex": env.body_bytes.hex(),
    }
    if full:
        out["signing_input_hex"] = signing_input(env.type, env.body_bytes).hex()
    out["signature_hex"] = env.signature.hex()
    out["envelope_hex"] = env.raw.hex()
    out["envelope_cid"] = env.cid
    return out


# --------------------------------------------------------------------------- vectors

_UTF8_ORDER_KEYS = ["a", "B", "aa", "\u00e9", "z", "\u00df", "\u20ac", "\U0001f600", "\uff21"]

CANONICAL_VALUES: list[tuple[str, Any]] = [
    ("keys sorted, nil/true/false, bin", {"b": 1, "a": [True, False, None], "c": b"\x00\xff"}),
    (
        "shortest unsigned integers",
        [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1],
    ),
    (
        "shortest signed integers",
        [-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)],
    ),
    ("str forms", ["", "x" * 31, "x" * 32, "\u00e9"]),
    ("bin forms", [b"", b"\x00" * 3]),
    (
        "map keys sorted by UTF-8 bytes (not UTF-16 units)",
        {k: i for i, k in enumerate(_UTF8_ORDER_KEYS)},
    ),
    ("map16 (16 entries)", {f"k{i:02d}": i for i in range(16)}),
    ("array16 (16 elements)", list(range(16))),
    ("nested", {"outer": {"z": [], "a": {}}, "n": None}),
]

NON_CANONICAL: list[tuple[str, str]] = [
    ("unsorted map keys", "82a16201a16102"),
    ("duplicate map key", "82a16101a16102"),
    ("non-shortest uint (uint16 for 1)", "cd0001"),
    ("non-shortest uint (uint8 for 5)", "cc05"),
    ("signed form for a non-negative int", "d005"),
    ("non-shortest negative int (int16 for -1)", "d1ffff"),
    ("str8 for a 1-byte string", "d90161"),
    ("map16 for a 1-entry map", "de0001a16101"),
    ("array16 for a 1-element array", "dc000101"),
    ("bin map key", "81c4016101"),
    ("int map key", "810101"),
    ("float32", "ca3f800000"),
    ("float64", "cb3ff0000000000000"),
    ("fixext1", "d40100"),
    ("ext8 of length 0", "c70005"),
    ("timestamp extension", "d6ff00000000"),
    ("invalid UTF-8 in str", "a1ff"),
    ("reserved byte 0xc1", "c1"),
    ("trailing bytes", "0102"),
    ("truncated array", "9201"),
    ("empty input", ""),
]


def _reason(data: bytes) -> str:
    try:
        canonical_decode(data)
    except DecodeError as exc:
        return exc.reason
    raise AssertionError(f"{data.hex()} was accepted")


def build_vectors() -> dict[str, Any]:
    originator = Identity.from_seed(bytes(range(32)))
    executor = Identity.from_seed(bytes(32))

    identities = [
        _identity_vector("executor", executor),
        _identity_vector("originator", originator),
        _identity_vector("second executor", Identity.from_seed(bytes([1]) * 32)),
    ]

    canonical = [
        {"name": name, "value": to_json(value), "hex": canonical_encode(value).hex()}
        for name, value in CANONICAL_VALUES
    ]
    non_canonical = [
        {"name": name, "hex": hx, "reason": _reason(bytes.fromhex(hx))}
        for name, hx in NON_CANONICAL
    ]

    payload = b'{"salt":"q0c3vB9u2mXh5Yd1","text":"hello, crankmesh"}'
    result = b'{"summary":"hello"}'
    blobs = [
        {"name": "empty", "data_hex": "", "codec": "raw", "cid": cid_for_blob(b"")},
        {
            "name": "payload",
            "data_hex": payload.hex(),
            "codec": "raw",
            "cid": cid_for_blob(payload),
        },
        {"name": "result", "data_hex": result.hex(), "codec": "raw", "cid": cid_for_blob(result)},
        {
            "name": "empty map document",
            "data_hex": canonical_encode({}).hex(),
            "codec": "messagepack",
            "cid": cid_for_document(canonical_encode({})),
        },
    ]

    job = JobSpec(
        capability="text.summarize",
        originator=originator.did,
        created=T0,
        nonce=bytes(range(16)),
        payload=cid_for_blob(payload),
        payload_size=len(payload),
        deadline=T0 + 60_000,
        constraints=Constraints(timeout_ms=5_000, max_output_bytes=65_536),
        max_price=5_000,
        currency="USD",
    )
    job_wire = job.to_wire()
    job_bytes = canonical_encode(job_wire)
    job_cid = cid_for_document(job_bytes)

    announce = Announce(signer=originator.did, ts=T0, exp=T0 + 30_000, job=job).sign(originator)
    bid = Bid(
        signer=executor.did,
        ts=T0 + 15,
        exp=T0 + 15 + 10_000,
        job=job_cid,
        nonce=bytes(range(16, 32)),
        price=1_200,
        currency="USD",
        slo=BidSlo(p50_us=800, p95_us=1_500, p99_us=2_100, samples=200),
        load=Load(running=0, queued=1, capacity=2),
        est_us=800,
    ).sign(executor)

    nonce_payload = _label_key("crankmesh rfc 0001 box nonce 1")[:24]
    shared_payload, key_payload, sealed_payload = box_with_nonce(
        payload, originator, executor, nonce_payload
    )
    assert open_sealed(sealed_payload, executor, sender_did=originator.did) == payload
    assignment = Assignment(
        signer=originator.did,
        ts=T0 + 40,
        exp=T0 + 40 + 2_000,
        job=job_cid,
        bid=bid.cid,
        executor=executor.did,
        attempt=1,
        nonce=bytes(range(32, 48)),
        payload=sealed_payload,
        deadline=T0 + 40 + 10_000,
    ).sign(originator)
    accept = Accept(
        signer=executor.did, ts=T0 + 41, job=job_cid, assignment=assignment.cid, attempt=1
    ).sign(executor)
    receipt = Receipt(
        signer=executor.did,
        ts=T0 + 60,
        job=job_cid,
        assignment=assignment.cid,
        bid=bid.cid,
        originator=originator.did,
        attempt=1,
        status="ok",
        result=cid_for_blob(result),
        result_size=len(result),
        metering=Metering(wall_us=1_234, cpu_us=1_100, peak_rss_kb=20_480),
        charge=1_200,
        currency="USD",
        seq=1,
    ).sign(executor)

    # A second executor (seed 0x01 * 32) declines the same announce (§8.13), and
    # rejects the assignment, which names another executor (§8.6, `not_addressed`).
    other = Identity.from_seed(bytes([1]) * 32)
    nobid = NoBid(
        signer=other.did,
        ts=T0 + 12,
        job=job_cid,
        reason="full",
        detail="running 2 + queued 6 + reserved 2 of capacity 10",
    ).sign(other)
    reject = Reject(
        signer=other.did,
        ts=T0 + 42,
        job=job_cid,
        assignment=assignment.cid,
        attempt=1,
        reason="not_addressed",
        detail=f"assignment names executor {executor.did}",
    ).sign(other)
    # A drained (or paused) executor's hand-back of the accepted job, RFC 0001 §10.7.
    handed_back = Reject(
        signer=executor.did,
        ts=T0 + 1_041,
        job=job_cid,
        assignment=assignment.cid,
        attempt=1,
        reason=HANDED_BACK,
        detail="drained: drain grace of 1 s expired",
    ).sign(executor)
    settlement = Settlement(
        signer=originator.did,
        ts=T0 + 70,
        receipt=receipt.cid,
        job=job_cid,
        executor=executor.did,
        verified=True,
        observed_us=3_456,
        promised_p95_us=2_000,
        charge=1_200,
        currency="USD",
        assignment=assignment.cid,
        overhead_us=2_100,
    ).sign(originator)

    nonce_result = _label_key("crankmesh rfc 0001 box nonce 2")[:24]
    shared_result, key_result, sealed_result = box_with_nonce(
        result, executor, originator, nonce_result
    )
    assert open_sealed(sealed_result, originator, sender_did=executor.did) == result
    delivery = ReceiptDelivery(receipt=receipt.raw, result=sealed_result).encode()

    return {
        "rfc": "0001",
        "title": "crankmesh wire protocol v1: test vectors",
        "generator": "scripts/gen_rfc_vectors.py",
        "notes": [
            'byte strings are {"$bin": "<hex>"}; integers outside +-(2**53-1) are '
            '{"$int": "<decimal>"}',
            "boxes use fixed nonces (the first 24 bytes of sha256 of their label) so that "
            "they are reproducible; real senders use a fresh random nonce per box",
        ],
        "identities": identities,
        "canonical": canonical,
        "non_canonical": non_canonical,
        "blobs": blobs,
        "job": {
            "wire": to_json(job_wire),
            "canonical_hex": job_bytes.hex(),
            "cid": job_cid,
        },
        "boxes": [
            {
                "name": "assignment payload",
                "sender": "originator",
                "recipient": "executor",
                "nonce_label": "crankmesh rfc 0001 box nonce 1",
                "nonce_hex": nonce_payload.hex(),
                "shared_secret_hex": shared_payload.hex(),
                "key_hex": key_payload.hex(),
                "plaintext_hex": payload.hex(),
                "box_hex": sealed_payload.hex(),
            },
            {
                "name": "delivered result",
                "sender": "executor",
                "recipient": "originator",
                "nonce_label": "crankmesh rfc 0001 box nonce 2",
                "nonce_hex": nonce_result.hex(),
                "shared_secret_hex": shared_result.hex(),
                "key_hex": key_result.hex(),
                "plaintext_hex": result.hex(),
                "box_hex": sealed_result.hex(),
            },
        ],
        "messages": [
            _signed_vector("announce", "originator", announce),
            _signed_vector("bid", "executor", bid, full=True),
            _signed_vector("assignment", "originator", assignment),
            _signed_vector("accept", "executor", accept),
            _signed_vector("receipt", "executor", receipt),
            _signed_vector("nobid", "second executor", nobid, full=True),
            _signed_vector("reject", "second executor", reject),
            _signed_vector("reject (handed back)", "executor", handed_back),
            _signed_vector("settlement", "originator", settlement),
        ],
        "receipt_delivery": {
            "receipt": "receipt",
            "result_box": "delivered result",
            "hex": delivery.hex(),
        },
    }


# --------------------------------------------------------------------------- markdown


def _hex_block(hx: str, width: int = 64) -> str:
    if not hx:
        return "```text\n(empty)\n```"
    lines = [hx[i : i + width] for i in range(0, len(hx), width)]
    return "```text\n" + "\n".join(lines) + "\n```"


def _json_block(value: Any, *, compact: bool = False) -> str:
    text = json.dumps(value, indent=None if compact else 2, ensure_ascii=False)
    return "```json\n" + text + "\n```"


def render_markdown(v: dict[str, Any]) -> str:
    """The generated appendix of the RFC (hex wrapped at 32 bytes per line)."""
    out: list[str] = [BEGIN, ""]
    add = out.append

    add("### A.1 Identities")
    add("")
    for ident in v["identities"]:
        add(f"**{ident['name']}**: seed `{ident['seed_hex']}`")
        add("")
        add("| item | value |")
        add("|---|---|")
        add(f"| Ed25519 public key | `{ident['public_key_hex']}` |")
        add(f"| multicodec ‖ key | `{ident['multicodec_key_hex']}` |")
        add(f"| DID | `{ident['did']}` |")
        add(f"| node id (subject token) | `{ident['node_id']}` |")
        add(f"| X25519 public key | `{ident['x25519_public_hex']}` |")
        add(f"| X25519 secret key | `{ident['x25519_secret_hex']}` |")
        add("")

    add("### A.2 Canonical encoding")
    add("")
    for item in v["canonical"]:
        add(f"**{item['name']}**; value (tagged JSON):")
        add("")
        add(_json_block(item["value"], compact=True))
        add("")
        add("canonical bytes:")
        add("")
        add(_hex_block(item["hex"]))
        add("")

    add("### A.3 Inputs a receiver MUST reject")
    add("")
    add("| case | bytes (hex) | reference reason |")
    add("|---|---|---|")
    for item in v["non_canonical"]:
        hx = f"`{item['hex']}`" if item["hex"] else "(empty)"
        add(f"| {item['name']} | {hx} | `{item['reason']}` |")
    add("")

    add("### A.4 Blobs and their CIDs")
    add("")
    add("| name | codec | bytes (hex) | CID |")
    add("|---|---|---|---|")
    for item in v["blobs"]:
        hx = f"`{item['data_hex']}`" if item["data_hex"] else "(empty)"
        add(f"| {item['name']} | `{item['codec']}` | {hx} | `{item['cid']}` |")
    add("")

    job = v["job"]
    add("### A.5 JobSpec")
    add("")
    add("The job document (tagged JSON):")
    add("")
    add(_json_block(job["wire"]))
    add("")
    add("canonical bytes:")
    add("")
    add(_hex_block(job["canonical_hex"]))
    add("")
    add(f"job CID: `{job['cid']}`")
    add("")

    add("### A.6 Boxes")
    add("")
    for item in v["boxes"]:
        add(
            f"**{item['name']}**, from the {item['sender']} to the {item['recipient']}; "
            f"nonce = the first 24 bytes of SHA-256(`{item['nonce_label']}`) = "
            f"`{item['nonce_hex']}`."
        )
        add("")
        for label, key in (
            ("X25519 shared secret", "shared_secret_hex"),
            ("box key (BLAKE2b-256, personal `crankmesh/box/v1`)", "key_hex"),
            ("plaintext", "plaintext_hex"),
            ("box (nonce ‖ tag ‖ ciphertext)", "box_hex"),
        ):
            add(f"{label}:")
            add("")
            add(_hex_block(item[key]))
            add("")

    add("### A.7 Signed messages")
    add("")
    for n, msg in enumerate(v["messages"], start=1):
        add(f"#### A.7.{n} {msg['name'].capitalize()} (signed by the {msg['signer']})")
        add("")
        add("body (tagged JSON):")
        add("")
        add(_json_block(msg["body"]))
        add("")
        add("body, canonical bytes (`b`):")
        add("")
        add(_hex_block(msg["body_hex"]))
        add("")
        if "signing_input_hex" in msg:
            add('signing input (`"crankmesh/v1/" ‖ t ‖ 0x00 ‖ b`):')
            add("")
            add(_hex_block(msg["signing_input_hex"]))
            add("")
        add("signature (`s`):")
        add("")
        add(_hex_block(msg["signature_hex"]))
        add("")
        add("envelope:")
        add("")
        add(_hex_block(msg["envelope_hex"]))
        add("")
        add(f"envelope CID: `{msg['envelope_cid']}`")
        add("")

    add("### A.8 ReceiptDelivery")
    add("")
    add(
        "The unsigned container carrying the receipt envelope of A.7.5 and the result "
        "boxed to the originator (A.6):"
    )
    add("")
    add(_hex_block(v["receipt_delivery"]["hex"]))
    add("")
    add(END)
    return "\n".join(out)


def splice(markdown: str, section: str) -> str:
    start = markdown.index(BEGIN)
    end = markdown.index(END) + len(END)
    return markdown[:start] + section + markdown[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if anything is stale")
    args = parser.parse_args(argv)

    vectors = build_vectors()
    json_text = json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"
    md_text = splice(MD_PATH.read_text(encoding="utf-8"), render_markdown(vectors))

    stale = []
    if not JSON_PATH.exists() or JSON_PATH.read_text(encoding="utf-8") != json_text:
        stale.append(JSON_PATH)
    if MD_PATH.read_text(encoding="utf-8") != md_text:
        stale.append(MD_PATH)
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)}", file=sys.stderr)
        return 1 if stale else 0
    JSON_PATH.parent.mkdir(parents=True, exist_ok=True)
    JSON_PATH.write_text(json_text, encoding="utf-8")
    MD_PATH.write_text(md_text, encoding="utf-8")
    for path in (JSON_PATH, MD_PATH):
        print(f"{'wrote' if path in stale else 'unchanged'}: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
