"""The warm fork-server of the Python sandbox, and everything that runs in its children.

This file is started by :class:`crankmesh.executor.sandbox.Sandbox` as its own clean
interpreter::

    python -I <this file> <config-json>

with a scrubbed environment, ``close_fds`` and only the control socket passed, so it inherits
nothing of the node. It is *self-contained* (standard library + msgpack): it never imports
``crankmesh`` (whose ``__init__`` may pull in NATS and key handling). The node imports it as
a module only for the wire helpers and constants below.

Processes of one job slot::

    STRICT (root):
    fork-server (root, single-threaded epoll loop, pre-imported profile modules)
    └── job   pid 1 of its own pid namespace; own net (no interface up), IPC, UTS and
              mount namespaces (private /proc, tmpfs on /tmp /var/tmp /dev/shm /run/lock,
              the interpreter re-exposed read-only when a 0700 parent hides it);
              setgroups([]) + setresgid/setresuid(slot uid), no_new_privs, pdeathsig.
              When it ends, the kernel kills and reaps everything else in its namespace.

    below STRICT:
    fork-server
    └── init   supervisor + child subreaper (keeps the server's uid)
        └── job   (slot uid at STANDARD) ... when it ends, init kills every process of
                  the slot uid (STANDARD) or every descendant (BASIC/NONE) and reaps them.

Children are *pre-forked* and warmed up (the job path is run once on a dummy job, so the
copy-on-write faults of a fresh fork are paid while the slot is idle): a job only pays for
its own code. A slot alternates between two uids, so the pre-forked successor never shares
a uid with the job that just ended. Protocol:

- node -> server, control socket (``ctl_fd``): one byte ``b"J"`` + one unix socket (SCM_RIGHTS)
  per job; EOF means shut down. server -> node: one ``ready`` frame at start.
- per-job socket: node sends one request frame; any later byte (or EOF) cancels the job;
  the server answers one result frame.
- frames: 4-byte big-endian length + msgpack.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import dataclasses
import errno
import functools
import gc
import importlib
import importlib.util
import io
import json
import linecache
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
import types
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

if __name__ == "__main__" and sys.argv[1:2] == ["--path"]:
    # ``-I`` ignores PYTHONPATH: the node passes the directories its own imports came from
    # (e.g. a node started as an unprivileged uid with PYTHONPATH=...), before any import.
    sys.path[:0] = [p for p in json.loads(sys.argv[2]) if p not in sys.path]
    del sys.argv[1:3]

import msgpack  # noqa: E402 - after the path set-up above

# --------------------------------------------------------------------------- constants

#: Modules each env profile pre-imports in its fork-server.
# fmt: off
PROFILES: dict[str, tuple[str, ...]] = {
    "python-core": (
        "array", "base64", "bisect", "collections", "copy", "csv", "dataclasses", "datetime",
        "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "io", "itertools",
        "json", "math", "operator", "pathlib", "random", "re", "shutil", "statistics",
        "string", "struct", "subprocess", "tempfile", "textwrap", "threading", "time",
        "typing", "uuid", "zlib", "msgpack", "pydantic",
    ),
}
# fmt: on
PROFILES["python-ml"] = (*PROFILES["python-core"], "numpy", "torch")

LEVEL_NONE, LEVEL_BASIC, LEVEL_STANDARD, LEVEL_STRICT = 0, 1, 2, 3

#: Environment of the fork-server (and so of every job, plus HOME / TMPDIR).
BASE_ENV: dict[str, str] = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "2",
}

STDERR_TAIL = 8 * 1024
JOB_DIR_IN_NS = "/tmp/job"
TMPFS_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
TMPFS_OPTS = b"size=8m,nr_inodes=1024,mode=1777"

RLIMIT_NOFILE_JOB = 1024
EXIT_SETUP_FAILED = 70
MAX_FRAME = 512 * 1024 * 1024

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_RDONLY, MS_REMOUNT = 1, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38

_HDR = struct.Struct(">I")

# --------------------------------------------------------------------------- frames


def frame(obj: Any) -> bytes:
    """Encode ``obj`` as one length-prefixed msgpack frame."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return _HDR.pack(len(body)) + body


def split_frames(buf: bytearray) -> list[Any]:
    """Remove and decode every complete frame at the start of ``buf``."""
    out: list[Any] = []
    while len(buf) >= 4:
        (size,) = _HDR.unpack_from(buf)
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes is too large")
        if len(buf) < 4 + size:
            break
        out.append(msgpack.unpackb(bytes(buf[4 : 4 + size]), raw=False))
        del buf[: 4 + size]
    return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_frame_blocking(fd: int) -> bytes | None:
    """Read one frame's body from a blocking fd; ``None`` at a clean EOF."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (size,) = _HDR.unpack(head)
    body = _read_exact(fd, size)
    if body is None:
        raise EOFError("truncated frame")
    return body


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            if left == size:
                return None
            raise EOFError("truncated frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- syscalls

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        lib.prctl.argtypes = [
            ctypes.c_int,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
            ctypes.c_ulong,
        ]
        lib.unshare.argtypes = [ctypes.c_int]
        lib.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        _libc = lib
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_lib().unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_lib().setns(fd, nstype), "setns")


def prctl(option: int, arg: int = 0) -> None:
    _check(_lib().prctl(option, arg, 0, 0, 0), f"prctl({option})")


def mount(
    source: bytes, target: bytes, fstype: bytes | None, flags: int, data: bytes | None = None
) -> None:
    _check(_lib().mount(source, target, fstype, flags, data), f"mount {target!r}")


def sethostname(name: bytes) -> None:
    _check(_lib().sethostname(name, len(name)), "sethostname")


def _cpu_us(ru: resource.struct_rusage) -> int:
    return int((ru.ru_utime + ru.ru_stime) * 1_000_000)


def _close_all_but(keep: Iterable[int]) -> None:
    low = 0
    for fd in sorted(set(keep)):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ServerConfig:
    """What one fork-server serves, and how strongly it isolates."""

    profile: str
    level: int
    slots: int
    workdir: str
    uid_base: int | None = None
    netns_per_job: bool = True
    warm: bool = True
    #: (blocker, paths): directories of the interpreter hidden from other uids by a
    #: non-searchable ancestor (e.g. /root/.pyenv under a 0700 /root), re-exposed read-only
    #: inside STRICT jobs; computed by the fork-server itself.
    expose: tuple[tuple[str, tuple[str, ...]], ...] = ()
    node_pid: int = 0
    ctl_fd: int = 3
    #: confine each job with Landlock / seccomp (the node enables what the probe found)
    landlock: bool = False
    seccomp: bool = False
    #: STRICT: the size of the tmpfs that is each job's directory
    disk_quota_bytes: int = 256 << 20
    disk_quota_files: int = 4096
    #: below STRICT: make each job's directory such a tmpfs too, in a mount namespace of
    #: the slot's init (in a new user namespace when the node is not root); the node sets
    #: it where the probe's ``job_tmpfs`` worked
    job_tmpfs: bool = False

    @property
    def separate_uid(self) -> bool:
        return self.level >= LEVEL_STANDARD and self.uid_base is not None

    @property
    def namespaces(self) -> bool:
        return self.level >= LEVEL_STRICT

    @property
    def tmpfs_below_strict(self) -> bool:
        return self.job_tmpfs and LEVEL_BASIC <= self.level < LEVEL_STRICT

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        return cls(**json.loads(text))


# --------------------------------------------------------------------------- the job


class _Abort(Exception):
    """Raised in init by SIGTERM: the server wants the job gone."""


def _raise_abort(signum: int, frame: object) -> None:
    raise _Abort


def _report_failure(fd: int, exc: BaseException) -> None:
    with contextlib.suppress(BaseException):
        _write_all(fd, frame(["F", f"{type(exc).__name__}: {exc}"]))


def _wire_stdio(fds: dict[str, int], *keep: int) -> None:
    """stdin = /dev/null, stdout/stderr = the job's pipes; close every other fd."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(fds["out_w"], 1)
    os.dup2(fds["err_w"], 2)
    _close_all_but((0, 1, 2, *keep))


