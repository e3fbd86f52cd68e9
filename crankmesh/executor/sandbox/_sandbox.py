"""The node side of the sandbox: warm fork-servers per env profile, one job at a time each."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio
import msgpack

from crankmesh.protocol.errors import ClientStateError, SandboxError

from . import _forkserver as fs
from ._isolation import (
    UidBlock,
    check_traversable,
    forkserver_command,
    host_isolation,
    report_for_level,
)
from ._types import ExecStatus, IsolationLevel, IsolationReport, SandboxLimits, SandboxResult

logger = logging.getLogger("crankmesh.sandbox")

#: Env profiles this sandbox knows; which are *available* is probed at start.
KNOWN_PROFILES = tuple(fs.PROFILES)
ACCELERATORS = ("cpu", "gpu", "cuda", "mps")
DEFAULT_LIMITS = SandboxLimits()

#: How long a fork-server may take to import its profile (torch takes seconds).
STARTUP_TIMEOUT_S = {"python-core": 60.0, "python-ml": 300.0}
#: Extra time past a job's timeout before the node declares its fork-server hung.
HANG_GRACE_S = 10.0
#: How long a cancelled run waits (shielded) for the fork-server to confirm the kill.
CANCEL_GRACE_S = 5.0
#: How long a closing fork-server gets to kill its jobs and exit.
CLOSE_GRACE_S = 5.0


class _State(enum.Enum):
    NEW = "new"
    OPENING = "opening"
    RUNNING = "running"
    CLOSED = "closed"


class Sandbox:
    """Runs untrusted Python jobs in isolated children of warm, per-profile fork-servers.

    ``async with Sandbox() as sandbox: result = await sandbox.run(code="print(42)")``.
    See the package docstring for the job code contract.

    ``profiles``: env profiles to start (``python-ml`` is skipped, with a reason in
    :attr:`unavailable_profiles`, when torch/numpy do not import). ``max_concurrency``:
    jobs running at once (1..64; each profile pre-forks that many slots).
    ``workdir_root``: where per-job working directories live (default: a fresh directory
    under the system temp dir, removed at close); below ``STRICT`` its path must be
    searchable by other uids. ``isolation``: ``None`` = the best the host allows, else
    exactly that level (:class:`SandboxError` at start when the host cannot provide it).
    ``secrets``: files and directories of the node (its key, its state directory) that no
    job may read or write; at start a real job tries to read and write them, to read the
    node's environment and memory, to signal and ``ptrace`` it and to connect to a TCP
    port, and :attr:`isolation` says ``protects_node`` only if every attempt failed.
    ``max_disk_bytes`` / ``max_files``: at ``STRICT`` (and below it where
    ``isolation.features["job_tmpfs"]``), the size and inode count of the
    ``tmpfs`` each job's directory is (the most any job can store, whatever its limits say).

    Resource handling: entering starts one fork-server process per available profile
    (each pre-forks one sandboxed child per concurrency slot) and reserves a block of
    per-slot uids; :meth:`aclose` (idempotent; also on exit of the ``async with``) stops
    them, which kills any job still running, and removes the working directories it
    created. A fork-server that dies is restarted transparently on the next run
    (counted in :attr:`restarts`).

    Error handling: a job failing is never an exception, it is a :class:`SandboxResult`
    status. :class:`SandboxError` is raised when the sandbox cannot start (a demanded
    isolation level is not achievable, ``python-core`` cannot be imported, no uid block)
    or a profile is not available; a fork-server dying under a job makes that job's
    status ``sandbox_error``. Using a closed sandbox raises :class:`ClientStateError`.
    A cancelled :meth:`run` kills its job (shielded wait for the kill) and re-raises.
    """

    def __init__(
        self,
        *,
        profiles: Sequence[str] = ("python-core",),
        max_concurrency: int = 4,
        workdir_root: str | None = None,
        isolation: IsolationLevel | None = None,
        secrets: Sequence[str] = (),
        max_disk_bytes: int = DEFAULT_LIMITS.max_disk_bytes,
        max_files: int = DEFAULT_LIMITS.max_files,
    ) -> None:
        if isinstance(profiles, str):
            raise TypeError("profiles must be a sequence of profile names, not one string")
        unknown = [p for p in profiles if p not in KNOWN_PROFILES]
        if unknown:
            raise ValueError(f"unknown env profiles {unknown}; known: {list(KNOWN_PROFILES)}")
        if not profiles:
            raise ValueError("at least one env profile is needed")
        if not 1 <= max_concurrency <= 64:
            raise ValueError(f"max_concurrency must be in 1..64, got {max_concurrency}")
        self._wanted = tuple(dict.fromkeys(profiles))
        self._max_concurrency = max_concurrency
        self._workdir_arg = workdir_root
        self._isolation_arg = isolation
        self._secrets = tuple(str(p) for p in secrets)
        if max_disk_bytes < 1 << 20:
            raise ValueError(f"max_disk_bytes must be >= 1 MiB, got {max_disk_bytes}")
        self._max_disk_bytes = max_disk_bytes
        if max_files < 1:
            raise ValueError(f"max_files must be >= 1, got {max_files}")
        self._max_files = max_files
        self._state = _State.NEW
        self._report: IsolationReport | None = None
        self._servers: dict[str, _ForkServer] = {}
        self._unavailable: dict[str, str] = {}
        self._limiter = anyio.Semaphore(max_concurrency)
        self._root: str | None = None
        self._own_root = False
        self._accelerators: tuple[str, ...] = ()

    def __repr__(self) -> str:
        level = self._report.level.token if self._report else "?"
        return (
            f"Sandbox(state={self._state.value}, profiles={list(self.profiles or self._wanted)},"
            f" isolation={level}, max_concurrency={self._max_concurrency})"
        )

    # ------------------------------------------------------------------ properties

    @property
    def isolation(self) -> IsolationReport:
        """The isolation in force (features in use, and why others are not)."""
        if self._report is None:
            raise ClientStateError("The sandbox has not been started; use `async with Sandbox()`.")
        return self._report

    @property
    def profiles(self) -> tuple[str, ...]:
        """The env profiles actually available (``python-ml`` only if torch+numpy import)."""
        return tuple(p for p in self._wanted if p in self._servers)

    @property
    def unavailable_profiles(self) -> Mapping[str, str]:
        """Profiles asked for but not available, with the reason."""
        return dict(self._unavailable)

    @property
    def accelerators(self) -> tuple[str, ...]:
        """Hardware accelerators a ``python-ml`` job can use: ``("cuda",)``, ``("mps",)``
        or ``()`` (CPU only). Probed at start by a job, never in the node or fork-server."""
        return self._accelerators

    @property
    def restarts(self) -> int:
        """How many times a dead fork-server was restarted."""
        return sum(server.restarts for server in self._servers.values())

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Sandbox:
        if self._state is not _State.NEW:
            raise ClientStateError("Cannot reopen a sandbox once it has been started or closed.")
        self._state = _State.OPENING
        try:
            await self._open()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close_all()
            self._state = _State.CLOSED
            raise
        self._state = _State.RUNNING
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop every fork-server (killing running jobs) and clean up. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        with anyio.CancelScope(shield=True):
            await self._close_all()

    async def _open(self) -> None:
        host = await anyio.to_thread.run_sync(host_isolation)
        level = host.level if self._isolation_arg is None else self._isolation_arg
        if level > host.level:
            why = "; ".join(host.notes) or "see detect_isolation()"
            raise SandboxError(
                f"isolation level {level.token!r} was demanded but this host only allows "
                f"{host.level.token!r}: {why}"
            )
        self._report = report_for_level(level, host)
        self._root = await anyio.to_thread.run_sync(self._make_root, level)
        servers: list[_ForkServer] = []
        for index, profile in enumerate(self._wanted):
            uid = level >= IsolationLevel.STANDARD
            block = UidBlock.acquire(self._max_concurrency) if uid else None
            server = _ForkServer(
                profile=profile,
                level=level,
                slots=self._max_concurrency,
                root=os.path.join(self._root, f"{index}-{profile}"),
                uid_block=block,
                max_disk_bytes=self._max_disk_bytes,
                max_files=self._max_files,
                confine={
                    name: self._report.features.get(name, False)
                    for name in ("landlock", "seccomp", "job_tmpfs")
                },
            )
            self._servers[profile] = server
            servers.append(server)
        failures: dict[str, str] = {}

        async def start(server: _ForkServer) -> None:
            error = await server.start()
            if error:
                failures[server.profile] = error

        async with anyio.create_task_group() as tg:
            for server in servers:
                tg.start_soon(start, server)
        for profile, error in failures.items():
            server = self._servers.pop(profile)
            await server.close()
            self._unavailable[profile] = error
            logger.info("sandbox env profile %s is not available: %s", profile, error)
        hidden = sorted({p for server in self._servers.values() for p in server.hidden})
        if hidden and level is IsolationLevel.STANDARD:
            note = (
                f"the interpreter's directories {hidden} are not readable by the sandbox uids: "
                "jobs can import only the preloaded modules (STRICT re-exposes them read-only)"
            )
            logger.warning("sandbox: %s", note)
            report = self._report
            self._report = IsolationReport(report.level, report.features, (*report.notes, note))
        if "python-core" in failures:
            raise SandboxError(
                f"the python-core env profile cannot start: {failures['python-core']}"
            )
        if not self._servers:
            raise SandboxError(f"no env profile could start: {failures}")
        ml = self._servers.get("python-ml")
        if ml is not None:
            self._accelerators = await _probe_accelerators(ml)
        first = next(iter(self._servers.values()))
        self._report = await _verify_protection(first, self._report, self._secrets, self._root)
        if not self._report.features.get("protects_node"):
            logger.warning("sandbox: %s", self._report)
        logger.debug("sandbox started: %s; profiles %s", self._report, self.profiles)

    def _make_root(self, level: IsolationLevel) -> str:
        if self._workdir_arg is None:
            _remove_stale_roots()
            root = tempfile.mkdtemp(prefix=ROOT_PREFIX)
            with open(os.path.join(root, OWNER_FILE), "w") as fh:
                fh.write(_process_identity(os.getpid()))
            os.chmod(root, 0o711)  # job uids may pass through, not list
            self._own_root = True
        else:
            root = os.path.abspath(self._workdir_arg)
            os.makedirs(root, mode=0o711, exist_ok=True)
        if level is IsolationLevel.STANDARD:
            check_traversable(root)
        return root

    async def _close_all(self) -> None:
        servers = list(self._servers.values())
        async with anyio.create_task_group() as tg:
            for server in servers:
                tg.start_soon(server.close)
        if self._root is not None and self._own_root:
            await anyio.to_thread.run_sync(shutil.rmtree, self._root, True)

    # ------------------------------------------------------------------ jobs

    async def run(
        self,
        *,
        code: str,
        args: Mapping[str, Any] | None = None,
        profile: str = "python-core",
        accelerator: str = "cpu",
        limits: SandboxLimits = DEFAULT_LIMITS,
    ) -> SandboxResult:
        """Run one job and return how it ended (never raises for a failing job).

        Waits for a free slot (``max_concurrency``). If the calling task is cancelled,
        the job is killed and cleaned up before the cancellation propagates.
        """
        if self._state is not _State.RUNNING:
            raise ClientStateError(
                "The sandbox is not running; open it with `async with Sandbox()` first."
                if self._state in (_State.NEW, _State.OPENING)
                else "Cannot run a job on a sandbox that has been closed."
            )
        server = self._servers.get(profile)
        if server is None:
            if profile in self._unavailable:
                raise SandboxError(
                    f"env profile {profile!r} is not available on this executor: "
                    f"{self._unavailable[profile]}"
                )
            raise ValueError(f"env profile {profile!r} was not started; have {self.profiles}")
        if accelerator not in ACCELERATORS:
            raise ValueError(f"unknown accelerator {accelerator!r}; expected one of {ACCELERATORS}")
        request = encode_request(code=code, args=args, accelerator=accelerator, limits=limits)
        async with self._limiter:
            return await server.submit(request, limits)


ROOT_PREFIX = "crankmesh-sandbox-"
OWNER_FILE = "owner"


def _process_identity(pid: int) -> str:
    """``pid start-time``: tells a live process from a later one that reused its pid."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            start = fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
    return f"{pid} {start}"


