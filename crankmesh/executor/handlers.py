"""Capability handlers: what an executor can actually run.

A handler serves one capability name.  ``check`` says (fast, without running
anything) whether a job's public terms are acceptable; ``execute`` runs it.
Built in: ``echo`` (in-process, returns its input), ``python.run`` (the FaaS
Python runtime in the sandbox), and :class:`InProcessCapability` for
registering any async function as a non-code service.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import msgpack

from ..protocol.messages import JobSpec

if TYPE_CHECKING:
    from .caps import ExecutorCaps
    from .sandbox import Sandbox

__all__ = [
    "CapabilityHandler",
    "EchoCapability",
    "InProcessCapability",
    "Outcome",
    "PythonRunCapability",
    "decode_python_payload",
    "encode_python_payload",
]

MAX_PAYLOAD_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """What running a job produced; becomes a receipt (status, metering) and a result."""

    status: str  # one of protocol.messages.RECEIPT_STATUSES
    result: bytes | None
    detail: str = ""
    wall_us: int = 0
    cpu_us: int = 0
    peak_rss_kb: int = 0


class CapabilityHandler(Protocol):
    """The interface every capability implements.

    A handler may also set a class attribute ``quick = True`` when ``execute``
    always finishes in microseconds without blocking (like ``echo``): with a slot
    free, the executor then answers the Assignment with the receipt itself
    instead of an Accept first (RFC 0001 §8.6).
    """

    @property
    def name(self) -> str: ...

    def check(self, job: JobSpec) -> str | None:
        """``None`` if this handler can serve ``job``, else a reason token."""
        ...

    async def execute(self, job: JobSpec, payload: bytes) -> Outcome: ...


def _now_us() -> int:
    return time.perf_counter_ns() // 1000


class EchoCapability:
    """``echo``: returns its payload unchanged (in-process, no sandbox)."""

    name = "echo"
    #: Finishes in microseconds: with a slot free, the executor answers the
    #: Assignment with the receipt itself instead of an Accept (RFC 0001 §8.6).
    quick = True

    def check(self, job: JobSpec) -> str | None:
        return None if job.payload_size <= MAX_PAYLOAD_BYTES else "payload_too_large"

    async def execute(self, job: JobSpec, payload: bytes) -> Outcome:
        return Outcome(status="ok", result=payload)


class InProcessCapability:
    """Any ``async def fn(payload: bytes) -> bytes`` served as a capability.

    Runs in the node's process (trusted code written by the operator, not by
    the originator), under the job's ``timeout_ms``.
    """

    def __init__(self, name: str, fn: Callable[[bytes], Awaitable[bytes]]) -> None:
        self.name = name
        self._fn = fn

    def check(self, job: JobSpec) -> str | None:
        return None if job.payload_size <= MAX_PAYLOAD_BYTES else "payload_too_large"

    async def execute(self, job: JobSpec, payload: bytes) -> Outcome:
        start = _now_us()
        try:
            with anyio.fail_after(job.constraints.timeout_ms / 1000):
                result = await self._fn(payload)
        except TimeoutError:
            return Outcome(
                "timeout",
                None,
                f"exceeded {job.constraints.timeout_ms} ms",
                wall_us=_now_us() - start,
            )
        except Exception as exc:  # the capability's own failure becomes the receipt's
            return Outcome(
                "error", None, f"{type(exc).__name__}: {exc}"[:1000], wall_us=_now_us() - start
            )
        if len(result) > job.constraints.max_output_bytes:
            return Outcome(
                "output_limit",
                None,
                f"result of {len(result)} bytes exceeds {job.constraints.max_output_bytes}",
                wall_us=_now_us() - start,
            )
        return Outcome("ok", result, wall_us=_now_us() - start)


def encode_python_payload(code: str, args: dict[str, Any] | None = None) -> bytes:
    """The payload of a ``python.run`` job: msgpack ``{"args": {...}, "code": "..."}``."""
    return msgpack.packb({"args": dict(args or {}), "code": code}, use_bin_type=True)  # type: ignore[no-any-return]


def decode_python_payload(payload: bytes) -> tuple[str, dict[str, Any]]:
    """Inverse of :func:`encode_python_payload`; :class:`ValueError` on a malformed payload."""
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_ext_len=0)
    except Exception as exc:
        raise ValueError(f"python.run payload is not msgpack: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("code"), str):
        raise ValueError("python.run payload must be a map with a 'code' string")
    args = doc.get("args") or {}
    if not isinstance(args, dict):
        raise ValueError("python.run 'args' must be a map")
    return doc["code"], args


class PythonRunCapability:
    """``python.run``: the FaaS Python runtime (seed 001) in the sandbox.

    Result bytes: msgpack ``{"exit_code", "return", "signal", "status", "stderr", "stdout"}``
    (``return`` is the msgpack of the job's global ``result``, or nil).
    """

    name = "python.run"

    def __init__(self, sandbox: Sandbox, caps: ExecutorCaps | None = None) -> None:
        from .caps import ExecutorCaps

        self._sandbox = sandbox
        #: The operator's caps: a job runs under ``caps.effective(job.constraints)``.
        self.caps = caps if caps is not None else ExecutorCaps()

    def check(self, job: JobSpec) -> str | None:
        c = job.constraints
        if c.runtime not in (None, "python"):
            return "unsupported_runtime"
        profile = c.env_profile or "python-core"
        if profile not in self._sandbox.profiles:
            return "unsupported_env_profile"
        if c.isolation is not None:
            from .sandbox import IsolationLevel

            if self._sandbox.isolation.level < IsolationLevel.from_token(c.isolation):
                return "isolation_too_weak"
        if c.accelerator in ("gpu", "cuda", "rocm", "mps") and not self._has_accelerator(
            c.accelerator
        ):
            return "no_accelerator"
        return None

    def _has_accelerator(self, kind: str) -> bool:
        accelerators: tuple[str, ...] = getattr(self._sandbox, "accelerators", ())
        return kind in accelerators or (kind == "gpu" and bool(accelerators))

    async def execute(self, job: JobSpec, payload: bytes) -> Outcome:
        from .sandbox import SandboxLimits

        try:
            code, args = decode_python_payload(payload)
        except ValueError as exc:
            return Outcome("invalid_input", None, str(exc))
        c = job.constraints
        over = self.caps.check(c)
        if over is not None:  # the executor declines these; never run one with what it asked
            return Outcome("invalid_input", None, str(over))
        eff = self.caps.effective(c)
        limits = SandboxLimits(
            timeout_s=eff.timeout_s,
            max_output_bytes=eff.max_output_bytes,
            memory_mb=eff.memory_mb,
            cpu_seconds=eff.cpu_seconds,
            # the operator's disk cap bounds each file and the job directory as a whole
            max_file_bytes=eff.disk_bytes,
            max_disk_bytes=eff.disk_bytes,
        )
        res = await self._sandbox.run(
            code=code,
            args=args,
            profile=c.env_profile or "python-core",
            accelerator=c.accelerator or "cpu",
            limits=limits,
        )
        status = res.status.value
        result = msgpack.packb(
            {
                "exit_code": res.exit_code,
                "return": res.return_value,
                "signal": res.signal,
                "status": status,
                "stderr": res.stderr_tail,
                "stdout": res.stdout,
            },
            use_bin_type=True,
        )
        return Outcome(status, result, res.detail[:1000], res.wall_us, res.cpu_us, res.peak_rss_kb)
