"""Typed protocol messages (RFC 0001 §6).

Each signed message type is a frozen pydantic model validated once, at the
boundary, from an :class:`~crankmesh.protocol.envelope.Envelope` body.  Inside
crankmesh code trusts these types.  ``to_wire()`` gives the body map (``None``
fields omitted); absent optional fields decode as ``None``.

Content addresses are always computed over the bytes as received (e.g. the job
CID over the ``job`` map inside an announce), never over a re-serialised model.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Annotated, Any, ClassVar, Final, Literal, Self, TypeVar, get_args

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from .cid import CODEC_MESSAGEPACK, CODEC_RAW, cid_for_document, parse_cid
from .encoding import canonical_encode, canonicalize, encode_canonicalized
from .envelope import Envelope, open_envelope, sign_envelope
from .errors import (
    DecodeError,
    InvalidCID,
    InvalidDID,
    ProtocolError,
    UnsupportedVersion,
    WrongMessageType,
)
from .identity import Identity, public_key_from_did

__all__ = [
    "CAPABILITY_RE",
    "MAX_CLOSED_PER_ANNOUNCE",
    "MESSAGE_TYPES",
    "NO_BID_REASONS",
    "RECEIPT_STATUSES",
    "REJECT_REASONS",
    "Accept",
    "Advert",
    "AdvertCapability",
    "Announce",
    "Assignment",
    "Bid",
    "BidSlo",
    "Close",
    "Constraints",
    "JobSlo",
    "JobSpec",
    "Load",
    "Metering",
    "NoBid",
    "Receipt",
    "ReceiptDelivery",
    "Reject",
    "Settlement",
    "SignedMessage",
    "decode_message",
    "job_cid_of",
    "job_cid_of_canonical",
]

CAPABILITY_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}(\.[a-z0-9][a-z0-9_-]{0,31}){0,7}\Z")


def _check_did(value: str) -> str:
    try:
        public_key_from_did(value)
    except InvalidDID as exc:
        raise ValueError(str(exc)) from None
    return value


def _cid_checker(codec: int | None) -> AfterValidator:
    def check(value: str) -> str:
        try:
            got, _ = parse_cid(value)
        except InvalidCID as exc:
            raise ValueError(str(exc)) from None
        if codec is not None and got != codec:
            raise ValueError(f"{value} has the wrong codec for this field")
        return value

    return AfterValidator(check)


def _check_capability(value: str) -> str:
    if not CAPABILITY_RE.match(value):
        raise ValueError(
            f"capability {value!r} must be dot-separated lower-case tokens of [a-z0-9_-] "
            "(it becomes part of a NATS subject)"
        )
    return value


DID = Annotated[str, AfterValidator(_check_did)]
DocCID = Annotated[str, _cid_checker(CODEC_MESSAGEPACK)]
BlobCID = Annotated[str, _cid_checker(CODEC_RAW)]
Capability = Annotated[str, AfterValidator(_check_capability)]
UInt = Annotated[int, Field(ge=0, le=2**63 - 1)]
PosInt = Annotated[int, Field(ge=1, le=2**63 - 1)]
Nonce = Annotated[bytes, Field(min_length=16, max_length=32)]
Currency = Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]{2,7}$")]
ShortText = Annotated[str, Field(max_length=1024)]
Token = Annotated[str, Field(pattern=r"^[a-z0-9_.-]{1,64}$")]

ReceiptStatus = Literal[
    "ok",
    "error",
    "timeout",
    "output_limit",
    "memory_limit",
    "killed",
    "sandbox_error",
    "invalid_input",
    "cancelled",
]
RECEIPT_STATUSES: Final[tuple[str, ...]] = get_args(ReceiptStatus)
#: Sandbox isolation levels, weakest first (the executor advertises what it achieves).
IsolationToken = Literal["none", "basic", "standard", "strict"]


#: Field names of each model in canonical (sorted) order, filled on first use.
_WIRE_ORDER: dict[type, tuple[str, ...]] = {}
#: Per model, for ``build``: every field in declaration order with its default (required
#: fields hold None until given), the required field names, and the default factories.
_BUILD_PLAN: dict[type, tuple[dict[str, Any], frozenset[str], tuple[tuple[str, Any], ...]]] = {}
_object_setattr = object.__setattr__
_PLAIN: Final = frozenset({str, bytes, int, bool})


def _build_plan(
    cls: type[BaseModel],
) -> tuple[dict[str, Any], frozenset[str], tuple[tuple[str, Any], ...]]:
    template: dict[str, Any] = {}
    required, factories = set(), []
    for name, info in cls.model_fields.items():
        template[name] = None
        if info.default_factory is not None:
            factories.append((name, info.default_factory))
        elif info.is_required():
            required.add(name)
        elif isinstance(info.default, list | dict | set):
            factories.append((name, functools.partial(copy.deepcopy, info.default)))
        else:  # None, numbers, strings and frozen models: safe to share
            template[name] = info.default
    plan = _BUILD_PLAN[cls] = (template, frozenset(required), tuple(factories))
    return plan


def _wire_value(value: Any) -> Any:
    if isinstance(value, _Model):
        return value.to_wire()
    if type(value) is list:
        return [v if type(v) in _PLAIN else _wire_value(v) for v in value]
    # Maps (sorted), tuples, str/int subclasses; TypeError for floats and the like.
    return canonicalize(value)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @classmethod
    def build(cls, **fields: Any) -> Self:
        """Construct WITHOUT validation, for messages this node makes from its own
        typed values on hot paths (inbound messages are always validated by
        :func:`decode_message`).  Tests check that built messages validate.

        What ``model_construct`` does for these models (no aliases, no extras, no
        post-init), with the per-field decisions made once per class: ~2x faster.
        Unlike ``model_construct`` it refuses unknown field names (``TypeError``)."""
        template, required, factories = _BUILD_PLAN.get(cls) or _build_plan(cls)
        values = template.copy()  # keeps the declaration order
        values.update(fields)
        if len(values) != len(template):
            raise TypeError(f"{cls.__name__} has no field {sorted(set(values) - set(template))}")
        for name in required.difference(fields):
            del values[name]  # as model_construct: a missing required field stays unset
        for name, factory in factories:
            if name not in fields:
                values[name] = factory()
        m = cls.__new__(cls)
        _object_setattr(m, "__dict__", values)
        _object_setattr(m, "__pydantic_fields_set__", set(fields))
        _object_setattr(m, "__pydantic_extra__", None)
        _object_setattr(m, "__pydantic_private__", None)
        return m

    def to_wire(self) -> dict[str, Any]:
        """The body map, ``None`` fields omitted, already in canonical form (keys
        sorted at every level, only canonical types): ``encode_canonicalized`` can
        encode it as is.  Equal to ``canonicalize(model_dump(exclude_none=True))``,
        which the tests check, at a fraction of the cost."""
        cls = type(self)
        order = _WIRE_ORDER.get(cls)
        if order is None:
            order = _WIRE_ORDER[cls] = tuple(sorted(cls.model_fields))
        fields = self.__dict__
        out: dict[str, Any] = {}
        for name in order:
            value = fields[name]
            if value is None:
                continue
            out[name] = value if type(value) in _PLAIN else _wire_value(value)
        return out


# --------------------------------------------------------------------------- job


class Constraints(_Model):
    """Public execution parameters every bidder needs to see (seed 001)."""

    timeout_ms: Annotated[int, Field(ge=1, le=86_400_000)] = 10_000
    max_output_bytes: Annotated[int, Field(ge=0, le=1 << 30)] = 1 << 20
    memory_mb: Annotated[int, Field(ge=1, le=1 << 24)] | None = None
    accelerator: Literal["cpu", "gpu", "cuda", "rocm", "mps"] | None = None
    env_profile: Token | None = None
    runtime: Token | None = None
    isolation: IsolationToken | None = None


class JobSlo(_Model):
    """What the originator demands; all optional."""

    p95_us: PosInt | None = None
    p99_us: PosInt | None = None
    min_accuracy_ppm: Annotated[int, Field(ge=0, le=1_000_000)] | None = None


class JobSpec(_Model):
    """The content-addressed job document (payload excluded: only its CID)."""

    v: Literal[1] = 1
    capability: Capability
    originator: DID
    created: UInt
    nonce: Nonce
    payload: BlobCID
    payload_size: UInt
    deadline: UInt
    constraints: Constraints = Constraints()
    requirements: dict[str, Any] = Field(default_factory=dict)
    slo: JobSlo | None = None
    max_price: UInt | None = None
    currency: Currency = "USD"
    budget: DocCID | None = None

    @field_validator("v", mode="before")
    @classmethod
    def _known_version(cls, value: object) -> object:
        # Unknown versions are rejected with reason "version" (not "decode"), and
        # ``True``/``1.0`` (equal to 1 in Python) are not version 1.
        if type(value) is not int or value != 1:
            raise UnsupportedVersion(value, (1,))
        return value


def job_cid_of(job_wire: dict[str, Any]) -> str:
    """The job CID: ``messagepack`` CID of the canonical job map."""
    return cid_for_document(canonical_encode(job_wire))


def job_cid_of_canonical(job_wire: dict[str, Any]) -> str:
    """:func:`job_cid_of` for a map already in canonical form: one decoded by
    :func:`~crankmesh.protocol.encoding.canonical_decode` or made by ``to_wire()``."""
    return cid_for_document(encode_canonicalized(job_wire))


# --------------------------------------------------------------------------- signed


M = TypeVar("M", bound="SignedMessage")


class SignedMessage(_Model):
    TYPE: ClassVar[str]
    signer: DID
    ts: UInt

    def sign(self, identity: Identity) -> Envelope:
        return sign_envelope(identity, self.TYPE, self.to_wire(), canonical=True)


#: Most job CIDs an Announce's ``closed`` list may carry (RFC 0001 §8.3).
MAX_CLOSED_PER_ANNOUNCE: Final = 64


class Announce(SignedMessage):
    TYPE: ClassVar[str] = "announce"
    exp: UInt
    job: JobSpec
    #: Earlier jobs of this originator whose bidding is over: each bidder releases the
    #: capacity its bid for them reserved, as for a Close (§8.7) without ``winner``.
    closed: (
        Annotated[list[DocCID], Field(min_length=1, max_length=MAX_CLOSED_PER_ANNOUNCE)] | None
    ) = None


class BidSlo(_Model):
    """Self-measured performance promised with a bid or advert (microseconds)."""

    p50_us: UInt | None = None
    p95_us: UInt | None = None
    p99_us: UInt | None = None
    throughput_mjps: UInt | None = None  # milli-jobs per second
    accuracy_ppm: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    samples: UInt = 0


class Load(_Model):
    running: UInt = 0
    queued: UInt = 0
    capacity: PosInt = 1


class Bid(SignedMessage):
    TYPE: ClassVar[str] = "bid"
    exp: UInt
    job: DocCID
    nonce: Nonce
    price: UInt
    currency: Currency = "USD"
    slo: BidSlo = BidSlo()
    load: Load = Load()
    est_us: UInt | None = None
    isolation: IsolationToken = "none"
    match: Literal["compatible", "degraded"] = "compatible"
    warnings: Annotated[list[ShortText], Field(max_length=16)] = Field(default_factory=list)


class Assignment(SignedMessage):
    TYPE: ClassVar[str] = "assignment"
    exp: UInt
    job: DocCID
    bid: DocCID
    executor: DID
    attempt: Annotated[int, Field(ge=1, le=1000)]
    nonce: Nonce
    payload: bytes  # box (RFC 0001 §3.3) of the payload bytes from the signer to ``executor``
    deadline: UInt  # receipt due (ms since the epoch)
    budget_chain: bytes | None = None  # budget token chain (RFC 0001 §8.12), leaf = job.budget


class Close(SignedMessage):
    """The originator's notice that a job's bidding is over (winner accepted, or
    the job was abandoned): every other bidder releases the capacity its bid
    reserved.  Published on ``jobs.<cid>.closed``."""

    TYPE: ClassVar[str] = "close"
    job: DocCID
    winner: DID | None = None
    bid: DocCID | None = None


class Accept(SignedMessage):
    TYPE: ClassVar[str] = "accept"
    job: DocCID
    assignment: DocCID
    attempt: Annotated[int, Field(ge=1, le=1000)]


class Reject(SignedMessage):
    TYPE: ClassVar[str] = "reject"
    job: DocCID
    assignment: DocCID
    attempt: Annotated[int, Field(ge=1, le=1000)]
    reason: Token
    detail: ShortText = ""


#: Reason codes of a NoBid (RFC 0001 §8.13); any other ``Token`` is accepted as is
#: (new codes need no new version), these are the ones every implementation knows.
NO_BID_REASONS: Final[tuple[str, ...]] = (
    "rate_limited",
    "full",
    "over_caps",
    "unsupported_profile",
    "untrusted",
    "requirements",
    "over_price",
    "currency",
    "draining",
    "duplicate",
    "unsupported",
)
#: Reason codes of a Reject (RFC 0001 §11); like NoBid reasons, open-ended.
REJECT_REASONS: Final[tuple[str, ...]] = (
    "not_addressed",
    "subject_mismatch",
    "unknown_bid",
    "not_originator",
    "stale",
    "bid_expired",
    "no_capacity",
    "draining",
    "budget_invalid",
    "budget_exceeded",
    "payload_mismatch",
    "over_caps",
    "handed_back",
)


class NoBid(SignedMessage):
    """An executor's signed "no" to an Announce it verified (RFC 0001 §8.13): the
    originator stops waiting for it, and its final error names the reason.
    Published on ``jobs.<cid>.bids``, like a Bid."""

    TYPE: ClassVar[str] = "nobid"
    job: DocCID
    reason: Token
    detail: ShortText = ""


class Metering(_Model):
    wall_us: UInt = 0
    cpu_us: UInt = 0
    peak_rss_kb: UInt = 0


class Receipt(SignedMessage):
    TYPE: ClassVar[str] = "receipt"
    job: DocCID
    assignment: DocCID
    bid: DocCID
    originator: DID
    attempt: Annotated[int, Field(ge=1, le=1000)]
    status: ReceiptStatus
    result: BlobCID | None = None
    result_size: UInt = 0
    metering: Metering = Metering()
    charge: UInt = 0
    currency: Currency = "USD"
    seq: PosInt
    prev: DocCID | None = None
    budget: DocCID | None = None
    detail: ShortText = ""


class Settlement(SignedMessage):
    """The originator's countersignature of the receipt it accepted."""

    TYPE: ClassVar[str] = "settlement"
    receipt: DocCID
    job: DocCID
    executor: DID
    verified: bool
    observed_us: UInt
    promised_p95_us: UInt | None = None
    charge: UInt = 0
    currency: Currency = "USD"
    assignment: DocCID | None = None  # the assignment this originator signed
    budget: DocCID | None = None  # leaf budget token CID the charge is booked against
    # the originator's estimate of the part of observed_us that is not the executor's
    # service (network + both sides' protocol work), µs; RFC 0002 §6
    overhead_us: UInt | None = None