def _remove_stale_roots() -> None:
    """Remove default work roots left by sandboxes whose node died without closing them."""
    base = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(base) if n.startswith(ROOT_PREFIX)]
    except OSError:
        return
    for name in names:
        path = os.path.join(base, name)
        try:
            if os.lstat(path).st_uid != os.geteuid():
                continue
            with open(os.path.join(path, OWNER_FILE)) as fh:
                owner = fh.read().strip()
        except OSError:
            continue
        pid = owner.split(" ", 1)[0]
        if pid.isdigit() and _process_identity(int(pid)) != owner:
            logger.info("removing the work directory %s of a sandbox that is gone", path)
            shutil.rmtree(path, ignore_errors=True)


_ACCELERATOR_PROBE = """
import torch
mps = getattr(torch.backends, "mps", None)
result = [bool(torch.cuda.is_available()), bool(mps is not None and mps.is_available())]
"""


async def _probe_accelerators(server: _ForkServer) -> tuple[str, ...]:
    """Ask a forked python-ml job (CUDA may be initialised there, never in the server)."""
    limits = SandboxLimits(timeout_s=60)
    request = encode_request(code=_ACCELERATOR_PROBE, args=None, accelerator="cpu", limits=limits)
    result = await server.submit(request, limits, ensure=False)
    if result.status is not ExecStatus.OK or result.return_value is None:
        logger.info("sandbox accelerator probe failed: %s %s", result.status, result.detail)
        return ()
    cuda, mps = msgpack.unpackb(result.return_value)
    return (("cuda",) if cuda else ()) + (("mps",) if mps else ())


