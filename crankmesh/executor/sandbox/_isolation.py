"""Honest detection of the isolation this host allows, and the uid blocks of the slots."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import grp
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from crankmesh.protocol.errors import SandboxError

from . import _forkserver
from ._types import IsolationLevel, IsolationReport

FORKSERVER_PATH = Path(_forkserver.__file__).resolve()

#: Per-slot uids come from blocks of this range; gid == uid.
UID_RANGE_START = 61000
UID_BLOCK_SIZE = 128  # two uids per slot (they alternate), at most 64 slots
UID_BLOCKS = 30
UID_LOCK_DIR = "/run/crankmesh-sandbox"

#: Features every level >= NONE has (they cost nothing).
_ALWAYS = ("own_session", "private_workdir", "scrubbed_env", "closed_fds")
#: What STRICT needs from the host.
_STRICT_NEEDS = ("rlimits", "separate_uid", "pidns", "netns", "ipc_uts_ns", "mount_ns")


def detect_isolation() -> IsolationReport:
    """Probe what this host really allows and return the best achievable level.

    Each feature is *tried* in a throw-away child of a fresh interpreter (a real
    ``unshare(CLONE_NEWNET)``, ``setresuid``, pid namespace with its own ``/proc``, ...),
    not inferred from the uid. Takes ~0.1-0.2 s.

    Error handling: a probe that cannot run at all yields level ``NONE`` with a note; it
    never raises.
    """
    try:
        proc = subprocess.run(
            forkserver_command("--probe"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=dict(_forkserver.BASE_ENV),
            cwd="/",
            timeout=60,
            check=False,
        )
        data = json.loads(proc.stdout)
        features = {str(k): bool(v) for k, v in data["features"].items()}
        notes = tuple(str(n) for n in data["notes"])
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        return IsolationReport(IsolationLevel.NONE, {}, (f"isolation probe failed: {exc}",))
    for name in _ALWAYS:
        features[name] = True
    level = best_level(features)
    best = report_for_level(level, IsolationReport(level, features, notes))
    features["protects_node"] = best.features["protects_node"]
    features["kernel_disk_quota"] = best.features["kernel_disk_quota"]
    return IsolationReport(level, features, best.notes)


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)`` on this process; True when it took effect.

    A non-dumpable process cannot be ``ptrace``-attached, nor its ``/proc/<pid>/mem``,
    ``environ``, ``fd/`` ... opened, by other processes of its uid (only by root): what a
    node running as the same uid as its jobs needs. No core dumps either.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(4, 0, 0, 0, 0) == 0)  # PR_SET_DUMPABLE


def forkserver_command(*args: str) -> list[str]:
    """The command line of a fork-server: ``python -I`` (no environment, no user site),
    given the ``PYTHONPATH`` directories the node itself imports from, if any."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if os.path.isdir(p)]
    path = ["--path", json.dumps(extra)] if extra else []
    return [sys.executable, "-I", str(FORKSERVER_PATH), *path, *args]


@functools.cache
def host_isolation() -> IsolationReport:
    """:func:`detect_isolation`, probed once per process."""
    return detect_isolation()


def best_level(features: dict[str, bool]) -> IsolationLevel:
    """The highest level the available features support."""
    if all(features.get(name, False) for name in _STRICT_NEEDS):
        return IsolationLevel.STRICT
    if features.get("rlimits") and features.get("separate_uid"):
        return IsolationLevel.STANDARD
    if features.get("rlimits"):
        return IsolationLevel.BASIC
    return IsolationLevel.NONE


