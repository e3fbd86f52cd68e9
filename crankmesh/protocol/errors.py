"""The one exception tree of crankmesh.

Every error a user of crankmesh can see derives from :class:`CrankmeshError`.
Dependency exceptions (nats, nacl, msgpack, pydantic) are translated into these
in exactly one place each, with ``raise ... from exc``.

::

    CrankmeshError
    ├── ProtocolError                  a message or document is not acceptable
    │   ├── DecodeError                bytes are not canonical msgpack of the right shape
    │   ├── NonCanonicalError          valid msgpack, but not the canonical encoding
    │   ├── UnsupportedVersion         envelope or document version we do not speak
    │   ├── WrongMessageType           a bid where an assignment was expected, ...
    │   ├── InvalidDID                 not a did:key Ed25519 identifier
    │   ├── InvalidCID                 not a CIDv1/sha2-256 string we accept
    │   ├── SignatureInvalid           signature does not verify for the claimed signer
    │   ├── StaleMessage               expired, too old, or from the future
    │   ├── ReplayedMessage            the same signed message seen before
    │   ├── OversizedMessage           larger than the limit for its subject
    │   └── ContentMismatch            bytes do not hash to the CID they claim
    ├── KeystoreError                  a key file is missing, malformed or unsafe
    ├── StateDirError                  the node's state directory cannot be written
    ├── CapabilityMismatch             no executor can serve the requirements
    ├── TransportError                 NATS unreachable, connection lost, ...
    │   └── StreamNotFound             the JetStream stream named does not exist
    ├── ServerError                    an embedded nats-server failed to start
    ├── SandboxError                   the sandbox itself failed (not the job)
    ├── InvalidJob (also ValueError)   a job's terms are out of range (timeout <= 0, nan, ...)
    ├── JobFailed                      the job ran and failed (receipt says why)
    │   └── JobTimeout
    ├── SelectionError                 nothing could be selected
    │   ├── NoBids                     no executor answered the announcement
    │   │   ├── NoCapacity             executors offer it, but all are full or limiting you
    │   │   ├── BidsDeclined           every executor that answered said no, with reasons
    │   │   └── NoSuitableExecutor     executors offer it, but each is ruled out (says why)
    │   ├── NoEligibleBid              bids came, none passed the filters
    │   └── ExecutorsExhausted         every attempt failed; lists each one
    ├── BudgetError
    │   ├── BudgetExceeded
    │   └── TokenInvalid
    └── ClientStateError (also RuntimeError)   misuse: closed client, reopen, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class CrankmeshError(Exception):
    """Base class of every error raised by crankmesh."""


# --------------------------------------------------------------------------- protocol


class ProtocolError(CrankmeshError):
    """A message or document is not acceptable.

    ``reason`` is a short machine-readable token used in rejection counters
    (``crankmesh_rejections_total{reason=...}``).
    """

    reason: str = "protocol"


class DecodeError(ProtocolError):
    reason = "decode"


class NonCanonicalError(DecodeError):
    reason = "non_canonical"


class UnsupportedVersion(ProtocolError):
    reason = "version"

    def __init__(self, version: object, supported: Sequence[int] = (1,)) -> None:
        self.version = version
        self.supported = tuple(supported)
        super().__init__(
            f"unsupported protocol version {version!r}; this node speaks {list(self.supported)}"
        )


class WrongMessageType(ProtocolError):
    reason = "wrong_type"

    def __init__(self, got: str, expected: str) -> None:
        self.got = got
        self.expected = expected
        super().__init__(f"expected a {expected!r} message, got {got!r}")


class InvalidDID(ProtocolError):
    reason = "invalid_did"


class InvalidCID(ProtocolError):
    reason = "invalid_cid"


class SignatureInvalid(ProtocolError):
    reason = "bad_signature"


class StaleMessage(ProtocolError):
    reason = "stale"


class ReplayedMessage(ProtocolError):
    reason = "replay"


class OversizedMessage(ProtocolError):
    reason = "oversized"

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")


class ContentMismatch(ProtocolError):
    reason = "content_mismatch"


# --------------------------------------------------------------------------- local


class KeystoreError(CrankmeshError):
    """A key file is missing, malformed, or has unsafe permissions."""


class StateDirError(CrankmeshError):
    """The node's state directory cannot be created or written (read-only, not a directory)."""