_ATTACKS = """
import os, socket
done = []
def attempt(what, fn):
    try:
        fn()
    except OSError:
        return
    done.append(what)
for path in args["files"]:
    attempt("read " + path, lambda: open(path, "rb").read(1))
for path in args["dirs"]:
    attempt("list " + path, lambda: os.listdir(path))
    probe = os.path.join(path, ".crankmesh-sandbox-probe")
    attempt("write into " + path, lambda: open(probe, "xb").close())
pid = args["pid"]
attempt("read the node's environment", lambda: open(f"/proc/{pid}/environ", "rb").read(1))
attempt("open the node's memory", lambda: open(f"/proc/{pid}/mem", "rb").close())
attempt("signal the node", lambda: os.kill(pid, 0))
attempt("connect to a TCP port", lambda: socket.create_connection(
    ("127.0.0.1", args["port"]), timeout=1).close())
try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
except (ImportError, OSError):
    libc = None
# PTRACE_SEIZE, not ATTACH: it does not stop the node when it succeeds (the tracer's exit
# detaches), where ATTACH's SIGSTOP would outlive this job
if libc is not None and libc.ptrace(0x4206, pid, 0, 0) == 0:
    done.append("ptrace the node")
result = done
"""


def _attack_targets(secrets: Sequence[str], root: str | None) -> tuple[list[str], list[str]]:
    """The node's files and directories the self-test job tries to read and write."""
    files = [p for p in secrets if os.path.isfile(p)]
    dirs = [p for p in secrets if os.path.isdir(p)]
    if root is not None:  # a node-owned 0600 file and 0700 directory, always there
        canary = os.path.join(root, "canary")
        with open(canary, "w") as fh:
            fh.write("node secret\n")
        os.chmod(canary, 0o600)
        os.makedirs(os.path.join(root, "canary-dir"), mode=0o700, exist_ok=True)
        files.append(canary)
        dirs.append(os.path.join(root, "canary-dir"))
    return files, dirs


