"""Job builders and results: what an SDK user writes and gets back."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pydantic

from ..executor.handlers import encode_python_payload
from ..protocol.errors import Attempt, InvalidJob, JobFailed, JobTimeout
from ..protocol.messages import Constraints, JobSlo, Receipt

__all__ = ["Job", "JobResult"]


@dataclass(frozen=True, kw_only=True)
class Job:
    """A job to run on the mesh: a capability, its payload, and its terms.

    Build with :meth:`python`, :meth:`echo` or :meth:`call`.  The payload never
    leaves this process except sealed to the one executor that wins the job.
    """

    capability: str
    payload: bytes
    constraints: Constraints = field(default_factory=Constraints)
    requirements: dict[str, Any] = field(default_factory=dict)
    slo: JobSlo | None = None
    max_price: int | None = None
    currency: str = "USD"
    policy: str | None = None
    fallback: tuple[str, ...] = ()
    #: A budget token chain (root first) this job is paid from; see :meth:`with_budget`.
    budget: tuple[bytes, ...] = ()
    #: Run only on this executor (canary probes, pinning); set via ``Client.run(executor=)``.
    only_executor: str | None = None

    def with_budget(self, chain: Any) -> Job:
        """This job, paid from ``chain`` (envelopes or raw bytes, root first, or the
        bytes of :func:`crankmesh.protocol.tokens.encode_chain`)."""
        from ..protocol.tokens import decode_chain

        if isinstance(chain, bytes | bytearray):
            links = tuple(e.raw for e in decode_chain(bytes(chain)))
        else:
            links = tuple(getattr(e, "raw", e) for e in chain)
        return dataclasses.replace(self, budget=links)

    @classmethod
    def python(
        cls,
        code: str,
        args: dict[str, Any] | None = None,
        *,
        env_profile: str = "python-core",
        accelerator: str = "cpu",
        timeout_sec: float = 10.0,
        max_output_bytes: int = 1 << 20,
        memory_mb: int | None = None,
        isolation: str | None = None,
        requirements: dict[str, Any] | None = None,
        slo_p95_ms: float | None = None,
        slo_p99_ms: float | None = None,
        max_price: int | None = None,
        currency: str = "USD",
        policy: str | None = None,
        fallback: tuple[str, ...] | list[str] = (),
    ) -> Job:
        """A ``python.run`` job (seed 001 FaaS schema): ``code`` sees a global ``args``."""
        return cls(
            capability="python.run",
            payload=encode_python_payload(code, args),
            constraints=_constraints(
                timeout_ms=_timeout_ms(timeout_sec),
                max_output_bytes=max_output_bytes,
                memory_mb=memory_mb,
                accelerator=accelerator,
                env_profile=env_profile,
                runtime="python",
                isolation=isolation,
            ),
            requirements=dict(requirements or {}),
            slo=_slo(slo_p95_ms, slo_p99_ms),
            max_price=max_price,
            currency=currency,
            policy=policy,
            fallback=tuple(fallback),
        )

    @classmethod
    def echo(cls, data: bytes, *, timeout_sec: float = 5.0, **kwargs: Any) -> Job:
        """An ``echo`` job: the executor returns ``data`` unchanged."""
        return cls.call("echo", data, timeout_sec=timeout_sec, **kwargs)

    @classmethod
    def call(
        cls,
        capability: str,
        payload: bytes,
        requirements: dict[str, Any] | None = None,
        *,
        timeout_sec: float = 10.0,
        max_output_bytes: int = 1 << 20,
        slo_p95_ms: float | None = None,
        slo_p99_ms: float | None = None,
        max_price: int | None = None,
        currency: str = "USD",
        policy: str | None = None,
    ) -> Job:
        """A job for any capability, e.g. an in-process service registered on nodes."""
        return cls(
            capability=capability,
            payload=bytes(payload),
            constraints=_constraints(
                timeout_ms=_timeout_ms(timeout_sec), max_output_bytes=max_output_bytes
            ),
            requirements=dict(requirements or {}),
            slo=_slo(slo_p95_ms, slo_p99_ms),
            max_price=max_price,
            currency=currency,
            policy=policy,
        )


#: The longest timeout a job can carry (``Constraints.timeout_ms`` ≤ 86 400 000).
_MAX_TIMEOUT_S = 86_400


def _thousandths(name: str, value: object, *, unit: str, high: float) -> int:
    """``value`` (in ``unit``) times 1000, rounded up to an integer, or :class:`InvalidJob`:
    not a real number, nan, infinite, <= 0, or above ``high``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidJob(name, value, f"must be a number of {unit}")
    if not math.isfinite(value):
        raise InvalidJob(name, value, f"must be a finite number of {unit}")
    if value <= 0:
        raise InvalidJob(name, value, f"must be more than 0 {unit}")
    if value > high:
        raise InvalidJob(name, value, f"must be at most {high:g} {unit}")
    return math.ceil(value * 1000)