def _enter_namespaces(cfg: ServerConfig, uid: int) -> str:
    """Own mount/IPC/UTS(/net) namespaces, private /proc and tmpfs; return the job's cwd.

    Must run as root, in a process that already is in the job's new pid namespace (the
    fresh /proc shows that namespace).
    """
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if cfg.netns_per_job:
        flags |= CLONE_NEWNET
    unshare(flags)
    mount(b"none", b"/", None, MS_REC | MS_PRIVATE)
    # bind sources are opened inside the new mount namespace (they must be in it), before
    # the tmpfs mounts below may hide their paths
    exposed = [
        (blocker, [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in paths])
        for blocker, paths in cfg.expose
    ]
    mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in TMPFS_DIRS:
        if os.path.isdir(path) and not os.path.islink(path):
            mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, TMPFS_OPTS)
    for blocker, opened in exposed:
        # hide the rest of the blocker (e.g. /root), show only the interpreter, read-only
        mount(b"tmpfs", blocker.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755")
        for path, fd in opened:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _bind(fd, path, readonly=True)
    # the job's directory: a tmpfs of the disk quota, owned by the job's uid (the kernel
    # refuses writes past it: ENOSPC)
    os.mkdir(JOB_DIR_IN_NS, 0o700)
    inodes = cfg.disk_quota_files + 1  # the root directory takes one
    opts = f"size={cfg.disk_quota_bytes},nr_inodes={inodes},mode=0700"
    if cfg.separate_uid:
        opts += f",uid={uid},gid={uid}"
    mount(b"tmpfs", JOB_DIR_IN_NS.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode())
    sethostname(b"crankmesh-job")
    return JOB_DIR_IN_NS


def _bind(fd: int, target: str, *, readonly: bool) -> None:
    mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, MS_BIND | MS_REC)
    os.close(fd)
    if readonly:
        with contextlib.suppress(OSError):
            mount(b"none", target.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _drop_capabilities() -> None:
    """Empty this process's effective, permitted and inheritable capability sets."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()
    _check(_lib().capset(header, data), "capset")


def mount_job_tmpfs(cfg: ServerConfig, uid: int, workdir: str) -> None:
    """Below STRICT: mount a tmpfs of the disk quota on ``workdir`` in a new mount namespace.

    A root node only needs the mount namespace; an unprivileged one creates a user
    namespace with it, that maps its own uid and gid to themselves (files, ``HOME`` and the
    Landlock rules stay what they were), and then gives up the capabilities the new
    namespace granted, so neither this process nor the job it forks can unmount or
    remount anything (the job's seccomp filter and Landlock also deny mount and new
    namespaces). The job sees the same path; the kernel refuses writes past the quota
    (``ENOSPC``). Must run single-threaded (``unshare(CLONE_NEWUSER)``).
    """
    euid, egid = os.geteuid(), os.getegid()
    if euid == 0:
        unshare(CLONE_NEWNS)
    else:
        # /proc/self/*_map of a non-dumpable process belong to root: dumpable for the maps
        prctl(PR_SET_DUMPABLE, 1)
        try:
            unshare(CLONE_NEWUSER | CLONE_NEWNS)
            _write_file("/proc/self/setgroups", b"deny")
            _write_file("/proc/self/uid_map", f"{euid} {euid} 1".encode())
            _write_file("/proc/self/gid_map", f"{egid} {egid} 1".encode())
        finally:
            prctl(PR_SET_DUMPABLE, 0)
    mount(b"none", b"/", None, MS_REC | MS_PRIVATE)
    inodes = cfg.disk_quota_files + 1  # the root directory takes one
    opts = f"size={cfg.disk_quota_bytes},nr_inodes={inodes},mode=0700"
    if cfg.separate_uid:
        opts += f",uid={uid},gid={uid}"
    mount(b"tmpfs", workdir.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode())
    if euid != 0:
        _drop_capabilities()


def _send_dir(sock_fd: int, path: str) -> None:
    """Send the server an fd of the directory ``path`` (the job's tmpfs, which only this
    mount namespace shows) over the datagram socket ``sock_fd``, and close both."""
    sock = socket.socket(fileno=sock_fd)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        socket.send_fds(sock, [b"d"], [fd])
    finally:
        os.close(fd)
        sock.close()


def exposure_plan(paths: Iterable[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Group the directories other uids cannot reach by their first non-searchable ancestor.

    A directory that is itself not readable is left out (there is nothing to re-expose).
    """
    plan: dict[str, list[str]] = {}
    wanted = sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})
    for path in wanted:
        parts = path.strip("/").split("/")
        for depth in range(len(parts)):
            ancestor = "/" + "/".join(parts[:depth])
            if not os.stat(ancestor).st_mode & 0o001:
                group = plan.setdefault(ancestor, [])
                if not any(path == p or path.startswith(p + "/") for p in group):
                    group[:] = [p for p in group if not p.startswith(path + "/")] + [path]
                break
    return tuple((blocker, tuple(paths)) for blocker, paths in sorted(plan.items()))


def interpreter_paths() -> list[str]:
    """Every directory a job's interpreter (and a ``sys.executable`` subprocess) reads."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    paths += [os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))]
    paths += [p for p in sys.path if p and os.path.isdir(p)]
    return paths


def _become_job(cfg: ServerConfig, uid: int, job_dir: str) -> None:
    """Drop to the slot's uid, set no_new_privs and pdeathsig, enter the job's cwd/env."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if cfg.separate_uid:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        prctl(PR_SET_DUMPABLE, 1)  # own /proc/self stays readable to the job itself
    if cfg.level >= LEVEL_BASIC:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # (a uid change clears it: set it again)
    os.chdir(job_dir)
    os.environ.clear()
    os.environ.update(BASE_ENV)
    os.environ.update(HOME=job_dir, TMPDIR=job_dir)
    if cfg.level >= LEVEL_BASIC:
        _confine_job(cfg, job_dir)


#: What every job may read (and execute) besides its interpreter's own directories: the
#: shared libraries, the standard tools under ``/usr/bin`` (the profiles include
#: ``subprocess``), time zones, ``/proc`` (the node's entries there are protected by its
#: non-dumpable state and by Landlock's ptrace scoping) and the CPU topology.
JOB_READ_PATHS = (
    "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib", "/lib", "/lib64", "/lib32",
    "/usr/bin", "/bin", "/usr/local/bin", "/usr/share/zoneinfo", "/etc/ld.so.cache",
    "/etc/localtime", "/sys/devices/system/cpu",
)  # fmt: skip
#: Below STRICT, where ``/proc`` shows the host: only the job's own entry and these.
JOB_PROC_PATHS = (
    "/proc/self", "/proc/thread-self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat",
    "/proc/loadavg", "/proc/uptime", "/proc/version", "/proc/sys/kernel",
)  # fmt: skip
JOB_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
#: What a ``python-ml`` job may also use: the GPU driver's devices and sysfs entries.
ML_READ_PATHS = ("/sys", "/proc/driver", "/usr/share/nvidia", "/etc/nvidia")
ML_DEVICE_PREFIXES = ("nvidia", "dri", "kfd")


def job_paths(cfg: ServerConfig, job_dir: str) -> tuple[list[str], list[str], list[str]]:
    """(read-only, read-write, devices) a job of ``cfg`` may use under Landlock."""
    read_only = [*JOB_READ_PATHS, *interpreter_paths()]
    read_write = [job_dir]
    devices = list(JOB_DEVICES)
    if cfg.namespaces:  # private /proc and tmpfs mounts of the job's own namespaces
        read_only.append("/proc")
        read_write += [p for p in TMPFS_DIRS if os.path.isdir(p)]
    else:
        read_only += JOB_PROC_PATHS
    if cfg.profile == "python-ml":
        read_only += ML_READ_PATHS
        with contextlib.suppress(OSError):
            devices += [
                os.path.join("/dev", name)
                for name in os.listdir("/dev")
                if name.startswith(ML_DEVICE_PREFIXES)
            ]
    return read_only, read_write, devices


def _confine_job(cfg: ServerConfig, job_dir: str) -> None:
    """Landlock + seccomp for this job process, as the node asked (a failure ends the job)."""
    confine = load_confine()
    if cfg.landlock:
        confine.landlock_restrict(*job_paths(cfg, job_dir))
    if cfg.seccomp:
        confine.seccomp_confine()