async def _verify_protection(
    server: _ForkServer, report: IsolationReport, secrets: Sequence[str], root: str | None
) -> IsolationReport:
    """Attack the node from a real job; ``protects_node`` only if every attack failed."""
    files, dirs = await anyio.to_thread.run_sync(_attack_targets, secrets, root)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        args = {"files": files, "dirs": dirs, "pid": os.getpid(), "port": listener.getsockname()[1]}
        limits = SandboxLimits(timeout_s=20)
        request = encode_request(code=_ATTACKS, args=args, accelerator="cpu", limits=limits)
        result = await server.submit(request, limits, ensure=False)
    for path in dirs:
        with contextlib.suppress(OSError):
            await anyio.Path(path, ".crankmesh-sandbox-probe").unlink()
    if root is not None:
        with contextlib.suppress(OSError):
            await anyio.Path(root, "canary").unlink()
        with contextlib.suppress(OSError):
            await anyio.Path(root, "canary-dir").rmdir()
    features = dict(report.features)
    notes = list(report.notes)
    if result.status is not ExecStatus.OK or result.return_value is None:
        done = [f"the protection self-test did not run: {result.status.value} {result.detail}"]
    else:
        done = [str(what) for what in msgpack.unpackb(result.return_value)]
    if done:
        features["protects_node"] = False
        notes.append("unprotected node: a job could " + ", ".join(done))
    return IsolationReport(report.level, features, tuple(notes))


