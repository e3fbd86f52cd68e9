"""Value types of the sandbox: isolation levels, limits, results."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ExecStatus",
    "IsolationLevel",
    "IsolationReport",
    "SandboxLimits",
    "SandboxResult",
]

_MIB = 1024 * 1024

#: How much of the end of stderr a result keeps.
STDERR_TAIL_BYTES = 8 * 1024


class IsolationLevel(enum.IntEnum):
    """How strongly a job is separated from the node and from other jobs.

    - ``NONE``: output capture and wall-clock timeout only.
    - ``BASIC``: rlimits, own session, private working directory, scrubbed environment,
      inherited file descriptors closed, ``no_new_privs``; everything the job spawned is
      killed when it ends (walking the job's descendants); Landlock (files, TCP, signal and
      ptrace scoping) and seccomp where the kernel has them. ``features["protects_node"]``
      says whether a job can reach the node (key, state, memory, environ, signals, network).
    - ``STANDARD``: ``BASIC`` + a separate unprivileged uid per job slot, so the job can
      neither read the node's private files nor signal the node or other jobs, and the
      uid's processes are killed when the job ends.
    - ``STRICT``: ``STANDARD`` + own pid, network (no interface up), IPC, UTS and mount
      namespaces (private ``/proc`` and fresh ``tmpfs`` on every world-writable
      directory): nothing of the job survives its end.
    """

    NONE = 0
    BASIC = 1
    STANDARD = 2
    STRICT = 3

    @property
    def token(self) -> str:
        """The lower-case wire token: ``"none"``, ``"basic"``, ``"standard"``, ``"strict"``."""
        return self.name.lower()

    @classmethod
    def from_token(cls, token: str) -> IsolationLevel:
        """Parse a wire token; raises :class:`ValueError` for an unknown one."""
        try:
            return cls[token.strip().upper()]
        except KeyError:
            known = ", ".join(repr(level.token) for level in cls)
            msg = f"unknown isolation level {token!r}; expected one of {known}"
            raise ValueError(msg) from None


@dataclass(frozen=True)
class IsolationReport:
    """What isolation is (or can be) in force, feature by feature.

    ``features`` maps a feature name (``rlimits``, ``separate_uid``, ``netns``, ``pidns``,
    ``mount_ns``, ``ipc_uts_ns``, ``uid_kill``, ``pidns_or_uid_kill``, ``no_new_privs``, ...)
    to whether it is available / in use; ``notes`` says why a feature is missing.
    """

    level: IsolationLevel
    features: Mapping[str, bool] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        on = sorted(name for name, ok in self.features.items() if ok)
        off = sorted(name for name, ok in self.features.items() if not ok)
        text = f"isolation {self.level.token}: on [{', '.join(on)}]; off [{', '.join(off)}]"
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Resource limits of one job.

    ``memory_mb`` bounds each process's *additional* address space on top of the warm
    interpreter it was forked from (``RLIMIT_AS``; not applied to CUDA jobs, whose driver
    reserves huge virtual ranges). ``cpu_seconds`` defaults to ``ceil(timeout_s) + 1``.
    ``max_disk_bytes`` / ``max_files``: what the job's working directory may hold (the job
    is killed, ``killed`` "disk quota ... exceeded", when the fork-server's 100 ms check
    finds more; at ``STRICT``, and below it where the host allows (``features["job_tmpfs"]``:
    a mount namespace of the job slot, in a user namespace for a non-root node), the
    directory is also a ``tmpfs`` of the sandbox's ``max_disk_bytes``, which the kernel
    enforces: ``ENOSPC``); each file is also capped at
    ``min(max_file_bytes, max_disk_bytes)`` by ``RLIMIT_FSIZE``.
    """

    timeout_s: float = 10.0
    max_output_bytes: int = 1 * _MIB
    memory_mb: int = 1024
    max_processes: int = 64
    max_file_bytes: int = 64 * _MIB
    cpu_seconds: int | None = None
    max_disk_bytes: int = 256 * _MIB
    max_files: int = 4096

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"timeout_s must be a positive number, got {self.timeout_s!r}")
        if self.max_output_bytes < 0:
            raise ValueError(f"max_output_bytes must be >= 0, got {self.max_output_bytes}")
        if self.memory_mb < 1:
            raise ValueError(f"memory_mb must be >= 1, got {self.memory_mb}")
        if self.max_processes < 1:
            raise ValueError(f"max_processes must be >= 1, got {self.max_processes}")
        if self.max_file_bytes < 0:
            raise ValueError(f"max_file_bytes must be >= 0, got {self.max_file_bytes}")
        if self.max_disk_bytes < 0:
            raise ValueError(f"max_disk_bytes must be >= 0, got {self.max_disk_bytes}")
        if self.max_files < 1:
            raise ValueError(f"max_files must be >= 1, got {self.max_files}")
        if self.cpu_seconds is not None and self.cpu_seconds < 1:
            raise ValueError(f"cpu_seconds must be >= 1 or None, got {self.cpu_seconds}")

    @property
    def effective_cpu_seconds(self) -> int:
        """``cpu_seconds``, or ``ceil(timeout_s) + 1`` when it is not set."""
        if self.cpu_seconds is not None:
            return self.cpu_seconds
        return math.ceil(self.timeout_s) + 1


class ExecStatus(enum.StrEnum):
    """How a job ended. A failing job is a status, never an exception."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    OUTPUT_LIMIT = "output_limit"
    MEMORY_LIMIT = "memory_limit"
    KILLED = "killed"
    SANDBOX_ERROR = "sandbox_error"


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one job.

    ``stdout`` + ``return_value`` + ``stderr_tail`` hold at most ``max_output_bytes``
    together; ``stderr_tail`` is the end of stderr (at most 8 KiB, what the others leave);
    ``return_value`` the msgpack encoding of the job's global ``result`` (or ``None``).
    ``cpu_us`` and ``peak_rss_kb`` come from the rusage of the whole job tree;
    ``peak_rss_kb`` includes the pages shared with the warm interpreter.
    """

    status: ExecStatus
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr_tail: bytes
    return_value: bytes | None
    wall_us: int
    cpu_us: int
    peak_rss_kb: int
    detail: str

    @property
    def ok(self) -> bool:
        """True when the job ran to completion with exit status 0."""
        return self.status is ExecStatus.OK

    def __repr__(self) -> str:
        return (
            f"SandboxResult(status={self.status.value!r}, exit_code={self.exit_code!r}, "
            f"signal={self.signal!r}, stdout={_abbrev(self.stdout)}, "
            f"stderr_tail={_abbrev(self.stderr_tail)}, "
            f"return_value={_abbrev(self.return_value)}, wall_us={self.wall_us}, "
            f"cpu_us={self.cpu_us}, peak_rss_kb={self.peak_rss_kb}, detail={self.detail!r})"
        )


def _abbrev(data: bytes | None, limit: int = 80) -> str:
    if data is None:
        return "None"
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}...<{len(data)} bytes>"