@functools.cache
def load_confine() -> types.ModuleType:
    """The sibling ``_confine`` module, loaded by path (this file runs as a script)."""
    if __package__:
        return importlib.import_module("._confine", __package__)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_confine.py")
    spec = importlib.util.spec_from_file_location("crankmesh_sandbox_confine", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _await_job(runner: _JobRunner, job_r: int) -> bytes | None:
    if runner.cfg.warm:
        runner.warm()
    body = _read_frame_blocking(job_r)
    os.close(job_r)
    runner.pre_cpu_us = _cpu_us(resource.getrusage(resource.RUSAGE_SELF))
    return body


def _strict_main(cfg: ServerConfig, uid: int, workdir: str, fds: dict[str, int]) -> NoReturn:
    """STRICT: the job process itself is pid 1 of its own pid namespace. Never returns.

    When it exits (or is killed), the kernel kills every other process of the namespace
    and reaps them before its parent, the fork-server, can reap it: nothing survives.
    """
    st_w = fds["st_w"]
    try:
        _wire_stdio(fds, fds["job_r"], fds["res_w"], st_w)
        os.setsid()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        job_dir = _enter_namespaces(cfg, uid)
        _become_job(cfg, uid, job_dir)
        runner = _JobRunner(cfg, fds["res_w"])
        body = _await_job(runner, fds["job_r"])
        _write_all(st_w, frame(["P", runner.pre_cpu_us]))
        os.close(st_w)
    except BaseException as exc:  # noqa: B036 - report, never raise
        _report_failure(st_w, exc)
        os._exit(EXIT_SETUP_FAILED)
    if body is None:  # the server shut down before a job came
        os._exit(0)
    runner.run(body)


def _init_main(
    cfg: ServerConfig, uid: int, workdir: str, fds: dict[str, int], server_pid: int
) -> NoReturn:
    """Below STRICT: init, the job's supervisor and subreaper. Never returns.

    It forks the job process, waits for it, then kills and reaps everything the job left
    behind (by uid at STANDARD, by walking its descendants below) and reports the job's
    wait status and rusage as an ``E`` record.
    """
    st_w = fds["st_w"]
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        signal.signal(signal.SIGTERM, _raise_abort)
        _wire_stdio(
            fds, fds["job_r"], fds["res_w"], st_w, *[fds[k] for k in ("dir_w",) if k in fds]
        )
        os.setsid()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server_pid:
            os._exit(0)  # the server died before pdeathsig was armed
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        if cfg.tmpfs_below_strict:
            mount_job_tmpfs(cfg, uid, workdir)
            _send_dir(fds.pop("dir_w"), workdir)
        _write_all(st_w, frame(["S", _cpu_us(resource.getrusage(resource.RUSAGE_SELF))]))
        pid = os.fork()
        if pid == 0:
            os.close(st_w)
            _job_main(cfg, uid, workdir, fds["job_r"], fds["res_w"])
        os.close(fds["job_r"])
        os.close(fds["res_w"])
        os.dup2(0, 1)
        os.dup2(0, 2)
        status = _init_wait(pid)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _kill_descendants(cfg, uid, pid)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        _write_all(st_w, frame(["E", status, _cpu_us(ru), ru.ru_maxrss]))
    except BaseException as exc:  # noqa: B036 - init must report, never raise
        with contextlib.suppress(BaseException):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _report_failure(st_w, exc)
    os._exit(0)


def _init_wait(pid: int) -> int:
    """Reap children until the job's main process ends; return its wait status."""
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        while True:
            try:
                reaped, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return -1
            if reaped == pid:
                return status
    except _Abort:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        return -2


def _kill_descendants(cfg: ServerConfig, uid: int, job_pid: int) -> None:
    """Kill and reap everything the job left behind (init is their subreaper)."""
    if cfg.separate_uid:
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # kill(-1) now reaches exactly the job's processes
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while True:
                os.waitpid(-1, 0)
        return
    with contextlib.suppress(OSError):
        os.killpg(job_pid, signal.SIGKILL)
    me = os.getpid()
    while True:
        try:
            with open(f"/proc/{me}/task/{me}/children") as fh:
                kids = [int(p) for p in fh.read().split()]
        except OSError:
            kids = []
        for kid in kids:
            with contextlib.suppress(OSError):
                os.kill(kid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _job_main(cfg: ServerConfig, uid: int, job_dir: str, job_r: int, res_w: int) -> NoReturn:
    """Below STRICT: the job process, child of init. Never returns."""
    try:
        os.setpgid(0, 0)
        _become_job(cfg, uid, job_dir)
        runner = _JobRunner(cfg, res_w)
        body = _await_job(runner, job_r)
    except BaseException as exc:  # noqa: B036 - report, never raise
        with contextlib.suppress(BaseException):
            detail = f"{type(exc).__name__}: {exc}"
            _write_all(res_w, frame(["setup", EXIT_SETUP_FAILED, detail, None, 0]))
        os._exit(EXIT_SETUP_FAILED)
    if body is None:  # the server shut down before a job came
        os._exit(0)
    runner.run(body)


def _set_limits(cfg: ServerConfig, lim: dict[str, Any], device: str) -> None:
    if cfg.level < LEVEL_BASIC:
        return
    cpu = int(lim["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["max_processes"], lim["max_processes"]))
    fsize = min(int(lim["max_file_bytes"]), int(lim.get("max_disk_bytes", lim["max_file_bytes"])))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = RLIMIT_NOFILE_JOB if hard == resource.RLIM_INFINITY else min(RLIMIT_NOFILE_JOB, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    if device == "cpu":
        limit = _vsz() + int(lim["memory_mb"]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _vsz() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _pick_device(profile: str, accelerator: str) -> tuple[str, str]:
    """Return (device, error). Only the job process touches CUDA, never the server."""
    if profile != "python-ml" or accelerator == "cpu":
        return "cpu", ""
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return "cpu", "torch is not available"
    if accelerator in ("gpu", "cuda"):
        if torch.cuda.is_available():
            return "cuda", ""
        return "cpu", "no CUDA device"
    if accelerator == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps", ""
        return "cpu", "no MPS device"
    return "cpu", f"unknown accelerator {accelerator!r}"


def _is_memory_error(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text
    )


def _text_stream(fd: int, *, line_buffering: bool = False) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=line_buffering,
    )


_WARM_CODE = """
import sys
values = [i * i for i in range(8)]
print("warm", len(values), args, device)
result = {"values": values, "text": "x" * 8, "blob": b"y", "nested": [{"a": 1.5}]}
"""


class _JobRunner:
    """Runs the job's code as ``__main__`` in this (job) process and reports its outcome.

    :meth:`warm` runs the same path once on a dummy job before the real one arrives, so
    the page faults of a freshly forked interpreter (copy-on-write of touched objects,
    first touch of code pages) are paid while the slot is idle, not on the job's clock.
    """

    def __init__(self, cfg: ServerConfig, res_w: int) -> None:
        self.cfg = cfg
        self.res_w = res_w
        self.pre_cpu_us = 0
        self.pid = os.getpid()
        self.stdout = _text_stream(1)
        self.stderr = _text_stream(2, line_buffering=True)
        self.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")

    def warm(self) -> None:
        out = open(os.devnull, "w")  # noqa: SIM115
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = out
        try:
            req = msgpack.unpackb(
                msgpack.packb({"code": _WARM_CODE, "args": msgpack.packb({"a": 1}), "limits": {}}),
                raw=False,
            )
            self._device_limits("cpu", {}, dry=True)
            module = self._module(req["code"], msgpack.unpackb(req["args"], raw=False), "cpu")
            self._exec(req["code"], module)
            self._epilogue()
            frame(["ok", 0, "", msgpack.packb(module.__dict__["result"], use_bin_type=True), 0])
        except BaseException:  # noqa: B036 - warming is best effort
            pass
        finally:
            sys.stdout, sys.stderr = saved
            out.close()
            sys.modules.pop("__main__", None)
            linecache.cache.pop("<job>", None)

    def run(self, body: bytes) -> NoReturn:
        sys.stdout, sys.stderr, sys.stdin = self.stdout, self.stderr, self.stdin
        sys.__stdout__, sys.__stderr__, sys.__stdin__ = self.stdout, self.stderr, self.stdin  # type: ignore[misc]
        try:
            req: dict[str, Any] = msgpack.unpackb(body, raw=False)
            device, device_error = _pick_device(self.cfg.profile, str(req["accelerator"]))
            if device_error:
                self.stderr.write(f"crankmesh sandbox: {device_error}\n")
                self.finish("device", 1, device_error, None)
            args = msgpack.unpackb(req["args"], raw=False) if req.get("args") else {}
            self._device_limits(device, req["limits"])
            code: str = req["code"]
            module = self._module(code, args, device)
        except BaseException as exc:  # noqa: B036
            self.finish("setup", EXIT_SETUP_FAILED, f"{type(exc).__name__}: {exc}", None)
        kind, exit_code, detail = self._exec(code, module)
        epilogue = self._epilogue()
        if epilogue is not None:
            kind, exit_code = "exit", epilogue
        packed = None
        if exit_code == 0 and "result" in module.__dict__:
            try:
                packed = msgpack.packb(module.__dict__["result"], use_bin_type=True)
            except BaseException as exc:  # noqa: B036
                kind, exit_code = "result", 1
                detail = f"result is not msgpack-serializable: {type(exc).__name__}: {exc}"
                with contextlib.suppress(BaseException):
                    self.stderr.write(f"crankmesh sandbox: {detail[:1000]}\n")
        self.finish(kind, exit_code, detail[:1000], packed)

    def _device_limits(self, device: str, lim: dict[str, Any], *, dry: bool = False) -> None:
        if dry:
            _vsz()
            resource.getrlimit(resource.RLIMIT_NOFILE)
            return
        _set_limits(self.cfg, lim, device)

    @staticmethod
    def _module(code: str, args: Any, device: str) -> types.ModuleType:
        linecache.cache["<job>"] = (len(code), None, code.splitlines(True), "<job>")
        module = types.ModuleType("__main__")
        module.__dict__.update(__builtins__=builtins, __file__="<job>", args=args, device=device)
        sys.modules["__main__"] = module
        sys.argv = ["<job>"]
        import atexit

        atexit._clear()  # the fork-server's handlers are not the job's
        return module

    def _exec(self, code: str, module: types.ModuleType) -> tuple[str, int, str]:
        try:
            exec(compile(code, "<job>", "exec"), module.__dict__)
        except SystemExit as exc:
            return "exit", self._exit_code(exc), ""
        except BaseException as exc:  # noqa: B036 - the job's failure is a result
            if _is_memory_error(exc):
                kind, detail = "memory", type(exc).__name__
            elif isinstance(exc, OSError) and exc.errno == errno.EFBIG:
                kind, detail = "file_size", f"{type(exc).__name__}: {exc}"
            else:
                kind, detail = "exception", f"uncaught {type(exc).__name__}: {exc}"
            with contextlib.suppress(BaseException):
                tb = exc.__traceback__.tb_next if exc.__traceback__ else None
                traceback.print_exception(type(exc), exc, tb)
            return kind, 1, detail
        return "ok", 0, ""

    def _epilogue(self) -> int | None:
        """Join non-daemon threads, run the job's atexit handlers; an exit code if they exit."""
        try:
            import atexit
            import threading

            for thread in threading.enumerate():
                if thread is not threading.main_thread() and not thread.daemon:
                    thread.join()
            atexit._run_exitfuncs()
        except SystemExit as exc:
            return self._exit_code(exc)
        except BaseException:  # noqa: B036
            with contextlib.suppress(BaseException):
                traceback.print_exc()
        return None

    def _exit_code(self, exc: SystemExit) -> int:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code & 0xFF
        with contextlib.suppress(BaseException):
            sys.stderr.write(f"{code}\n")
        return 1

    def finish(self, kind: str, exit_code: int, detail: str, packed: bytes | None) -> NoReturn:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        if os.getpid() == self.pid:  # not in a process the job forked
            with contextlib.suppress(BaseException):
                _write_all(self.res_w, frame([kind, exit_code, detail, packed, self.pre_cpu_us]))
        os._exit(exit_code)


# --------------------------------------------------------------------------- the server


@dataclass(eq=False)
class _Child:
    """One pre-forked init + job pair, owning a slot until init has exited."""

    slot: int
    init_pid: int
    pidfd: int
    job_w: int
    out_r: int
    err_r: int
    res_r: int
    st_r: int
    workdir: str
    st: bytearray = field(default_factory=bytearray)
    job: _Job | None = None
    workdir_removed: bool = False
    #: below STRICT with a job tmpfs: the socket init sends that tmpfs's fd over, and the fd
    dir_r: int = -1
    dir_fd: int = -1


@dataclass(eq=False)
class _Job:
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    request: dict[str, Any] | None = None
    payload: bytes = b""
    child: _Child | None = None
    t0: float = 0.0
    deadline: float = 0.0
    cap: int = 0
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    res: bytearray = field(default_factory=bytearray)
    output_exceeded: bool = False
    timed_out: bool = False
    cancelled: bool = False
    kill_sent: float = 0.0
    outbuf: memoryview | None = None
    finished: bool = False
    disk_cap: int = 0
    files_cap: int = 0
    disk_next: float = 0.0
    disk_exceeded: str = ""
    #: the whole job tree's memory (bytes beyond its warm copies) and CPU (clock ticks)
    mem_cap: int = 0
    cpu_cap_ticks: int = 0
    tree_exceeded: tuple[str, str] | None = None
    #: STRICT: the job directory's tmpfs, held open so it can be measured after the job
    dir_fd: int = -1


#: A slot whose child was used is re-forked once the loop has been idle this long (or at
#: once when no pre-forked child is left), so re-forking does not delay the next job.
PREFORK_IDLE_S = 0.002
#: After asking init to end a job, how long before it is killed outright.
KILL_GRACE_S = 2.0
#: How often a running job's directory is measured against its disk quota.
DISK_CHECK_S = 0.1


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Per process, what a job's tree may hold beyond ``memory_mb`` and its warm copies.
TREE_SLACK_BYTES = 8 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _statm_anon(pid: int) -> int | None:
    """Resident minus file-backed/shared pages of ``pid``, in bytes (None: it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            fields = fh.read().split()
        return (int(fields[1]) - int(fields[2])) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _tree_usage(root: int) -> tuple[int, int, int] | None:
    """(anonymous bytes, CPU clock ticks incl. reaped children, processes) of ``root`` and
    every descendant (orphans are reparented to ``root``: a subreaper or a pid-ns init)."""
    anon, ticks, procs = 0, 0, 0
    stack, seen = [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read().rsplit(b")", 1)[1].split()
            tids = os.listdir(f"/proc/{pid}/task")
        except (OSError, IndexError):
            if pid == root:
                return None
            continue
        ticks += sum(int(v) for v in stat[11:15])  # utime stime cutime cstime
        mem = _statm_anon(pid)
        if mem is not None:
            anon += mem
            procs += 1
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                    stack.extend(int(c) for c in fh.read().split())
            except (OSError, ValueError):
                continue
    return anon, ticks, procs


def _disk_usage(path: str, max_entries: int) -> tuple[int, int] | None:
    """(bytes allocated, entries) under ``path``, stopping past ``max_entries`` entries;
    None when a directory in it cannot be read (a job hiding its files)."""
    total, entries = 0, 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    st = entry.stat(follow_symlinks=False)
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    if max_entries and entries > max_entries:
                        return total, entries
        except FileNotFoundError:
            continue  # removed meanwhile
        except OSError:
            return None
    return total, entries


class _Server:
    def __init__(self, cfg: ServerConfig, ctl: socket.socket) -> None:
        self.cfg = cfg
        self.ctl = ctl
        self.ep = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.children: list[_Child | None] = [None] * cfg.slots
        self.ready: deque[int] = deque()  # slots with an idle child, oldest first
        self.empty: set[int] = set(range(cfg.slots))  # slots that need a child
        self.queue: deque[_Job] = deque()
        self.jobs: set[_Job] = set()
        self.counter = 0
        self.uid_flip = [1] * cfg.slots
        self.pid = os.getpid()
        self.closing = False
        self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY) if cfg.namespaces else -1
        # Below STRICT, init reports "everything of the job is dead and reaped" before it
        # exits itself; answering then saves its exit. Not at STANDARD: there init has
        # become the job's uid to kill(-1), so it must be gone before we answer.
        self.answer_early = not cfg.namespaces and not cfg.separate_uid
        #: anonymous memory of this warm interpreter: what each forked copy starts with
        self.base_anon = _statm_anon(os.getpid()) or 0

    # -- fd bookkeeping
    def watch(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        if fd in self.handlers:
            self.ep.modify(fd, events)
        else:
            self.ep.register(fd, events)
        self.handlers[fd] = handler

    def unwatch(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.ep.unregister(fd)

    # -- children
    def prefork(self, slot: int) -> _Child:
        """Fork a slot's init (which forks the job process); they wait for a job."""
        cfg = self.cfg
        self.counter += 1
        workdir = os.path.join(cfg.workdir, f"{slot}-{self.counter}")
        os.mkdir(workdir, 0o700)
        uid = self.next_uid(slot)
        if cfg.separate_uid:
            os.chown(workdir, uid, uid)
        fds: dict[str, int] = {}
        for name in ("job", "out", "err", "res", "st"):
            fds[f"{name}_r"], fds[f"{name}_w"] = os.pipe2(os.O_CLOEXEC)
        if cfg.tmpfs_below_strict:  # init sends its job tmpfs's fd over this
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            fds["dir_r"], fds["dir_w"] = ours.detach(), theirs.detach()
        if cfg.namespaces:
            unshare(CLONE_NEWPID)  # the next child is pid 1 of a new pid namespace
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:
            if cfg.namespaces:
                _strict_main(cfg, uid, workdir, fds)
            _init_main(cfg, uid, workdir, fds, self.pid)
        if cfg.namespaces:
            setns(self.pidns_fd, CLONE_NEWPID)  # later children: back to our own namespace
        if pid < 0:
            for fd in fds.values():
                os.close(fd)
            _remove_tree(workdir)
            raise OSError(errno.EAGAIN, "fork failed")
        for name in ("job_r", "out_w", "err_w", "res_w", "st_w"):
            os.close(fds[name])
        if "dir_w" in fds:
            os.close(fds["dir_w"])
        for name in ("job_w", "out_r", "err_r", "res_r", "st_r"):
            os.set_blocking(fds[name], False)
        child = _Child(
            slot=slot,
            init_pid=pid,
            pidfd=os.pidfd_open(pid),
            job_w=fds["job_w"],
            out_r=fds["out_r"],
            err_r=fds["err_r"],
            res_r=fds["res_r"],
            st_r=fds["st_r"],
            workdir=workdir,
            dir_r=fds.get("dir_r", -1),
        )
        self.children[slot] = child
        self.empty.discard(slot)
        self.watch(child.pidfd, select.EPOLLIN, functools.partial(self.on_exit, child))
        self.watch(child.st_r, select.EPOLLIN, functools.partial(self.on_st, child))
        return child

    def next_uid(self, slot: int) -> int:
        """The uid of the slot's next child: alternating between two uids per slot, so the
        pre-forked successor never shares a uid with the job that just ended."""
        if self.cfg.uid_base is None:
            return -1
        self.uid_flip[slot] ^= 1
        return self.cfg.uid_base + slot + self.uid_flip[slot] * self.cfg.slots

    def refill(self, slot: int) -> None:
        try:
            self.prefork(slot)
        except OSError:
            return  # retried at the next dispatch
        self.ready.append(slot)

    def sweep_uids(self) -> None:
        """Kill leftovers of a previous server generation in our uid block."""
        if not self.cfg.separate_uid:
            return
        assert self.cfg.uid_base is not None
        for uid in range(self.cfg.uid_base, self.cfg.uid_base + 2 * self.cfg.slots):
            pid = os.fork()
            if pid == 0:
                try:
                    os.setresuid(uid, uid, uid)
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)

    # -- control socket
    def on_ctl(self, _ev: int) -> None:
        while True:
            try:
                data, anc, _flags, _addr = self.ctl.recvmsg(1, socket.CMSG_SPACE(8 * 4))
            except BlockingIOError:
                return
            except OSError:
                data, anc = b"", []
            if not data:
                self.begin_close()
                return
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(raw) - len(raw) % 4
                    for (fd,) in struct.iter_unpack("i", raw[:usable]):
                        self.add_job(socket.socket(fileno=fd))

    def add_job(self, sock: socket.socket) -> None:
        if self.closing:
            sock.close()
            return
        sock.setblocking(False)
        job = _Job(sock)
        self.jobs.add(job)
        self.watch(sock.fileno(), select.EPOLLIN, functools.partial(self.on_sock, job))
        self.on_sock(job)

    def on_sock(self, job: _Job, _ev: int = 0) -> None:
        try:
            data = job.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if job.request is None and data:
            job.inbuf += data
            try:
                frames = split_frames(job.inbuf)
            except Exception:
                self.drop_job(job)
                return
            if frames:
                self.accept_request(job, frames[0])
            return
        # anything after the request (or EOF) cancels the job
        if not data:
            self.unwatch(job.sock.fileno())
        if job.finished:
            return
        job.cancelled = True
        if job.child is not None:
            self.kill(job)
        elif job.request is not None:
            self.queue.remove(job)
            self.reply(job, self.result(job, "killed", detail="cancelled before it started"))
        else:
            self.drop_job(job)

    def accept_request(self, job: _Job, request: dict[str, Any]) -> None:
        try:
            job.cap = int(request["limits"]["max_output_bytes"])
            job.deadline = float(request["limits"]["timeout_s"])
            job.disk_cap = int(request["limits"].get("max_disk_bytes", 0))
            job.files_cap = int(request["limits"].get("max_files", 0))
            if self.cfg.level >= LEVEL_BASIC:
                if request.get("accelerator", "cpu") == "cpu":  # as RLIMIT_AS (CUDA: not)
                    job.mem_cap = int(request["limits"]["memory_mb"]) << 20
                job.cpu_cap_ticks = int(request["limits"]["cpu_seconds"]) * CLOCK_TICKS
            job.payload = frame(request)
        except Exception as exc:
            self.reply(job, self.result(job, "sandbox_error", detail=f"bad request: {exc}"))
            return
        job.request = request
        self.queue.append(job)
        self.dispatch()

    def dispatch(self) -> None:
        while self.queue and not self.closing:
            if self.ready:
                child = self.children[self.ready.popleft()]
            elif self.empty:
                try:
                    child = self.prefork(min(self.empty))
                except OSError as exc:
                    job = self.queue.popleft()
                    detail = f"cannot start a job process: {exc}"
                    self.reply(job, self.result(job, "sandbox_error", detail=detail))
                    continue
            else:
                return
            assert child is not None
            self.start(self.queue.popleft(), child)

    def start(self, job: _Job, child: _Child) -> None:
        child.job = job
        job.child = child
        job.t0 = time.monotonic()
        job.deadline += job.t0
        job.disk_next = job.t0 + DISK_CHECK_S
        if child.dir_fd >= 0:
            job.dir_fd, child.dir_fd = child.dir_fd, -1
        self.watch(child.out_r, select.EPOLLIN, functools.partial(self.on_out, job))
        self.watch(child.err_r, select.EPOLLIN, functools.partial(self.on_err, job))
        self.watch(child.res_r, select.EPOLLIN, functools.partial(self.on_res, job))
        self.on_job_w(job)

    def on_job_w(self, job: _Job, _ev: int = 0) -> None:
        child = job.child
        if child is None or child.job_w < 0:
            return
        try:
            while job.payload:
                n = os.write(child.job_w, job.payload)
                job.payload = job.payload[n:]
        except BlockingIOError:
            self.watch(child.job_w, select.EPOLLOUT, functools.partial(self.on_job_w, job))
            return
        except OSError:
            job.payload = b""
        self.unwatch(child.job_w)
        os.close(child.job_w)
        child.job_w = -1

    # -- job output
    def on_out(self, job: _Job, _ev: int = 0) -> None:
        assert job.child is not None
        data = _read_some(job.child.out_r)
        if data is None:
            return
        if not data:
            self.unwatch(job.child.out_r)
            return
        room = job.cap - len(job.stdout)
        job.stdout += data[: max(room, 0)]
        if len(data) > room:
            job.output_exceeded = True
            self.unwatch(job.child.out_r)
            self.kill(job)

    def on_err(self, job: _Job, _ev: int = 0) -> None:
        assert job.child is not None
        data = _read_some(job.child.err_r)
        if data is None:
            return
        if not data:
            self.unwatch(job.child.err_r)
            return
        job.stderr += data
        if len(job.stderr) > 4 * STDERR_TAIL:
            del job.stderr[:-STDERR_TAIL]

    def on_res(self, job: _Job, _ev: int = 0) -> None:
        assert job.child is not None
        data = _read_some(job.child.res_r)
        if data is None:
            return
        if not data:
            self.unwatch(job.child.res_r)
            return
        job.res += data
        if len(job.res) > job.cap + (1 << 16):
            job.output_exceeded = True
            self.unwatch(job.child.res_r)
            self.kill(job)

    def on_st(self, child: _Child, _ev: int = 0) -> None:
        data = _read_some(child.st_r)
        if data is None:
            return
        if not data:
            self.unwatch(child.st_r)
            return
        child.st += data
        if len(child.st) > 1 << 20:
            del child.st[: -(1 << 20)]
        if child.dir_r >= 0 and "S" in _records(child.st):
            child.dir_fd = self.open_job_tmpfs(child)  # init sends it before its "S"
            if child.job is not None and child.job.dir_fd < 0:  # its job already started
                child.job.dir_fd, child.dir_fd = child.dir_fd, -1
        if child.job is not None and self.answer_early and _records(child.st).get("E"):
            self.finish(child, -1, None)
        job = child.job
        if self.cfg.namespaces and job is not None and job.disk_cap and job.dir_fd < 0:
            if "P" in _records(child.st):  # the job runs: its tmpfs is mounted
                with contextlib.suppress(OSError):
                    job.dir_fd = os.open(
                        f"/proc/{child.init_pid}/root{JOB_DIR_IN_NS}",
                        os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                    )

    # -- ending a job
    def kill(self, job: _Job) -> None:
        child = job.child
        if child is None or job.kill_sent:
            return
        job.kill_sent = time.monotonic()
        # pid namespace: SIGKILL to its pid 1 takes the whole namespace with it. Otherwise
        # init must stay alive to kill and reap the job's descendants.
        sig = signal.SIGKILL if self.cfg.namespaces else signal.SIGTERM
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(child.pidfd, sig)

    def finish(self, child: _Child, status: int, ru: resource.struct_rusage | None) -> None:
        """Everything of the job is dead: collect, clean up, answer."""
        job = child.job
        assert job is not None
        child.job = None
        job.child = None
        wall = time.monotonic() - job.t0
        for fd in (child.job_w, child.out_r, child.err_r, child.res_r):
            if fd >= 0:
                self.unwatch(fd)
        if not job.output_exceeded:
            room = job.cap - len(job.stdout)
            data = _read_all(child.out_r, room + 1)
            job.stdout += data[:room]
            job.output_exceeded = len(data) > room
        job.stderr += _read_all(child.err_r, 1 << 24)
        job.res += _read_all(child.res_r, job.cap + (1 << 16) + 1 - len(job.res))
        in_ns = self.cfg.namespaces or self.cfg.tmpfs_below_strict
        if job.disk_cap and job.dir_fd < 0 and self.cfg.tmpfs_below_strict:
            job.dir_fd = self.open_job_tmpfs(child)
        if job.disk_cap and not job.disk_exceeded and (not in_ns or job.dir_fd >= 0):
            self.over_quota(child, job)  # what it wrote since the last check
        if job.dir_fd >= 0:
            os.close(job.dir_fd)  # the last reference: the tmpfs goes
            job.dir_fd = -1
        _remove_tree(child.workdir)
        child.workdir_removed = True
        self.reply(job, self.verdict(job, _records(child.st), status, ru, wall))

    def on_exit(self, child: _Child, _ev: int = 0) -> None:
        try:
            _pid, status, ru = os.wait4(child.init_pid, 0)
        except ChildProcessError:
            status, ru = -1, None
        child.st += _read_all(child.st_r, 1 << 20)
        if child.job is not None:
            self.finish(child, status, ru)
        for fd in (child.pidfd, child.job_w, child.out_r, child.err_r, child.res_r, child.st_r):
            if fd >= 0:
                self.unwatch(fd)
                os.close(fd)
        for fd in (child.dir_fd, child.dir_r):
            if fd >= 0:
                os.close(fd)
        child.dir_fd = child.dir_r = -1
        if not child.workdir_removed:
            _remove_tree(child.workdir)
        if self.children[child.slot] is child:
            self.children[child.slot] = None
            with contextlib.suppress(ValueError):
                self.ready.remove(child.slot)
            self.empty.add(child.slot)
        self.dispatch()

    def verdict(
        self,
        job: _Job,
        records: dict[str, list[Any]],
        status: int,
        ru: resource.struct_rusage | None,
        wall: float,
    ) -> dict[str, Any]:
        """Decide the job's status from what init / the job process reported.

        ``status`` / ``ru``: wait4 of the slot's first process (STRICT: the job process
        itself; below: init, whose ``E`` record carries the job's own status).
        """
        lim: dict[str, Any] = (job.request or {}).get("limits", {})
        end = records.get("E")
        setup_cpu = int(records["S"][1]) if "S" in records else 0
        failure = str(records["F"][1]) if "F" in records else ""
        outcome = _outcome(job.res)
        if "P" in records:
            pre_cpu = int(records["P"][1])
        else:
            pre_cpu = int(outcome[4]) if outcome is not None else 0
        if end is not None:
            cpu_us, peak = int(end[2]) - pre_cpu, int(end[3])
        elif ru is not None:
            cpu_us, peak = _cpu_us(ru) - setup_cpu - pre_cpu, int(ru.ru_maxrss)
        else:
            cpu_us, peak = 0, 0
        exit_code: int | None = None
        sig: int | None = None
        if end is not None:
            job_status = int(end[1])
        else:
            job_status = status if self.cfg.namespaces else -1
        if job_status >= 0:
            if os.WIFEXITED(job_status):
                exit_code = os.WEXITSTATUS(job_status)
            elif os.WIFSIGNALED(job_status):
                sig = os.WTERMSIG(job_status)
        fields: dict[str, Any] = {
            "exit_code": exit_code,
            "signal": sig,
            "wall_us": int(wall * 1e6),
            "cpu_us": max(cpu_us, 0),
            "peak_rss_kb": peak,
        }

        def res(status: str, detail: str, return_value: bytes | None = None) -> dict[str, Any]:
            return self.result(job, status, detail=detail, return_value=return_value, **fields)

        if job.cancelled:
            return res("killed", "cancelled by the node")
        if job.output_exceeded:
            return res("output_limit", f"output exceeded {job.cap} bytes")
        if job.timed_out:
            return res("timeout", f"killed after {lim.get('timeout_s', 0):g} s timeout")
        if job.disk_exceeded:
            return res("killed", job.disk_exceeded)
        if job.tree_exceeded:
            return res(*job.tree_exceeded)
        if failure:
            return res("sandbox_error", f"sandbox setup failed: {failure}")
        kind, detail, packed = "", "", None
        if outcome is not None:
            kind, detail, packed = str(outcome[0]), str(outcome[2]), outcome[3]
        if kind == "setup":
            return res("sandbox_error", f"job setup failed: {detail}")
        if sig is not None:
            return res("killed", self.signal_detail(sig, lim, cpu_us))
        if exit_code is None:
            return res("sandbox_error", "the job's exit status was lost")
        if kind == "memory" or (
            exit_code != 0 and outcome is None and b"MemoryError" in job.stderr[-STDERR_TAIL:]
        ):
            memory = lim.get("memory_mb")
            return res("memory_limit", f"memory limit of {memory} MiB exceeded ({detail})")
        if kind == "file_size":
            size = lim.get("max_file_bytes")
            return res("error", f"file size limit of {size} bytes exceeded ({detail})")
        if isinstance(packed, bytes) and len(packed) + min(len(job.stdout), job.cap) > job.cap:
            return res(
                "output_limit",
                f"return value of {len(packed)} bytes and stdout of {len(job.stdout)} bytes "
                f"exceed the {job.cap} bytes output limit",
            )
        if exit_code == 0:
            return res("ok", "", packed if isinstance(packed, bytes) else None)
        return res("error", detail or f"exit code {exit_code}")

    @staticmethod
    def signal_detail(sig: int, lim: dict[str, Any], cpu_us: int) -> str:
        cpu_s = int(lim.get("cpu_seconds", 0))
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s and cpu_us >= cpu_s * 1e6):
            return f"cpu time limit of {cpu_s} s exceeded"
        if sig == signal.SIGXFSZ:
            return f"file size limit of {lim.get('max_file_bytes')} bytes exceeded (SIGXFSZ)"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"

    @staticmethod
    def result(
        job: _Job,
        status: str,
        *,
        detail: str = "",
        exit_code: int | None = None,
        signal: int | None = None,
        return_value: bytes | None = None,
        wall_us: int = 0,
        cpu_us: int = 0,
        peak_rss_kb: int = 0,
    ) -> dict[str, Any]:
        # max_output_bytes caps stdout + return value + stderr together: stderr gets what
        # the other two leave (at most its last 8 KiB)
        stdout = bytes(job.stdout[: job.cap])
        room = min(job.cap - len(stdout) - len(return_value or b""), STDERR_TAIL)
        return {
            "status": status,
            "exit_code": exit_code,
            "signal": signal,
            "stdout": stdout,
            "stderr_tail": bytes(job.stderr[-room:]) if room > 0 else b"",
            "return_value": return_value,
            "wall_us": wall_us,
            "cpu_us": cpu_us,
            "peak_rss_kb": peak_rss_kb,
            "detail": detail,
        }

    def reply(self, job: _Job, result: dict[str, Any]) -> None:
        job.finished = True
        job.outbuf = memoryview(frame(result))
        self.on_reply(job)

    def on_reply(self, job: _Job, _ev: int = 0) -> None:
        assert job.outbuf is not None
        try:
            while job.outbuf:
                n = job.sock.send(job.outbuf)
                job.outbuf = job.outbuf[n:]
        except BlockingIOError:
            self.watch(job.sock.fileno(), select.EPOLLOUT, functools.partial(self.on_reply, job))
            return
        except OSError:
            pass
        self.drop_job(job)

    def drop_job(self, job: _Job) -> None:
        if job.sock.fileno() >= 0:
            self.unwatch(job.sock.fileno())
            job.sock.close()
        self.jobs.discard(job)

    # -- timers and shutdown
    def check_deadlines(self) -> float | None:
        """Kill overdue jobs; return seconds until the next deadline (None: no deadline)."""
        now = time.monotonic()
        nearest: float | None = None
        for child in self.children:
            job = child.job if child is not None else None
            if child is None or job is None:
                continue
            if job.kill_sent:
                if now - job.kill_sent > KILL_GRACE_S:
                    # init did not end the job within the grace period: take it down hard
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
                    continue
                due = job.kill_sent + KILL_GRACE_S
            elif now >= job.deadline:
                job.timed_out = True
                self.kill(job)
                due = now + KILL_GRACE_S
            elif self.watched(job) and now >= job.disk_next and self.over_limits(child, job):
                self.kill(job)
                due = now + KILL_GRACE_S
            else:
                due = min(job.deadline, job.disk_next) if self.watched(job) else job.deadline
            nearest = due if nearest is None else min(nearest, due)
        return None if nearest is None else max(nearest - now, 0.0)

    @staticmethod
    def watched(job: _Job) -> bool:
        return bool(job.disk_cap or job.mem_cap or job.cpu_cap_ticks)

    def over_limits(self, child: _Child, job: _Job) -> bool:
        """Measure the job's process tree and directory; True (and why, in the job) when
        over a limit. rlimits bind each process; this binds all of them together."""
        job.disk_next = time.monotonic() + DISK_CHECK_S
        if job.mem_cap or job.cpu_cap_ticks:
            usage = _tree_usage(child.init_pid)
            if usage is not None:
                anon, ticks, procs = usage
                allowed = job.mem_cap + procs * (self.base_anon + TREE_SLACK_BYTES)
                if job.mem_cap and anon > allowed:
                    job.tree_exceeded = (
                        "memory_limit",
                        f"memory limit of {job.mem_cap >> 20} MiB exceeded by the job's "
                        f"{procs} processes together ({anon >> 20} MiB)",
                    )
                elif job.cpu_cap_ticks and ticks > job.cpu_cap_ticks:
                    job.tree_exceeded = (
                        "killed",
                        f"cpu time limit of {job.cpu_cap_ticks // CLOCK_TICKS} s exceeded by "
                        f"the job's {procs} processes together",
                    )
                if job.tree_exceeded:
                    return True
        if not job.disk_cap:
            return False
        return self.over_quota(child, job)

    def over_quota(self, child: _Child, job: _Job) -> bool:
        """Measure the job's directory; True (and why, in the job) when over its quota."""
        job.disk_next = time.monotonic() + DISK_CHECK_S
        if job.dir_fd < 0 and self.cfg.tmpfs_below_strict:
            job.dir_fd = self.open_job_tmpfs(child)
        if job.dir_fd >= 0:
            path = f"/proc/self/fd/{job.dir_fd}"
        elif self.cfg.namespaces:
            path = f"/proc/{child.init_pid}/root{JOB_DIR_IN_NS}"
        else:
            path = child.workdir
        usage = _disk_usage(path, job.files_cap)
        if usage is None:
            job.disk_exceeded = "disk quota check failed: the job made its directory unreadable"
        elif usage[0] > job.disk_cap:
            job.disk_exceeded = f"disk quota of {job.disk_cap} bytes exceeded"
        elif job.files_cap and usage[1] > job.files_cap:
            job.disk_exceeded = f"disk quota of {job.files_cap} files exceeded"
        return bool(job.disk_exceeded)

    def open_job_tmpfs(self, child: _Child) -> int:
        """Below STRICT: the job directory's tmpfs, as init sent it (-1: not yet, or never;
        the datagram stays queued after init is gone)."""
        if child.dir_fd >= 0:
            fd, child.dir_fd = child.dir_fd, -1
            return fd
        if child.dir_r < 0:
            return -1
        sock = socket.socket(fileno=os.dup(child.dir_r))
        try:
            sock.setblocking(False)
            _msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 1, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            return -1
        finally:
            sock.close()
        os.close(child.dir_r)
        child.dir_r = -1
        for extra in fds[1:]:
            os.close(extra)
        return fds[0] if fds else -1

    def begin_close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self.unwatch(self.ctl.fileno())
        for job in list(self.queue):
            self.drop_job(job)
        self.queue.clear()
        for job in list(self.jobs):
            if job.child is None and not job.finished:
                self.drop_job(job)
        for child in self.children:
            if child is None:
                continue
            if child.job is not None:
                child.job.cancelled = True
                self.kill(child.job)
            else:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)

    def run(self) -> None:
        self.ctl.setblocking(False)
        self.watch(self.ctl.fileno(), select.EPOLLIN, self.on_ctl)
        for slot in range(self.cfg.slots):
            self.refill(slot)
        while True:
            if self.closing and not self.jobs and not any(self.children):
                return
            timeout = self.check_deadlines()
            if self.empty and not self.closing:
                idle = PREFORK_IDLE_S if self.ready else 0.0
                timeout = idle if timeout is None else min(timeout, idle)
            events = self.ep.poll(-1 if timeout is None else timeout)
            if not events and self.empty and not self.closing:
                self.refill(min(self.empty))
            for fd, ev in events:
                handler = self.handlers.get(fd)
                if handler is not None:
                    handler(ev)


def _records(st: bytearray) -> dict[str, list[Any]]:
    """init's status records by tag (S: setup done, E: job ended, F: setup failed)."""
    out: dict[str, list[Any]] = {}
    try:
        for rec in split_frames(bytearray(st)):
            if isinstance(rec, list) and rec and isinstance(rec[0], str):
                out[rec[0]] = rec
    except Exception:
        pass
    return out


def _outcome(res: bytearray) -> list[Any] | None:
    """The job runner's last outcome frame, if what is there parses as one."""
    try:
        frames = split_frames(bytearray(res))
    except Exception:  # whatever the job wrote there, it is not an outcome
        return None
    if frames and isinstance(frames[-1], list) and len(frames[-1]) == 5:
        return frames[-1]
    return None


def _read_some(fd: int) -> bytes | None:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _read_all(fd: int, limit: int) -> bytes:
    """Read what is there (until EOF, EAGAIN or ``limit`` bytes) from a non-blocking fd."""
    chunks: list[bytes] = []
    total = 0
    while total < limit:
        try:
            chunk = os.read(fd, min(1 << 16, limit - total))
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _remove_tree(path: str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- probe


def probe() -> dict[str, Any]:
    """Try, in throw-away children, each isolation feature; report what really works."""
    features: dict[str, bool] = {}
    notes: list[str] = []
    root = os.geteuid() == 0

    def attempt(name: str, fn: Callable[[], None]) -> bool:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 0
            try:
                fn()
            except BaseException as exc:  # noqa: B036
                with contextlib.suppress(BaseException):
                    os.write(w, f"{type(exc).__name__}: {exc}".encode()[:500])
                code = 1
            os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as fh:
            why = fh.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        features[name] = ok
        if not ok:
            notes.append(f"{name}: {why or 'probe failed'}")
        return ok

    def rlimits() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        resource.setrlimit(resource.RLIMIT_NPROC, (min(soft, 4096), min(hard, 4096)))

    def nnp() -> None:
        prctl(PR_SET_NO_NEW_PRIVS, 1)

    def uid() -> None:
        if not root:
            raise PermissionError("not running as root: cannot switch to a per-job uid")
        os.setgroups([])
        os.setresgid(65533, 65533, 65533)
        os.setresuid(65533, 65533, 65533)
        if os.geteuid() != 65533:
            raise PermissionError("uid switch had no effect")

    def pidns() -> None:
        unshare(CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if os.getpid() == 1 else 1)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise OSError("child of the new pid namespace is not pid 1")

    def netns() -> None:
        unshare(CLONE_NEWNET)
        names = [name for _idx, name in socket.if_nameindex()]
        if names not in ([], ["lo"]):
            raise OSError(f"new network namespace has interfaces {names}")
        with socket.socket() as s:
            s.settimeout(0.2)
            try:
                s.connect(("127.0.0.1", 9))
            except OSError as exc:
                if exc.errno not in (errno.ENETUNREACH, errno.ECONNREFUSED, errno.EADDRNOTAVAIL):
                    raise
                return
        raise OSError("loopback is reachable inside the new network namespace")

    def ipc_uts() -> None:
        unshare(CLONE_NEWIPC | CLONE_NEWUTS)
        sethostname(b"crankmesh-probe")

    def mount_ns() -> None:
        unshare(CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            try:
                unshare(CLONE_NEWNS)
                mount(b"none", b"/", None, MS_REC | MS_PRIVATE)
                mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, TMPFS_OPTS)
                code = 0 if os.listdir("/tmp") == [] else 1
            except BaseException:  # noqa: B036
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise OSError(f"mount namespace setup failed (status {status})")

    def job_tmpfs() -> None:
        # what a slot's init does below STRICT (mount_job_tmpfs), on a scratch directory
        scratch = tempfile.mkdtemp(prefix="crankmesh-probe-")
        try:
            pid = os.fork()
            if pid == 0:
                code = 3
                try:
                    cfg = ServerConfig("python-core", LEVEL_BASIC, 1, scratch, job_tmpfs=True)
                    cfg = dataclasses.replace(cfg, disk_quota_bytes=1 << 20, disk_quota_files=8)
                    mount_job_tmpfs(cfg, -1, scratch)
                    with open(os.path.join(scratch, "f"), "wb") as fh:
                        try:
                            fh.write(b"x" * (2 << 20))
                            fh.flush()
                            code = 1  # the quota was not enforced
                        except OSError as exc:
                            code = 0 if exc.errno == errno.ENOSPC else 2
                except BaseException:  # noqa: B036
                    code = 4
                os._exit(code)
            _, status = os.waitpid(pid, 0)
        finally:
            _remove_tree(scratch)
        if status != 0:
            raise OSError(f"no size-limited tmpfs in a new mount/user namespace (status {status})")

    def landlock() -> None:
        confine = load_confine()
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        got = confine.landlock_restrict(["/proc"], [], [])
        try:
            os.listdir("/")
        except PermissionError:
            pass
        else:
            raise OSError("Landlock did not restrict reading /")
        if not got["landlock_net"]:
            raise OSError("Landlock ABI < 4: no TCP rules (kernel < 6.7)")
        if not got["landlock_scope"]:
            raise OSError("Landlock ABI < 6: no signal scoping (kernel < 6.12)")

    def seccomp() -> None:
        confine = load_confine()
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        confine.seccomp_confine()
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
        except PermissionError:
            return
        raise OSError("the seccomp filter did not deny an AF_INET socket")

    attempt("rlimits", rlimits)
    attempt("no_new_privs", nnp)
    attempt("landlock", landlock)
    attempt("seccomp", seccomp)
    attempt("separate_uid", uid)
    attempt("pidns", pidns)
    attempt("netns", netns)
    attempt("ipc_uts_ns", ipc_uts)
    attempt("mount_ns", mount_ns)
    attempt("job_tmpfs", job_tmpfs)
    features["uid_kill"] = features["separate_uid"]
    features["pidns_or_uid_kill"] = features["pidns"] or features["uid_kill"]
    return {"features": features, "notes": notes, "root": root}


# --------------------------------------------------------------------------- entry


def serve(cfg: ServerConfig) -> int:
    """Run the fork-server until the node closes the control socket."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if cfg.node_pid and os.getppid() != cfg.node_pid:
        return 1  # the node died before we could arm pdeathsig
    # A job of the same uid (BASIC) must not ptrace us or read our /proc entries: we fork
    # its successors. Children inherit this; STANDARD jobs reset it with their uid change.
    prctl(PR_SET_DUMPABLE, 0)
    if cfg.landlock or cfg.seccomp:
        confine = load_confine()  # loaded before any job is confined (its file may be hidden)
        if cfg.seccomp:
            confine.seccomp_available()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = socket.socket(fileno=cfg.ctl_fd)
    error = ""
    for name in PROFILES[cfg.profile]:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: B036
            error = f"cannot import {name!r}: {type(exc).__name__}: {exc}"
            break
    torch: Any = sys.modules.get("torch")
    if not error and torch is not None and torch.cuda.is_initialized():
        error = "torch initialised CUDA in the fork-server; forked jobs could not use it"
    gc.collect()
    gc.freeze()
    versions = {"python": sys.version.split()[0]}
    for name in ("msgpack", "pydantic", "numpy", "torch"):
        mod = sys.modules.get(name)
        if mod is not None:
            versions[name] = str(getattr(mod, "__version__", getattr(mod, "version", "?")))
    hidden = exposure_plan(interpreter_paths())
    if cfg.namespaces:
        cfg = dataclasses.replace(cfg, expose=hidden)
    server = _Server(cfg, ctl) if not error else None
    if server is not None:
        try:
            server.sweep_uids()
        except OSError as exc:
            error = f"cannot sweep the sandbox uids: {exc}"
    ctl.sendall(
        frame(
            {
                "t": "ready",
                "ok": not error,
                "error": error,
                "pid": os.getpid(),
                "versions": versions,
                "hidden": [path for _blocker, paths in hidden for path in paths],
            }
        )
    )
    if server is None or error:
        return 0
    server.run()
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--probe"]:
        sys.stdout.write(json.dumps(probe()))
        sys.stdout.flush()
        return 0
    return serve(ServerConfig.from_json(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