def report_for_level(level: IsolationLevel, host: IsolationReport) -> IsolationReport:
    """What a sandbox running at ``level`` on ``host`` actually uses."""
    strict = level >= IsolationLevel.STRICT
    uid = level >= IsolationLevel.STANDARD
    features = {name: True for name in _ALWAYS}
    features.update(
        rlimits=level >= IsolationLevel.BASIC,
        no_new_privs=level >= IsolationLevel.BASIC and host.features.get("no_new_privs", False),
        separate_uid=uid,
        uid_kill=uid,
        pidns=strict,
        netns=strict,
        ipc_uts_ns=strict,
        mount_ns=strict,
        pidns_or_uid_kill=uid,
        landlock=level >= IsolationLevel.BASIC and host.features.get("landlock", False),
        seccomp=level >= IsolationLevel.BASIC and host.features.get("seccomp", False),
        # each job's directory is a tmpfs of its quota (ENOSPC past it): STRICT's own mount
        # namespace, below it one of the slot's init (a user namespace when not root);
        # without it the quota is a check every 100 ms, which a fast writer can overrun
        job_tmpfs=strict
        or (level >= IsolationLevel.BASIC and host.features.get("job_tmpfs", False)),
    )
    features["kernel_disk_quota"] = features["job_tmpfs"]
    notes = [note for note in host.notes if not note.startswith(_GAP_PREFIX)]
    if level < host.level:
        notes.append(f"level {level.token} was asked for; the host allows {host.level.token}")
    gaps = protection_gaps(features)
    features["protects_node"] = not gaps
    notes.extend(gaps)
    return IsolationReport(level, features, tuple(notes))


_GAP_PREFIX = "unprotected node:"


def protection_gaps(features: Mapping[str, bool]) -> tuple[str, ...]:
    """Why jobs with these features could harm the node (empty: they cannot).

    The node's key and state files, its memory, environment and signals are out of a job's
    reach with a separate uid or Landlock (files + signal/ptrace scoping, ABI >= 6); the
    network (NATS included) with a network namespace or the seccomp socket filter.
    """
    gaps: list[str] = []
    if not (features.get("separate_uid") or features.get("landlock")):
        gaps.append(
            "unprotected node: a job could read the node's key and state files, signal and "
            "trace it (protection needs a separate uid, i.e. a root node, or Landlock ABI >= 6)"
        )
    if not (features.get("netns") or features.get("seccomp")):
        gaps.append(
            "unprotected node: a job could reach NATS and the network (protection needs a "
            "network namespace, i.e. a root node, or seccomp through libseccomp)"
        )
    return tuple(gaps)


class UidBlock:
    """A block of per-slot uids reserved for one fork-server (an ``flock`` held open).

    Resource handling: :meth:`acquire` opens and locks a file under ``/run``; :meth:`release`
    closes it (idempotent). Other sandboxes on the host skip locked blocks, and blocks that
    contain a uid or gid known to ``/etc/passwd`` / ``/etc/group``.

    Error handling: :class:`SandboxError` when no block is free.
    """

    def __init__(self, base: int, fd: int) -> None:
        self.base = base
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"UidBlock(base={self.base}, size={UID_BLOCK_SIZE})"

    @classmethod
    def acquire(cls, slots: int) -> UidBlock:
        if 2 * slots > UID_BLOCK_SIZE:
            raise SandboxError(f"at most {UID_BLOCK_SIZE // 2} slots per profile, got {slots}")
        try:
            os.makedirs(UID_LOCK_DIR, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise SandboxError(f"cannot create {UID_LOCK_DIR}: {exc}") from exc
        taken = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
        for index in range(UID_BLOCKS):
            base = UID_RANGE_START + index * UID_BLOCK_SIZE
            if any(uid in taken for uid in range(base, base + UID_BLOCK_SIZE)):
                continue
            path = os.path.join(UID_LOCK_DIR, f"uids-{base}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            return cls(base, fd)
        raise SandboxError(
            f"no free block of sandbox uids in {UID_RANGE_START}.."
            f"{UID_RANGE_START + UID_BLOCKS * UID_BLOCK_SIZE - 1}; close other sandboxes"
        )

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def check_traversable(path: str) -> None:
    """Raise :class:`SandboxError` unless other uids can reach ``path`` (``o+x`` on each part)."""
    current = Path(path).resolve()
    for part in (current, *current.parents):
        mode = part.stat().st_mode
        if not mode & 0o001:
            raise SandboxError(
                f"workdir_root {path!r} is not reachable by the sandbox uids: {str(part)!r} "
                "lacks o+x; choose a directory whose parents are world-searchable"
            )