def encode_request(
    *, code: str, args: Mapping[str, Any] | None, accelerator: str, limits: SandboxLimits
) -> bytes:
    """The request frame for one job; :class:`ValueError` if ``args`` is not msgpack-able."""
    try:
        packed_args = msgpack.packb(dict(args or {}), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"job args must be msgpack-serializable: {exc}") from exc
    return fs.frame(
        {
            "code": code,
            "args": packed_args,
            "accelerator": accelerator,
            "limits": {
                "timeout_s": float(limits.timeout_s),
                "max_output_bytes": limits.max_output_bytes,
                "memory_mb": limits.memory_mb,
                "max_processes": limits.max_processes,
                "max_file_bytes": limits.max_file_bytes,
                "cpu_seconds": limits.effective_cpu_seconds,
                "max_disk_bytes": limits.max_disk_bytes,
                "max_files": limits.max_files,
            },
        }
    )


def _error_result(detail: str, started: float) -> SandboxResult:
    return SandboxResult(
        status=ExecStatus.SANDBOX_ERROR,
        exit_code=None,
        signal=None,
        stdout=b"",
        stderr_tail=b"",
        return_value=None,
        wall_us=int((time.monotonic() - started) * 1e6),
        cpu_us=0,
        peak_rss_kb=0,
        detail=detail,
    )


def _decode_result(body: bytes) -> SandboxResult:
    data: dict[str, Any] = msgpack.unpackb(body, raw=False)
    return SandboxResult(
        status=ExecStatus(data["status"]),
        exit_code=data["exit_code"],
        signal=data["signal"],
        stdout=data["stdout"],
        stderr_tail=data["stderr_tail"],
        return_value=data["return_value"],
        wall_us=int(data["wall_us"]),
        cpu_us=int(data["cpu_us"]),
        peak_rss_kb=int(data["peak_rss_kb"]),
        detail=str(data["detail"]),
    )


# ---------------------------------------------------------------------- socket helpers


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await anyio.wait_writable(sock)
            continue
        view = view[sent:]


async def _recv_frame(sock: socket.socket, max_size: int) -> bytes:
    """Read one frame body; :class:`EOFError` if the peer closed first."""
    buf = bytearray()
    need = 4
    size = -1
    while True:
        try:
            chunk = sock.recv(max(need - len(buf), 1 << 16))
        except BlockingIOError:
            await anyio.wait_readable(sock)
            continue
        if not chunk:
            raise EOFError("the fork-server closed the connection")
        buf += chunk
        if size < 0 and len(buf) >= 4:
            size = int.from_bytes(buf[:4], "big")
            if size > max_size:
                raise EOFError(f"the fork-server sent a {size}-byte frame (limit {max_size})")
            need = 4 + size
        if size >= 0 and len(buf) >= need:
            return bytes(buf[4:need])


# ---------------------------------------------------------------------- one fork-server


