"""Typed messages: every model round-trips, and every defect is a DecodeError."""

from __future__ import annotations

import random
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crankmesh.protocol.cid import cid_for_blob, cid_for_document
from crankmesh.protocol.encoding import (
    canonical_decode,
    canonical_encode,
    canonicalize,
    encode_canonicalized,
)
from crankmesh.protocol.envelope import open_envelope, sign_envelope
from crankmesh.protocol.errors import (
    DecodeError,
    ProtocolError,
    UnsupportedVersion,
    WrongMessageType,
)
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import (
    CAPABILITY_RE,
    MESSAGE_TYPES,
    NO_BID_REASONS,
    RECEIPT_STATUSES,
    REJECT_REASONS,
    Accept,
    Advert,
    AdvertCapability,
    Announce,
    Assignment,
    Bid,
    BidSlo,
    Close,
    Constraints,
    JobSlo,
    JobSpec,
    Load,
    Metering,
    NoBid,
    Quote,
    QuoteTerms,
    Receipt,
    ReceiptDelivery,
    Reject,
    Settlement,
    SignedMessage,
    decode_message,
    job_cid_of,
)

ORIGINATOR = Identity.from_seed(bytes(range(32)))
EXECUTOR = Identity.from_seed(bytes(32))
T0 = 1_700_000_000_000
PAYLOAD = b'{"salt":"q0c3vB9u2mXh5Yd1","text":"hello"}'
RESULT = b'{"summary":"hi"}'
DOC = cid_for_document(b"some document")


def make_job(**changes: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "capability": "text.summarize",
        "originator": ORIGINATOR.did,
        "created": T0,
        "nonce": bytes(range(16)),
        "payload": cid_for_blob(PAYLOAD),
        "payload_size": len(PAYLOAD),
        "deadline": T0 + 60_000,
        "constraints": Constraints(timeout_ms=5_000, memory_mb=512, accelerator="cpu"),
        "requirements": {"memory_mb": 256, "codecs": ["h264"]},
        "slo": JobSlo(p95_us=2_000),
        "max_price": 5_000,
    }
    fields.update(changes)
    return JobSpec(**fields)


JOB = make_job()
JOB_CID = job_cid_of(JOB.to_wire())