def _timeout_ms(timeout_sec: object) -> int:
    """A timeout in seconds as ms: 0, negative, nan or infinite is an error, never 1 ms."""
    return _thousandths("timeout_sec", timeout_sec, unit="seconds", high=_MAX_TIMEOUT_S)


def _constraints(**fields: Any) -> Constraints:
    """Validated constraints; a value out of range is :class:`InvalidJob` naming it."""
    try:
        return Constraints(**fields)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else "constraints"
        raise InvalidJob(name, fields.get(name), err["msg"]) from None


def _slo(p95_ms: float | None, p99_ms: float | None) -> JobSlo | None:
    if p95_ms is None and p99_ms is None:
        return None

    def us(name: str, ms: float | None) -> int | None:
        if ms is None:
            return None
        return _thousandths(name, ms, unit="ms", high=_MAX_TIMEOUT_S * 1000)

    return JobSlo(p95_us=us("slo_p95_ms", p95_ms), p99_us=us("slo_p99_ms", p99_ms))


@dataclass(frozen=True)
class JobResult:
    """A job's outcome, backed by a verified receipt."""

    job_cid: str
    status: str
    output: bytes | None
    receipt: Receipt
    receipt_cid: str
    executor: str
    price: int
    currency: str
    latency_ms: float
    attempts: tuple[Attempt, ...] = ()
    verified: bool = True
    warnings: tuple[str, ...] = ()
    #: Correlates this job's log lines across nodes (NATS header ``Crank-Trace``).
    trace_id: str = ""
    explanation: Any = None  # crankmesh.market.Explanation (built lazily on first access)
    #: The signed receipt envelope as received (pipelines keep it to re-verify later).
    receipt_raw: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def raise_for_status(self) -> JobResult:
        """Return ``self`` if the job succeeded, else raise :class:`JobFailed`."""
        if self.status == "ok":
            return self
        err = JobTimeout if self.status == "timeout" else JobFailed
        raise err(self.job_cid, self.status, self.receipt.detail)

    # -- python.run conveniences -------------------------------------------------

    def _py(self) -> dict[str, Any]:
        if self.output is None:
            return {}
        try:
            doc = msgpack.unpackb(self.output, raw=False)
        except Exception:
            return {}
        return doc if isinstance(doc, dict) else {}

    @property
    def stdout(self) -> str:
        out = self._py().get("stdout", b"")
        return out.decode("utf-8", "replace") if isinstance(out, bytes) else ""

    @property
    def stderr(self) -> str:
        err = self._py().get("stderr", b"")
        return err.decode("utf-8", "replace") if isinstance(err, bytes) else ""

    @property
    def exit_code(self) -> int | None:
        code = self._py().get("exit_code")
        return code if isinstance(code, int) else None

    @property
    def return_value(self) -> Any:
        raw = self._py().get("return")
        return None if raw is None else msgpack.unpackb(raw, raw=False)