class _ForkServer:
    """One warm fork-server process for one env profile, restarted when it dies."""

    def __init__(
        self,
        *,
        profile: str,
        level: IsolationLevel,
        slots: int,
        root: str,
        uid_block: UidBlock | None,
        confine: Mapping[str, bool] | None = None,
        max_disk_bytes: int = DEFAULT_LIMITS.max_disk_bytes,
        max_files: int = DEFAULT_LIMITS.max_files,
    ) -> None:
        self.max_disk_bytes = max_disk_bytes
        self.max_files = max_files
        #: which of ``landlock`` / ``seccomp`` each job applies to itself, and ``job_tmpfs``
        self.confine = dict(confine or {})
        self.profile = profile
        self.level = level
        self.slots = slots
        self.root = root
        self.uid_block = uid_block
        self.restarts = 0
        self.generation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctl: socket.socket | None = None
        self.errfile: Any = None
        self.closed = False
        #: interpreter directories other uids cannot read (reported by the fork-server)
        self.hidden: tuple[str, ...] = ()
        self._start_lock = anyio.Lock()
        self._send_lock = anyio.Lock()

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"_ForkServer(profile={self.profile!r}, pid={pid}, generation={self.generation})"

    # -- lifecycle
    def _workdir(self) -> str:
        return os.path.join(self.root, f"gen{self.generation}")

    def _spawn(self) -> None:
        """Start the process (sync: must run on the event-loop thread, see pdeathsig)."""
        self.generation += 1
        workdir = self._workdir()
        os.makedirs(workdir, mode=0o711, exist_ok=True)
        os.chmod(self.root, 0o711)
        os.chmod(workdir, 0o711)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfg = fs.ServerConfig(
            profile=self.profile,
            level=int(self.level),
            slots=self.slots,
            workdir=workdir,
            uid_base=self.uid_block.base if self.uid_block else None,
            node_pid=os.getpid(),
            ctl_fd=theirs.fileno(),
            landlock=self.confine.get("landlock", False),
            seccomp=self.confine.get("seccomp", False),
            job_tmpfs=self.confine.get("job_tmpfs", False),
            disk_quota_bytes=self.max_disk_bytes,
            disk_quota_files=self.max_files,
        )
        self.errfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _reap
        try:
            self.proc = subprocess.Popen(
                forkserver_command(cfg.to_json()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.errfile,
                env=dict(fs.BASE_ENV),
                cwd="/",
                close_fds=True,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.ctl = ours

    async def start(self) -> str:
        """Start (or restart) the process and wait until it is ready; return an error or ''."""
        started = time.monotonic()
        try:
            self._spawn()
        except OSError as exc:
            return f"cannot start the fork-server: {exc}"
        assert self.ctl is not None
        timeout = STARTUP_TIMEOUT_S.get(self.profile, 60.0)
        with anyio.move_on_after(timeout):
            try:
                ready: dict[str, Any] = msgpack.unpackb(
                    await _recv_frame(self.ctl, 1 << 20), raw=False
                )
            except (EOFError, OSError, ValueError) as exc:
                await self._reap(kill=True)
                return f"the fork-server died while starting ({exc}){self._stderr_tail()}"
            if not ready.get("ok"):
                await self._reap(kill=True)
                return str(ready.get("error") or "the fork-server refused to start")
            self.hidden = tuple(str(p) for p in ready.get("hidden") or ())
            # one trivial job through the real path: proves the isolation actually works
            warm = await self.submit(
                encode_request(code="pass", args=None, accelerator="cpu", limits=DEFAULT_LIMITS),
                DEFAULT_LIMITS,
                ensure=False,
            )
            if warm.status is not ExecStatus.OK:
                await self._reap(kill=True)
                return f"the sandbox self-test failed: {warm.status.value}: {warm.detail}"
            logger.debug(
                "fork-server %s ready in %.0f ms (%s)",
                self,
                (time.monotonic() - started) * 1e3,
                ready.get("versions"),
            )
            return ""
        await self._reap(kill=True)
        return f"the fork-server did not get ready within {timeout:g} s{self._stderr_tail()}"

    def _stderr_tail(self) -> str:
        if self.errfile is None:
            return ""
        try:
            self.errfile.seek(0, os.SEEK_END)
            size = self.errfile.tell()
            self.errfile.seek(max(size - 2000, 0))
            text: str = self.errfile.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return f": {text}" if text else ""

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def _ensure_running(self) -> None:
        if self._alive():
            return
        async with self._start_lock:
            if self._alive():
                return
            if self.closed:
                raise ClientStateError("Cannot run a job on a sandbox that has been closed.")
            old = self._workdir()
            await self._reap(kill=True)
            self.restarts += 1
            logger.warning(
                "sandbox fork-server for %s died; restarting it (restart %d)",
                self.profile,
                self.restarts,
            )
            error = await self.start()
            await anyio.to_thread.run_sync(shutil.rmtree, old, True)
            if error:
                raise SandboxError(f"cannot restart the {self.profile} fork-server: {error}")

    async def _reap(self, *, kill: bool, grace: float = 0.0) -> None:
        """Wait for the process to end (killing it after ``grace`` if ``kill``)."""
        proc, ctl = self.proc, self.ctl
        self.ctl = None
        if ctl is not None:
            ctl.close()
        if proc is not None and proc.poll() is None:
            if grace > 0:
                await _wait_exit(proc, grace)
            if proc.poll() is None and kill:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGKILL)
            await _wait_exit(proc, 10.0)
        if self.errfile is not None:
            self.errfile.close()
            self.errfile = None

    async def close(self) -> None:
        """Stop the process (it kills its jobs), remove our work directory. Idempotent."""
        if self.closed:
            return
        self.closed = True
        async with self._start_lock:
            await self._reap(kill=True, grace=CLOSE_GRACE_S)
        await anyio.to_thread.run_sync(shutil.rmtree, self.root, True)
        if self.uid_block is not None:
            self.uid_block.release()

    def _kill_hung(self, generation: int) -> None:
        if generation == self.generation and self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGKILL)

    # -- jobs
    async def submit(
        self, request: bytes, limits: SandboxLimits, *, ensure: bool = True
    ) -> SandboxResult:
        started = time.monotonic()
        if ensure:
            await self._ensure_running()
        generation, ctl = self.generation, self.ctl
        if ctl is None:
            return _error_result(f"the {self.profile} fork-server is not running", started)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        max_size = 2 * limits.max_output_bytes + (16 << 20)
        request_sent = False
        with ours:
            try:
                try:
                    async with self._send_lock:
                        await _send_fd(ctl, theirs.fileno())
                finally:
                    theirs.close()
                ours.setblocking(False)
                await _send_all(ours, request)
                request_sent = True
                with anyio.move_on_after(limits.timeout_s + HANG_GRACE_S) as scope:
                    body = await _recv_frame(ours, max_size)
                if scope.cancelled_caught:
                    self._kill_hung(generation)
                    return _error_result(
                        f"the {self.profile} fork-server did not answer within "
                        f"{limits.timeout_s + HANG_GRACE_S:g} s; it was killed",
                        started,
                    )
            except anyio.get_cancelled_exc_class():
                if request_sent:
                    await self._cancel(ours, generation, max_size)
                raise
            except (EOFError, OSError) as exc:
                return await self._died(generation, exc, started)
        try:
            return _decode_result(body)
        except (ValueError, KeyError, TypeError) as exc:
            return _error_result(f"undecodable result from the fork-server: {exc}", started)

    async def _cancel(self, sock: socket.socket, generation: int, max_size: int) -> None:
        """Ask the fork-server to kill a job and wait (shielded) until it confirms."""
        with anyio.move_on_after(CANCEL_GRACE_S, shield=True) as scope:
            try:
                await _send_all(sock, b"C")
                await _recv_frame(sock, max_size)
            except (EOFError, OSError):
                pass
        if scope.cancelled_caught:
            logger.warning("%s did not confirm a cancelled job; killing it", self)
            self._kill_hung(generation)

    async def _died(self, generation: int, exc: BaseException, started: float) -> SandboxResult:
        proc = self.proc
        if proc is not None and generation == self.generation:
            with anyio.CancelScope(shield=True):
                await _wait_exit(proc, 1.0)
        code = proc.poll() if proc is not None else None
        if code is None:
            how = f"closed the job's connection ({exc})"
        elif code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        if code is not None:
            logger.warning("%s %s%s", self, how, self._stderr_tail())
        return _error_result(f"the {self.profile} fork-server {how}; the job was aborted", started)


async def _send_fd(ctl: socket.socket, fd: int) -> None:
    while True:
        try:
            socket.send_fds(ctl, [b"J"], [fd])
            return
        except BlockingIOError:
            await anyio.wait_writable(ctl)


async def _wait_exit(proc: subprocess.Popen[bytes], within: float) -> None:
    """Wait up to ``within`` seconds for ``proc`` to exit, without blocking the event loop."""
    if proc.poll() is not None:
        return
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        return
    try:
        with anyio.move_on_after(within):
            await anyio.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    proc.poll()