def samples() -> dict[str, tuple[SignedMessage, Identity]]:
    """One fully populated instance of every signed message type, with its signer."""
    o, e = ORIGINATOR, EXECUTOR
    return {
        "announce": (Announce(signer=o.did, ts=T0, exp=T0 + 30_000, job=JOB, closed=[DOC]), o),
        "bid": (
            Bid(
                signer=e.did,
                ts=T0,
                exp=T0 + 10_000,
                job=JOB_CID,
                nonce=bytes(16),
                price=1_200,
                slo=BidSlo(p50_us=800, p95_us=1_500, samples=20),
                load=Load(running=1, queued=2, capacity=4),
                est_us=900,
                isolation="basic",
                match="degraded",
                warnings=["no gpu: running on cpu"],
            ),
            e,
        ),
        "assignment": (
            Assignment(
                signer=o.did,
                ts=T0,
                exp=T0 + 2_000,
                job=JOB_CID,
                bid=DOC,
                executor=e.did,
                attempt=2,
                nonce=bytes(32),
                payload=b"sealed",
                deadline=T0 + 10_000,
            ),
            o,
        ),
        "close": (Close(signer=o.did, ts=T0, job=JOB_CID, winner=e.did, bid=DOC), o),
        "accept": (Accept(signer=e.did, ts=T0, job=JOB_CID, assignment=DOC, attempt=1), e),
        "reject": (
            Reject(
                signer=e.did,
                ts=T0,
                job=JOB_CID,
                assignment=DOC,
                attempt=1,
                reason="no_capacity",
                detail="queue full (8/8)",
            ),
            e,
        ),
        "nobid": (
            NoBid(
                signer=e.did,
                ts=T0,
                job=JOB_CID,
                reason="full",
                detail="running 2 + queued 8 of capacity 10",
            ),
            e,
        ),
        "receipt": (
            Receipt(
                signer=e.did,
                ts=T0,
                job=JOB_CID,
                assignment=DOC,
                bid=DOC,
                originator=o.did,
                attempt=1,
                status="ok",
                result=cid_for_blob(RESULT),
                result_size=len(RESULT),
                metering=Metering(wall_us=10, cpu_us=9, peak_rss_kb=1024),
                charge=1_200,
                seq=2,
                prev=DOC,
                budget=DOC,
                detail="fine",
            ),
            e,
        ),
        "settlement": (
            Settlement(
                signer=o.did,
                ts=T0,
                receipt=DOC,
                job=JOB_CID,
                executor=e.did,
                verified=True,
                observed_us=1_500,
                promised_p95_us=1_400,
                charge=1_200,
            ),
            o,
        ),
        "advert": (
            Advert(
                signer=e.did,
                ts=T0,
                exp=T0 + 30_000,
                seq=3,
                name="gpu-box",
                region="eu-west",
                capabilities=[
                    AdvertCapability(name="text.summarize", price=1_000, quote=b"quote bytes"),
                    AdvertCapability(name="image.resize", price=50, slo=BidSlo(p95_us=10)),
                ],
                hardware={"cpu": {"cores": 16}, "gpus": []},
                load=Load(capacity=2),
                isolation="strict",
                draining=True,
                proto=2,
            ),
            e,
        ),
        "quote": (
            Quote(
                signer=e.did,
                ts=T0,
                capability="text.summarize",
                price=1_000,
                currency="EUR",
                slo=BidSlo(p50_us=800, p95_us=1_500, samples=20),
                load=Load(running=1, capacity=4),
                isolation="standard",
                exp=T0 + 15_000,
                seq=7,
                terms=QuoteTerms(
                    max_timeout_ms=30_000,
                    max_memory_mb=512,
                    max_output_bytes=1 << 20,
                    max_payload_bytes=1 << 16,
                    env_profiles=["python-core"],
                ),
            ),
            e,
        ),
    }


SAMPLES = samples()


def signed_body(mtype: str, body: dict[str, Any], identity: Identity) -> bytes:
    """Sign an arbitrary body, bypassing the models (to feed invalid bodies to decoders)."""
    return sign_envelope(identity, mtype, dict(body)).raw


def wire_of(mtype: str) -> tuple[dict[str, Any], Identity]:
    msg, ident = SAMPLES[mtype]
    return msg.to_wire(), ident


# --------------------------------------------------------------------------- round trips


def test_every_message_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(MESSAGE_TYPES)
    for name, cls in MESSAGE_TYPES.items():
        assert cls.TYPE == name
        assert type(SAMPLES[name][0]) is cls


@pytest.mark.parametrize("mtype", sorted(SAMPLES))
def test_round_trip(mtype: str) -> None:
    msg, ident = SAMPLES[mtype]
    model = MESSAGE_TYPES[mtype]
    env = msg.sign(ident)
    got_env, got = decode_message(env.raw, model)
    assert got == msg
    assert got_env.type == mtype
    assert got_env.cid == env.cid
    got_env.verify()
    assert got.to_wire() == canonical_decode(env.body_bytes)
    # An already-opened envelope works too.
    same_env, same = decode_message(open_envelope(env.raw), model)
    assert same == msg


@pytest.mark.parametrize("mtype", sorted(SAMPLES))
def test_minimal_messages_round_trip(mtype: str) -> None:
    """Only the required fields: defaults are filled in on both sides."""
    msg, ident = SAMPLES[mtype]
    model = type(msg)
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    if model is Assignment:
        required.add("bid")  # one of bid / quote (the other case: test_assignment_on_a_quote…)
    minimal = model.model_validate({k: v for k, v in msg.to_wire().items() if k in required})
    _, got = decode_message(minimal.sign(ident).raw, model)
    assert got == minimal


@pytest.mark.parametrize("mtype", sorted(SAMPLES))
def test_wrong_model_is_wrong_type(mtype: str) -> None:
    msg, ident = SAMPLES[mtype]
    env = msg.sign(ident)
    other = Bid if mtype != "bid" else Accept
    with pytest.raises(WrongMessageType):
        decode_message(env.raw, other)
    with pytest.raises(WrongMessageType):
        decode_message(env, other)