class CapabilityMismatch(CrankmeshError):
    """No executor can serve the requirements; ``details`` explains each miss."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        self.details = tuple(details)
        text = message
        if self.details:
            text += ":\n  - " + "\n  - ".join(self.details)
        super().__init__(text)


class TransportError(CrankmeshError):
    """NATS could not be reached, or the connection was lost."""


class StreamNotFound(TransportError):
    """The server answers, but has no JetStream stream of that name (a wrong
    ``--stream`` or ``--federation``, or nothing was ever persisted there)."""


class ServerError(CrankmeshError):
    """An embedded nats-server could not be started or stopped."""


class SandboxError(CrankmeshError):
    """The sandbox itself failed (as opposed to the job running in it)."""


# --------------------------------------------------------------------------- jobs


class InvalidJob(CrankmeshError, ValueError):
    """A job builder got a value it cannot turn into valid terms; ``field`` names it."""

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"invalid job: {field}={value!r}: {problem}")


class JobFailed(CrankmeshError):
    """The job ran, and its verified receipt reports a failure."""

    def __init__(self, job_cid: str, status: str, detail: str = "") -> None:
        self.job_cid = job_cid
        self.status = status
        self.detail = detail
        msg = f"job {job_cid} ended with status {status!r}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class JobTimeout(JobFailed):
    pass


class SelectionError(CrankmeshError):
    """No executor could be selected for a job."""


class NoBids(SelectionError):
    def __init__(self, job_cid: str, capability: str, window_ms: int) -> None:
        self.job_cid = job_cid
        self.capability = capability
        self.window_ms = window_ms
        super().__init__(
            f"no executor bid for job {job_cid} (capability {capability!r}) within "
            f"{window_ms} ms; check that a node offering {capability!r} is connected "
            "to the same federation"
        )


class NoCapacity(NoBids):
    """Executors offering the capability are live, but none bid: all are at capacity
    (or rate-limiting this originator).  ``peers`` describes each one's last advertised load."""

    def __init__(
        self,
        job_cid: str,
        capability: str,
        peers: Sequence[str],
        waited_ms: int,
        declines: Mapping[str, str] | None = None,
    ) -> None:
        self.job_cid = job_cid
        self.capability = capability
        self.window_ms = waited_ms
        self.peers = tuple(peers)
        #: executor DID -> "reason: detail" from its signed NoBid (RFC 0001 §8.13).
        self.declines = dict(declines or {})
        body = "\n  - ".join(self.peers)
        why = (
            "they said:\n  - " + "\n  - ".join(f"{d}: {r}" for d, r in self.declines.items())
            if self.declines
            else "(full, rate-limiting this originator, or not trusting its key: a node "
            "with a trust list ignores other originators)"
        )
        SelectionError.__init__(
            self,
            f"no capacity for job {job_cid}: {len(self.peers)} executor(s) offer "
            f"{capability!r} but none bid within {waited_ms} ms; {why}\n"
            f"last advertised load:\n  - {body}",
        )


class BidsDeclined(NoBids):
    """Every executor that answered the announcement declined it with a signed NoBid
    (RFC 0001 §8.13), at least one for a reason waiting will not cure (requirements,
    price, trust, env profile, caps).  ``declines`` maps executor DID -> "reason: detail"."""

    def __init__(self, job_cid: str, capability: str, declines: Mapping[str, str]) -> None:
        self.job_cid = job_cid
        self.capability = capability
        self.window_ms = 0
        self.declines = dict(declines)
        body = "\n  - ".join(f"{d}: {r}" for d, r in self.declines.items())
        SelectionError.__init__(
            self,
            f"every executor that answered declined job {job_cid} (capability {capability!r}):"
            f"\n  - {body}",
        )


class NoSuitableExecutor(NoBids):
    """Executors offering the capability are live, but none can take this job: their
    adverts (price, env profiles, isolation, hardware) or their no-bids rule each one out.
    ``reasons`` has one line per executor."""

    def __init__(self, job_cid: str, capability: str, reasons: Sequence[str]) -> None:
        self.job_cid = job_cid
        self.capability = capability
        self.window_ms = 0
        self.reasons = tuple(reasons)
        body = "\n  - ".join(self.reasons)
        SelectionError.__init__(
            self,
            f"no executor can take job {job_cid}: {len(self.reasons)} offer {capability!r} "
            f"but each is ruled out:\n  - {body}",
        )


class NoEligibleBid(SelectionError):
    """Bids arrived, but every one failed a filter; ``failures`` lists each."""

    def __init__(self, job_cid: str, failures: Sequence[str]) -> None:
        self.job_cid = job_cid
        self.failures = tuple(failures)
        body = "\n  - ".join(self.failures) if self.failures else "(none)"
        super().__init__(f"no eligible bid for job {job_cid}:\n  - {body}")


@dataclass(frozen=True)
class Attempt:
    """One try at running a job on one executor."""

    attempt: int
    executor: str
    outcome: str

    def __str__(self) -> str:
        return f"attempt {self.attempt} on {self.executor}: {self.outcome}"


class ExecutorsExhausted(SelectionError):
    """Every attempt at a job failed; ``attempts`` lists each executor and why."""

    def __init__(self, job_cid: str, attempts: Sequence[Attempt]) -> None:
        self.job_cid = job_cid
        self.attempts = tuple(attempts)
        body = "\n  - ".join(str(a) for a in self.attempts) if self.attempts else "(none)"
        super().__init__(f"every executor failed job {job_cid}:\n  - {body}")


class BudgetError(CrankmeshError):
    pass


class BudgetExceeded(BudgetError):
    def __init__(self, *, needed_micros: int, remaining_micros: int, currency: str) -> None:
        self.needed_micros = needed_micros
        self.remaining_micros = remaining_micros
        self.currency = currency
        super().__init__(
            f"budget exceeded: the job needs up to {needed_micros} µ{currency} but only "
            f"{remaining_micros} µ{currency} remain on the token"
        )


class TokenInvalid(BudgetError):
    pass


class ClientStateError(CrankmeshError, RuntimeError):
    """A client or node was used in a state that does not allow it."""