class AdvertCapability(_Model):
    name: Capability
    price: UInt
    currency: Currency = "USD"
    slo: BidSlo | None = None


class Advert(SignedMessage):
    TYPE: ClassVar[str] = "advert"
    exp: UInt
    seq: UInt = 0
    name: Annotated[str, Field(max_length=64)] | None = None
    region: Annotated[str, Field(max_length=64)] | None = None
    capabilities: Annotated[list[AdvertCapability], Field(max_length=256)]
    hardware: dict[str, Any] = Field(default_factory=dict)
    load: Load = Load()
    isolation: IsolationToken = "none"
    draining: bool = False


MESSAGE_TYPES: Final[dict[str, type[SignedMessage]]] = {
    cls.TYPE: cls
    for cls in (
        Announce,
        Bid,
        Assignment,
        Accept,
        Reject,
        Close,
        Receipt,
        Settlement,
        Advert,
        NoBid,
    )
}


def decode_message(
    env_or_bytes: Envelope | bytes, model: type[M], *, max_len: int | None = None
) -> tuple[Envelope, M]:
    """Parse (not verify) a signed message of type ``model`` from bytes or an envelope.

    Error handling: every defect raises a :class:`ProtocolError` subclass.
    """
    if isinstance(env_or_bytes, Envelope):
        env = env_or_bytes
        if env.type != model.TYPE:
            raise WrongMessageType(env.type, model.TYPE)
    else:
        kwargs: dict[str, Any] = {} if max_len is None else {"max_len": max_len}
        env = open_envelope(env_or_bytes, expected_type=model.TYPE, **kwargs)
    try:
        msg = model.model_validate(env.body)
    except pydantic.ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise DecodeError(f"invalid {model.TYPE} body: {errors}") from None
    except ProtocolError:
        raise
    return env, msg


class ReceiptDelivery(_Model):
    """Unsigned container on ``jobs.<cid>.receipt``: the signed receipt plus the
    result boxed to the originator (RFC 0001 §3.3).  The receipt binds the result by CID."""

    receipt: bytes
    result: bytes | None = None

    def encode(self) -> bytes:
        return encode_canonicalized(self.to_wire())