def test_every_bit_flip_of_a_bid_is_rejected() -> None:
    raw = SAMPLES["bid"][0].sign(EXECUTOR).raw
    for i in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[i // 8] ^= 1 << (i % 8)
        try:
            env, _ = decode_message(bytes(flipped), Bid)
            env.verify()
        except ProtocolError:
            continue
        pytest.fail(f"flipping bit {i} of a bid was not detected")


@pytest.mark.parametrize("mtype", sorted(SAMPLES))
def test_to_wire_is_the_canonical_model_dump(mtype: str) -> None:
    """The fast ``to_wire`` equals pydantic's dump, canonicalised, for validated and
    for built (unvalidated) messages alike, and signs to the same bytes."""
    msg, ident = SAMPLES[mtype]
    built = type(msg).build(**dict(msg))
    for m in (msg, built):
        wire = m.to_wire()
        expected = canonicalize(m.model_dump(exclude_none=True))
        assert wire == expected
        assert canonical_encode(wire) == encode_canonicalized(wire)  # already canonical
        assert sign_envelope(ident, m.TYPE, m.model_dump(exclude_none=True)).raw == (
            m.sign(ident).raw
        )


@pytest.mark.parametrize("mtype", sorted(SAMPLES))
def test_build_is_model_construct(mtype: str) -> None:
    """``build`` (the hot-path constructor) makes what pydantic's ``model_construct``
    makes: the same values, defaults and set fields, with every field given or only
    the required ones."""
    msg, _ = SAMPLES[mtype]
    cls = type(msg)
    required = {n: getattr(msg, n) for n, f in cls.model_fields.items() if f.is_required()}
    for fields in (dict(msg), required):
        built, constructed = cls.build(**fields), cls.model_construct(**fields)
        assert built == constructed
        assert built.__dict__ == constructed.__dict__
        assert list(built.__dict__) == list(constructed.__dict__)
        assert built.model_fields_set == constructed.model_fields_set == set(fields)
    assert cls.build(**dict(msg)) == msg
    with pytest.raises(TypeError, match="no field"):
        cls.build(**fields, not_a_field=1)
    # Factory defaults are fresh per message, never shared.
    if "warnings" in cls.model_fields:
        assert cls.build(**required).warnings is not cls.build(**required).warnings


def test_built_message_with_a_float_cannot_be_signed() -> None:
    msg, ident = SAMPLES["settlement"]
    with pytest.raises(TypeError, match="float"):
        type(msg).build(**{**dict(msg), "observed_us": 1.5}).sign(ident)


def test_to_wire_omits_none_only() -> None:
    wire = make_job(slo=None, max_price=None).to_wire()
    assert "slo" not in wire and "max_price" not in wire and "budget" not in wire
    assert wire["currency"] == "USD" and wire["v"] == 1
    assert wire["requirements"] == {"memory_mb": 256, "codecs": ["h264"]}


def test_job_spec_round_trip() -> None:
    assert JobSpec.model_validate(JOB.to_wire()) == JOB
    assert JobSpec.model_validate(canonical_decode(canonical_encode(JOB.to_wire()))) == JOB


def test_receipt_delivery_round_trip() -> None:
    receipt = SAMPLES["receipt"][0].sign(EXECUTOR).raw
    for delivery in (
        ReceiptDelivery(receipt=receipt, result=b"sealed"),
        ReceiptDelivery(receipt=receipt),
    ):
        data = delivery.encode()
        assert data == canonical_encode(delivery.to_wire())
        assert ReceiptDelivery.model_validate(canonical_decode(data)) == delivery


def test_models_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        JOB.capability = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- job CID


def test_job_cid_is_stable() -> None:
    wire = JOB.to_wire()
    items = list(wire.items())
    random.Random(7).shuffle(items)
    assert job_cid_of(dict(items)) == JOB_CID
    assert job_cid_of(make_job().to_wire()) == JOB_CID
    assert JOB_CID == cid_for_document(canonical_encode(wire))
    assert JOB_CID.startswith("bagaqiera")


def test_job_cid_changes_with_the_nonce() -> None:
    assert job_cid_of(make_job(nonce=bytes(range(1, 17))).to_wire()) != JOB_CID


def test_job_cid_over_the_received_announce() -> None:
    msg, ident = SAMPLES["announce"]
    env, ann = decode_message(msg.sign(ident).raw, Announce)
    assert job_cid_of(env.body["job"]) == job_cid_of(ann.job.to_wire()) == JOB_CID


@settings(max_examples=40)
@given(
    price=st.integers(0, 2**63 - 1),
    exp=st.integers(0, 2**63 - 1),
    nonce=st.binary(min_size=16, max_size=32),
    warnings=st.lists(st.text(max_size=30), max_size=16),
)
def test_bid_round_trip_property(price: int, exp: int, nonce: bytes, warnings: list[str]) -> None:
    bid = Bid(
        signer=EXECUTOR.did,
        ts=T0,
        exp=exp,
        job=JOB_CID,
        nonce=nonce,
        price=price,
        warnings=warnings,
    )
    env, got = decode_message(bid.sign(EXECUTOR).raw, Bid)
    assert got == bid


# --------------------------------------------------------------------------- validation


def _bad(mtype: str, **changes: Any) -> bytes:
    wire, ident = wire_of(mtype)
    for key, value in changes.items():
        if value is _DROP:
            wire.pop(key)
        else:
            wire[key] = value
    return signed_body(mtype, wire, ident)


_DROP = object()


@pytest.mark.parametrize(
    ("mtype", "changes"),
    [
        ("bid", {"price": "1200"}),
        ("bid", {"price": True}),
        ("bid", {"price": -1}),
        ("bid", {"price": 2**63}),
        ("bid", {"price": None}),
        ("bid", {"nonce": "0123456789abcdef"}),  # str where bin
        ("bid", {"nonce": bytes(15)}),
        ("bid", {"nonce": bytes(33)}),
        ("bid", {"job": JOB_CID.encode()}),  # bin where str
        ("bid", {"job": cid_for_blob(b"x")}),  # raw CID in a document field
        ("bid", {"job": JOB_CID.upper()}),
        ("bid", {"job": "QmRQ353oFNqt8zfZ9X1HgRUszwv9RkEEwmMZZkbkYEsybn"}),
        ("bid", {"currency": "usd"}),
        ("bid", {"isolation": "paranoid"}),
        ("bid", {"match": "perfect"}),
        ("bid", {"warnings": ["x"] * 17}),
        ("bid", {"warnings": ["x" * 1025]}),
        ("bid", {"slo": {"p50_us": -5}}),
        ("bid", {"slo": {"surprise": 1}}),
        ("bid", {"load": {"capacity": 0}}),
        ("bid", {"surprise": 1}),  # unknown field
        ("bid", {"exp": _DROP}),  # missing field
        ("bid", {"job": _DROP}),
        ("assignment", {"executor": "did:key:zbogus"}),
        ("assignment", {"executor": EXECUTOR.did[:-1]}),
        ("assignment", {"attempt": 0}),
        ("assignment", {"attempt": 1001}),
        ("assignment", {"payload": "sealed"}),
        ("accept", {"exp": T0}),  # accept has no exp
        ("reject", {"reason": "No Capacity"}),
        ("reject", {"reason": ""}),
        ("nobid", {"reason": "Full"}),
        ("nobid", {"reason": ""}),
        ("nobid", {"reason": "x" * 65}),
        ("nobid", {"reason": _DROP}),
        ("nobid", {"detail": "x" * 1025}),
        ("nobid", {"job": cid_for_blob(b"x")}),
        ("nobid", {"exp": T0}),  # a no-bid has no exp
        ("receipt", {"status": "great"}),
        ("receipt", {"seq": 0}),
        ("receipt", {"result": JOB_CID}),  # document CID in a blob field
        ("receipt", {"originator": EXECUTOR.did.replace("z6Mk", "z6Mj")}),
        ("settlement", {"verified": 1}),
        ("advert", {"capabilities": [{"name": "Text", "price": 1}]}),
        ("advert", {"capabilities": "text.summarize"}),
        ("advert", {"name": "x" * 65}),
        ("advert", {"draining": "yes"}),
        ("close", {"winner": "nobody"}),
        ("announce", {"closed": []}),  # absent, not empty
        ("announce", {"closed": [DOC] * 65}),  # at most 64 (MAX_CLOSED_PER_ANNOUNCE)
        ("announce", {"closed": ["not a cid"]}),
        ("announce", {"closed": [JOB.payload]}),  # a blob CID is no job CID
        ("announce", {"closed": DOC}),
    ],
)
def test_invalid_fields_are_decode_errors(mtype: str, changes: dict[str, Any]) -> None:
    raw = _bad(mtype, **changes)
    with pytest.raises(DecodeError) as info:
        decode_message(raw, MESSAGE_TYPES[mtype])
    assert not isinstance(info.value, pydantic.ValidationError)
    assert info.value.__cause__ is None or not isinstance(
        info.value.__cause__, pydantic.ValidationError
    )


@pytest.mark.parametrize(
    "capability",
    [
        "Text.summarize",
        "text summarize",
        "text.*",
        "text.>",
        "*",
        ">",
        "",
        ".text",
        "text.",
        "text..summarize",
        "text.summarize\n",
        "text\tsummarize",
        "-text",
        "tëxt",
        "a" * 33,
        ".".join(["a"] * 9),
    ],
)
def test_bad_capability_names(capability: str) -> None:
    assert not CAPABILITY_RE.match(capability)
    wire, ident = wire_of("announce")
    wire["job"] = {**wire["job"], "capability": capability}
    with pytest.raises(DecodeError):
        decode_message(signed_body("announce", wire, ident), Announce)
    with pytest.raises(pydantic.ValidationError):
        make_job(capability=capability)


@pytest.mark.parametrize(
    "capability", ["text", "text.summarize", "a.b-c.d_e.f0", "x" * 32, ".".join(["a"] * 8)]
)
def test_good_capability_names(capability: str) -> None:
    assert CAPABILITY_RE.match(capability)
    assert make_job(capability=capability).capability == capability


@pytest.mark.parametrize("version", [2, 0, True, "1"])
def test_unknown_job_version_is_rejected_with_reason_version(version: Any) -> None:
    wire, ident = wire_of("announce")
    wire["job"] = {**wire["job"], "v": version}
    with pytest.raises(UnsupportedVersion) as info:
        decode_message(signed_body("announce", wire, ident), Announce)
    assert info.value.reason == "version"
    assert repr(version) in str(info.value)


def test_job_version_defaults_to_one() -> None:
    wire = JOB.to_wire()
    del wire["v"]
    assert JobSpec.model_validate(wire).v == 1


def test_job_with_float_requirement_cannot_be_signed() -> None:
    job = make_job(requirements={"memory_gb": 1.5})
    with pytest.raises(TypeError, match="float"):
        Announce(signer=ORIGINATOR.did, ts=T0, exp=T0, job=job).sign(ORIGINATOR)


def test_signing_as_someone_else_is_refused() -> None:
    msg, _ = SAMPLES["bid"]
    with pytest.raises(ValueError, match="signer"):
        msg.sign(ORIGINATOR)


def test_receipt_statuses_match_the_model() -> None:
    assert set(RECEIPT_STATUSES) == {
        "ok",
        "error",
        "timeout",
        "output_limit",
        "memory_limit",
        "killed",
        "sandbox_error",
        "invalid_input",
        "cancelled",
    }
    msg, ident = SAMPLES["receipt"]
    for status in RECEIPT_STATUSES:
        changed = msg.model_copy(update={"status": status})
        _, got = decode_message(changed.sign(ident).raw, Receipt)
        assert got.status == status


def test_decode_message_respects_max_len() -> None:
    msg, ident = SAMPLES["advert"]
    raw = msg.sign(ident).raw
    with pytest.raises(ProtocolError):
        decode_message(raw, Advert, max_len=len(raw) - 1)
    decode_message(raw, Advert, max_len=len(raw))


def test_nobid_and_reject_reason_codes_are_tokens_and_decode() -> None:
    nobid, ident = SAMPLES["nobid"]
    for reason in NO_BID_REASONS:
        changed = nobid.model_copy(update={"reason": reason})
        _, got = decode_message(changed.sign(ident).raw, NoBid)
        assert got.reason == reason
    reject, ident = SAMPLES["reject"]
    for reason in REJECT_REASONS:
        changed = reject.model_copy(update={"reason": reason})
        _, got = decode_message(changed.sign(ident).raw, Reject)
        assert got.reason == reason
    assert {"rate_limited", "full", "over_caps", "unsupported_profile", "untrusted"} <= set(
        NO_BID_REASONS
    )
    assert "not_addressed" in REJECT_REASONS


def test_nobid_is_domain_separated_from_a_bid() -> None:
    from crankmesh.protocol.envelope import Envelope
    from crankmesh.protocol.errors import SignatureInvalid

    nobid, ident = SAMPLES["nobid"]
    env = nobid.sign(ident)
    with pytest.raises(WrongMessageType):
        decode_message(env.raw, Bid)
    # The very signature, presented as another type, does not verify.
    for other in ("bid", "reject"):
        retyped = Envelope(
            other, env.body, env.body_bytes, env.signature, raw=b"retyped" + other.encode()
        )
        with pytest.raises(SignatureInvalid):
            retyped.verify()


# --------------------------------------------------------------------------- quotes


def _assignment_body(**changes: Any) -> dict[str, Any]:
    body = SAMPLES["assignment"][0].to_wire()
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def test_assignment_on_a_quote_round_trips() -> None:
    body = _assignment_body(bid=None, quote=DOC, spec=JOB.to_wire())
    _, asg = decode_message(signed_body("assignment", body, ORIGINATOR), Assignment)
    assert asg.quote == DOC and asg.bid is None and asg.offer == DOC and asg.spec == JOB
    _, on_bid = decode_message(SAMPLES["assignment"][0].sign(ORIGINATOR).raw, Assignment)
    assert on_bid.offer == on_bid.bid == DOC and on_bid.quote is None


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"bid": None, "quote": None}, "exactly one of bid and quote"),
        ({"quote": DOC, "spec": JOB.to_wire()}, "exactly one of bid and quote"),
        ({"bid": None, "quote": DOC}, "spec exactly when it is on a quote"),
        ({"spec": JOB.to_wire()}, "spec exactly when it is on a quote"),
    ],
    ids=["neither", "both", "quote_without_spec", "spec_on_a_bid"],
)
def test_assignment_names_exactly_one_offer(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(DecodeError, match=error):
        decode_message(
            signed_body("assignment", _assignment_body(**changes), ORIGINATOR), Assignment
        )


def test_quote_terms_are_all_optional() -> None:
    body = SAMPLES["quote"][0].to_wire()
    del body["terms"], body["slo"], body["load"], body["isolation"], body["currency"]
    _, q = decode_message(signed_body("quote", body, EXECUTOR), Quote)
    assert q.terms == QuoteTerms() and q.terms.max_timeout_ms is None and q.currency == "USD"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("capability", "Not A Capability"),
        ("price", -1),
        ("seq", -1),
        ("exp", "soon"),
        ("terms", {"max_timeout_ms": 0}),
        ("terms", {"env_profiles": ["Bad Profile"]}),
        ("terms", {"unknown": 1}),
    ],
)
def test_bad_quotes_are_decode_errors(field: str, value: Any) -> None:
    body = SAMPLES["quote"][0].to_wire()
    body[field] = value
    with pytest.raises(DecodeError):
        decode_message(signed_body("quote", body, EXECUTOR), Quote)


def test_advert_proto_and_quote_bytes_are_optional() -> None:
    body = SAMPLES["advert"][0].to_wire()
    del body["proto"]
    for cap in body["capabilities"]:
        cap.pop("quote", None)
    _, advert = decode_message(signed_body("advert", body, EXECUTOR), Advert)
    assert advert.proto is None and all(c.quote is None for c in advert.capabilities)


def test_new_reject_reasons_are_known() -> None:
    assert {"quote_expired", "quote_unknown", "terms", "no_capacity"} <= set(REJECT_REASONS)
