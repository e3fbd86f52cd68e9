"""The python.run sandbox: every hostile job ends with a clear status, the node unharmed.

These tests spawn real fork-servers and jobs (no NATS). The test process stands in for the
node. Cases that need root / namespaces skip with a reason when the host does not allow
them (``detect_isolation``); as root on Linux they all run.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest

import crankmesh.executor.sandbox as sandbox_pkg
from crankmesh._loop import backend_options
from crankmesh.executor.sandbox import (
    ExecStatus,
    IsolationLevel,
    IsolationReport,
    Sandbox,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    detect_isolation,
)
from crankmesh.protocol.errors import ClientStateError

HOST = detect_isolation()
needs_uid = pytest.mark.skipif(
    not HOST.features.get("separate_uid"), reason=f"no per-job uid here: {HOST.notes}"
)
needs_netns = pytest.mark.skipif(
    not HOST.features.get("netns"), reason=f"no network namespace here: {HOST.notes}"
)
needs_strict = pytest.mark.skipif(
    HOST.level < IsolationLevel.STRICT, reason=f"STRICT isolation unavailable: {HOST.notes}"
)
needs_standard = pytest.mark.skipif(
    HOST.level < IsolationLevel.STANDARD, reason=f"STANDARD isolation unavailable: {HOST.notes}"
)

LEVELS_WITH_CLEANUP = [
    pytest.param(IsolationLevel.STRICT, marks=needs_strict, id="strict"),
    pytest.param(IsolationLevel.STANDARD, marks=needs_standard, id="standard"),
    pytest.param(IsolationLevel.BASIC, id="basic"),
]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", backend_options())


@pytest.fixture(scope="module")
def workdir_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sandbox-work")


@pytest.fixture(scope="module")
async def sandbox(workdir_root: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(max_concurrency=4, workdir_root=str(workdir_root)) as sb:
        yield sb


def _status_uid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def processes_of_uid(uid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _status_uid(p) == uid]


def processes_with_arg(marker: str) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            continue
        if marker.encode() in args:
            found.append(int(p))
    return found


def make_stale_root() -> Path:
    """A default work root whose owner file names a process that cannot exist."""
    stale = Path(tempfile.mkdtemp(prefix="crankmesh-sandbox-"))
    (stale / "owner").write_text("999999999 1")
    (stale / "leftover").write_text("x")
    return stale


def is_dir(path: Path) -> bool:
    return path.is_dir()


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def fork_server_pids() -> list[int]:
    me = str(os.getpid())
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as fh:
                ppid = fh.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{p}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if ppid == me and b"_forkserver" in cmdline:
            pids.append(int(p))
    return pids


async def wait_gone(probe: Any, *args: Any, within: float = 3.0) -> list[int]:
    """Poll ``probe(*args)`` until it returns nothing (or ``within`` seconds pass)."""
    deadline = time.monotonic() + within
    left = probe(*args)
    while left and time.monotonic() < deadline:
        await anyio.sleep(0.05)
        left = probe(*args)
    return list(left)


async def wait_present(probe: Any, *args: Any, within: float = 5.0) -> list[int]:
    """Poll ``probe(*args)`` until it returns something (or ``within`` seconds pass)."""
    deadline = time.monotonic() + within
    found = probe(*args)
    while not found and time.monotonic() < deadline:
        await anyio.sleep(0.05)
        found = probe(*args)
    return list(found)


def unique_marker() -> str:
    # an argument for `sleep` that no other process on the host will have
    return f"{600 + random.randrange(10**6) / 10**7:.7f}"


SPAWN_DAEMON = """
import os, time
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", args["marker"]])
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(0.3)
print(os.getuid(), flush=True)
"""


# --------------------------------------------------------------------------- API


def test_public_api_is_explicit_and_sorted() -> None:
    assert sandbox_pkg.__all__ == sorted(sandbox_pkg.__all__)
    for name in sandbox_pkg.__all__:
        assert hasattr(sandbox_pkg, name), name


def test_isolation_level_tokens_round_trip() -> None:
    for level in IsolationLevel:
        assert IsolationLevel.from_token(level.token) is level
    assert IsolationLevel.STRICT.token == "strict"
    assert IsolationLevel.STRICT > IsolationLevel.STANDARD > IsolationLevel.BASIC
    with pytest.raises(ValueError, match="unknown isolation level"):
        IsolationLevel.from_token("paranoid")


def test_limits_validate_and_default_cpu_seconds() -> None:
    assert SandboxLimits(timeout_s=2.5).effective_cpu_seconds == 4
    assert SandboxLimits(cpu_seconds=7).effective_cpu_seconds == 7
    with pytest.raises(ValueError):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError):
        SandboxLimits(memory_mb=0)
    with pytest.raises(ValueError):
        SandboxLimits(max_processes=0)


def test_detect_isolation_is_honest() -> None:
    report = detect_isolation()
    assert isinstance(report, IsolationReport)
    for name in ("rlimits", "separate_uid", "netns", "pidns", "pidns_or_uid_kill", "no_new_privs"):
        assert name in report.features
    missing = [name for name, ok in report.features.items() if not ok]
    assert len(report.notes) >= len([m for m in missing if m not in ("uid_kill",)]) - 1
    if os.geteuid() == 0 and report.features["netns"] and report.features["mount_ns"]:
        assert report.level is IsolationLevel.STRICT
    if os.geteuid() != 0:
        assert not report.features["separate_uid"]


@pytest.mark.anyio
async def test_demanding_an_unavailable_level_fails_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crankmesh.executor.sandbox import _sandbox

    weak = IsolationReport(IsolationLevel.BASIC, {"rlimits": True}, ("netns: not allowed",))
    monkeypatch.setattr(_sandbox, "host_isolation", lambda: weak)
    with pytest.raises(SandboxError, match="only allows 'basic'"):
        async with Sandbox(isolation=IsolationLevel.STRICT):
            pass


@pytest.mark.anyio
async def test_sandbox_lifecycle_misuse_is_reported(workdir_root: Path) -> None:
    sb = Sandbox(workdir_root=str(workdir_root / "lifecycle"))
    with pytest.raises(ClientStateError):
        await sb.run(code="pass")
    async with sb:
        assert sb.profiles == ("python-core",)
        assert sb.accelerators == ()
        with pytest.raises(ValueError, match="accelerator"):
            await sb.run(code="pass", accelerator="tpu")
        with pytest.raises(ValueError, match="msgpack"):
            await sb.run(code="pass", args={"x": object()})
    with pytest.raises(ClientStateError, match="closed"):
        await sb.run(code="pass")
    await sb.aclose()  # idempotent
    with pytest.raises(ClientStateError, match="reopen"):
        async with sb:
            pass
    with pytest.raises(ValueError, match="unknown env profiles"):
        Sandbox(profiles=("python-gpu",))


# --------------------------------------------------------------------------- the contract


@pytest.mark.anyio
async def test_work_root_of_a_dead_node_is_removed() -> None:
    stale = make_stale_root()
    async with Sandbox(max_concurrency=1) as sb:
        assert files_under(stale) == [] and not is_dir(stale)
        assert sb.profiles == ("python-core",)


@pytest.mark.anyio
async def test_print_42(sandbox: Sandbox) -> None:
    result = await sandbox.run(code="print(42)")
    assert result.status is ExecStatus.OK, result
    assert result.stdout == b"42\n"
    assert result.exit_code == 0 and result.signal is None
    assert result.return_value is None
    assert result.wall_us > 0 and result.cpu_us >= 0 and result.peak_rss_kb > 0
    assert result.detail == ""


@pytest.mark.anyio
async def test_result_global_is_returned_as_msgpack(sandbox: Sandbox) -> None:
    result = await sandbox.run(code='result = {"x": args["a"] + 1}', args={"a": 41})
    assert result.status is ExecStatus.OK, result
    assert result.return_value is not None
    assert msgpack.unpackb(result.return_value) == {"x": 42}


@pytest.mark.anyio
async def test_job_globals_and_environment(sandbox: Sandbox) -> None:
    code = (
        "import os, sys\n"
        "print(__name__, device, sorted(os.environ))\n"
        "print(os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR'], os.listdir('.'))\n"
        "print(sorted(os.listdir('/proc/self/fd')))\n"
    )
    result = await sandbox.run(code=code)
    assert result.status is ExecStatus.OK, result
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("__main__ cpu ")
    env = eval(lines[0].split(" ", 2)[2])
    assert set(env) <= {
        "PATH", "HOME", "TMPDIR", "LANG", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE",
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_ARENA_MAX",
    }  # fmt: skip
    assert lines[1] == "True []"
    # 0, 1, 2, the fd listing /proc/self/fd itself, and the runner's own result pipe
    assert len(eval(lines[2])) <= 5, lines[2]


@pytest.mark.anyio
async def test_uncaught_exception_is_error_with_traceback(sandbox: Sandbox) -> None:
    result = await sandbox.run(code="x = 1\n1 / 0\n")
    assert result.status is ExecStatus.ERROR, result
    assert result.exit_code == 1
    assert b"ZeroDivisionError" in result.stderr_tail
    assert b'File "<job>", line 2' in result.stderr_tail
    assert b"1 / 0" in result.stderr_tail
    assert "ZeroDivisionError" in result.detail


@pytest.mark.anyio
async def test_system_exit_is_honoured(sandbox: Sandbox) -> None:
    ok = await sandbox.run(code="import sys\nresult = 5\nsys.exit(0)")
    assert ok.status is ExecStatus.OK and msgpack.unpackb(ok.return_value or b"") == 5
    three = await sandbox.run(code="import sys\nsys.exit(3)")
    assert three.status is ExecStatus.ERROR and three.exit_code == 3
    assert three.detail == "exit code 3"
    text = await sandbox.run(code="raise SystemExit('bye')")
    assert text.status is ExecStatus.ERROR and text.exit_code == 1
    assert b"bye" in text.stderr_tail


@pytest.mark.anyio
async def test_unserializable_result_is_an_error(sandbox: Sandbox) -> None:
    result = await sandbox.run(code="result = object()")
    assert result.status is ExecStatus.ERROR, result
    assert "msgpack" in result.detail and result.return_value is None


@pytest.mark.anyio
async def test_syntax_error_is_an_error(sandbox: Sandbox) -> None:
    result = await sandbox.run(code="def (:")
    assert result.status is ExecStatus.ERROR, result
    assert b"SyntaxError" in result.stderr_tail


@pytest.mark.anyio
async def test_stdlib_modules_that_are_not_preloaded_import(sandbox: Sandbox) -> None:
    code = "import xml.dom.minidom, encodings.idna, sqlite3\nprint('imported')"
    result = await sandbox.run(code=code)
    if sandbox.isolation.level is IsolationLevel.STANDARD and sandbox.isolation.notes:
        pytest.skip("the interpreter is not readable by the sandbox uids at STANDARD")
    assert result.status is ExecStatus.OK, result
    assert result.stdout == b"imported\n"


@pytest.mark.anyio
async def test_accelerator_cpu_on_core_profile(sandbox: Sandbox) -> None:
    result = await sandbox.run(code="print(device)", accelerator="cpu")
    assert result.stdout == b"cpu\n"


# --------------------------------------------------------------------------- limits


@pytest.mark.anyio
async def test_infinite_loop_times_out_quickly(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = await sandbox.run(code="while True:\n    pass", limits=SandboxLimits(timeout_s=0.5))
    elapsed = time.monotonic() - started
    assert result.status is ExecStatus.TIMEOUT, result
    assert "0.5 s timeout" in result.detail
    assert elapsed < 2.5
    assert result.wall_us >= 500_000


@pytest.mark.anyio
async def test_output_beyond_the_cap_is_cut_and_killed(sandbox: Sandbox) -> None:
    code = "import sys\nchunk = 'x' * 65536\nfor _ in range(1600):\n    sys.stdout.write(chunk)\n"
    cap = 1 << 20
    result = await sandbox.run(code=code, limits=SandboxLimits(max_output_bytes=cap))
    assert result.status is ExecStatus.OUTPUT_LIMIT, result
    assert len(result.stdout) == cap
    assert result.stdout == b"x" * cap
    assert f"{cap} bytes" in result.detail


@pytest.mark.anyio
async def test_output_exactly_at_the_cap_is_fine(sandbox: Sandbox) -> None:
    code = "import sys\nsys.stdout.write('y' * 1000)"
    result = await sandbox.run(code=code, limits=SandboxLimits(max_output_bytes=1000))
    assert result.status is ExecStatus.OK and result.stdout == b"y" * 1000


@pytest.mark.anyio
async def test_memory_limit(sandbox: Sandbox) -> None:
    code = "x = bytearray(8 << 30)\nprint('allocated')"
    result = await sandbox.run(code=code, limits=SandboxLimits(memory_mb=256))
    assert result.status is ExecStatus.MEMORY_LIMIT, result
    assert "256 MiB" in result.detail
    assert b"allocated" not in result.stdout


@pytest.mark.anyio
async def test_file_size_limit_and_file_removed(sandbox: Sandbox, workdir_root: Path) -> None:
    code = (
        "chunk = b'z' * (1 << 20)\n"
        "with open('big.bin', 'wb') as fh:\n"
        "    for _ in range(2048):\n"
        "        fh.write(chunk)\n"
    )
    result = await sandbox.run(code=code, limits=SandboxLimits(max_file_bytes=16 << 20))
    assert result.status in (ExecStatus.ERROR, ExecStatus.KILLED), result
    assert "file size limit" in result.detail
    assert files_under(workdir_root) == []


@pytest.mark.anyio
async def test_cpu_time_limit(sandbox: Sandbox) -> None:
    limits = SandboxLimits(timeout_s=8, cpu_seconds=1)
    started = time.monotonic()
    result = await sandbox.run(code="while True:\n    pass", limits=limits)
    assert result.status is ExecStatus.KILLED, result
    assert "cpu time limit" in result.detail
    assert time.monotonic() - started < 6


@needs_uid
@pytest.mark.anyio
@pytest.mark.parametrize("level", LEVELS_WITH_CLEANUP[:2])
async def test_fork_bomb_is_contained(level: IsolationLevel) -> None:
    code = (
        "import os, sys\n"
        "if os.getuid() == 0:\n"
        "    sys.exit('refusing to fork-bomb as root')\n"
        "print(os.getuid(), flush=True)\n"
        "for _ in range(200000):\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    limits = SandboxLimits(timeout_s=1.5, max_processes=16)
    async with Sandbox(isolation=level) as sb:
        result = await sb.run(code=code, limits=limits)
        assert result.status in (ExecStatus.TIMEOUT, ExecStatus.KILLED, ExecStatus.ERROR), result
        uid = int(result.stdout.split()[0])
        assert uid >= 61000
        assert processes_of_uid(uid) == []
        after = await sb.run(code="print(42)")
        assert after.status is ExecStatus.OK and after.stdout == b"42\n"


# --------------------------------------------------------------------------- isolation


@needs_netns
@pytest.mark.anyio
async def test_no_network_inside_the_job(sandbox: Sandbox) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # it does listen
        code = (
            "import socket\n"
            "try:\n"
            "    socket.create_connection(('127.0.0.1', args['port']), timeout=2)\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('blocked', type(exc).__name__)\n"
            "try:\n"
            "    print(sorted(name for _, name in socket.if_nameindex()))\n"
            "except OSError as exc:\n"  # netlink sockets are denied by the seccomp filter
            "    print('no netlink', type(exc).__name__)\n"
        )
        result = await sandbox.run(code=code, args={"port": port})
    assert result.status is ExecStatus.OK, result
    assert result.stdout.startswith(b"blocked"), result.stdout
    assert b"connected" not in result.stdout


@pytest.fixture
def node_key() -> Iterator[Path]:
    """A 0600 root-owned file standing in for the node's key, in a world-searchable dir."""
    base = next(d for d in ("/run", "/var/lib", "/var/tmp") if os.path.isdir(d))
    folder = Path(tempfile.mkdtemp(prefix="crankmesh-keytest-", dir=base))
    folder.chmod(0o755)
    key = folder / "node.key"
    key.write_bytes(b"ed25519-secret-seed")
    key.chmod(0o600)
    try:
        yield key
    finally:
        key.unlink()
        folder.rmdir()


@needs_uid
@pytest.mark.anyio
async def test_job_cannot_read_the_node_key(sandbox: Sandbox, node_key: Path) -> None:
    code = (
        "import os\n"
        "print(os.getuid(), os.getgid(), os.getgroups())\n"
        "try:\n"
        "    print(open(args['path'], 'rb').read())\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    result = await sandbox.run(code=code, args={"path": str(node_key)})
    assert result.status is ExecStatus.OK, result
    first, second = result.stdout.decode().splitlines()
    uid, gid, groups = first.split(" ", 2)
    assert int(uid) >= 61000 and int(gid) >= 61000 and groups == "[]"
    assert second == "PermissionError"
    assert b"secret-seed" not in result.stdout


@pytest.mark.anyio
async def test_node_environment_is_not_visible(
    monkeypatch: pytest.MonkeyPatch, workdir_root: Path
) -> None:
    monkeypatch.setenv("CRANKMESH_TEST_SECRET", "s3cr3t-value-4711")
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "try:\n"
        "    print(open(f\"/proc/{args['pid']}/environ\", 'rb').read())\n"
        "except OSError as exc:\n"
        "    print('unreadable', type(exc).__name__)\n"
    )
    async with Sandbox(workdir_root=str(workdir_root / "env")) as sb:
        result = await sb.run(code=code, args={"pid": os.getpid()})
    assert result.status is ExecStatus.OK, result
    assert b"s3cr3t-value-4711" not in result.stdout + result.stderr_tail
    if sb.isolation.level >= IsolationLevel.STANDARD:
        assert b"unreadable" in result.stdout


@pytest.mark.anyio
async def test_job_cannot_signal_the_node(sandbox: Sandbox) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        code = (
            "import os, signal\n"
            "try:\n"
            "    os.kill(args['pid'], signal.SIGTERM)\n"
            "    print('sent')\n"
            "except OSError as exc:\n"
            "    print(type(exc).__name__)\n"
        )
        result = await sandbox.run(code=code, args={"pid": os.getpid()})
        await anyio.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.status is ExecStatus.OK, result
    if sandbox.isolation.level >= IsolationLevel.STANDARD:
        assert result.stdout.strip() in (b"PermissionError", b"ProcessLookupError")
        assert received == []


@needs_strict
@pytest.mark.anyio
async def test_strict_job_sees_only_its_own_world(sandbox: Sandbox) -> None:
    code = (
        "import os, socket\n"
        "print(os.getpid(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
        "print(sorted(os.listdir('/tmp')), socket.gethostname())\n"
        "open('/tmp/left-behind', 'w').write('x')\n"
    )
    first = await sandbox.run(code=code)
    assert first.status is ExecStatus.OK, first
    pid_line, tmp_line = first.stdout.decode().splitlines()
    assert pid_line == "1 [1]"
    assert tmp_line == "['job'] crankmesh-job"
    second = await sandbox.run(code="import os\nprint(os.listdir('/tmp'))")
    assert second.stdout == b"['job']\n"  # the first job's /tmp file did not survive


@pytest.mark.anyio
@pytest.mark.parametrize("level", LEVELS_WITH_CLEANUP)
async def test_daemonized_process_does_not_outlive_the_job(level: IsolationLevel) -> None:
    marker = unique_marker()
    async with Sandbox(isolation=level) as sb:
        result = await sb.run(code=SPAWN_DAEMON, args={"marker": marker})
        assert result.status is ExecStatus.OK, result
        assert processes_with_arg(marker) == []
        if level >= IsolationLevel.STANDARD:
            assert processes_of_uid(int(result.stdout)) == []


# --------------------------------------------------------------------------- robustness


@pytest.mark.anyio
async def test_fork_server_killed_mid_job(workdir_root: Path) -> None:
    marker = unique_marker()
    code = SPAWN_DAEMON + "time.sleep(30)\n"
    others = set(fork_server_pids())
    async with Sandbox(max_concurrency=1, workdir_root=str(workdir_root / "killed")) as sb:
        results: list[SandboxResult] = []

        async def victim() -> None:
            results.append(await sb.run(code=code, args={"marker": marker}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(victim)
            assert await wait_present(processes_with_arg, marker)
            (server,) = set(fork_server_pids()) - others
            os.kill(server, signal.SIGKILL)
        (result,) = results
        assert result.status is ExecStatus.SANDBOX_ERROR, result
        assert "fork-server" in result.detail
        assert await wait_gone(processes_with_arg, marker) == []
        again = await sb.run(code="print(42)")
        assert again.status is ExecStatus.OK and again.stdout == b"42\n"
        assert sb.restarts == 1
        assert server not in fork_server_pids()


@pytest.mark.anyio
async def test_concurrent_runs_respect_max_concurrency(workdir_root: Path) -> None:
    code = "import time\ntime.sleep(0.2)\nprint(args['i'])"
    async with Sandbox(max_concurrency=2, workdir_root=str(workdir_root / "conc")) as sb:
        results: dict[int, SandboxResult] = {}

        async def one(i: int) -> None:
            results[i] = await sb.run(code=code, args={"i": i})

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        elapsed = time.monotonic() - started
    assert sorted(results) == list(range(8))
    for i, result in results.items():
        assert result.status is ExecStatus.OK, result
        assert result.stdout == f"{i}\n".encode()
    assert elapsed >= 0.75  # 8 jobs of 0.2 s, two at a time


@pytest.mark.anyio
async def test_cancelled_run_leaves_nothing_behind(sandbox: Sandbox) -> None:
    marker = unique_marker()
    code = SPAWN_DAEMON + "time.sleep(30)\n"
    with anyio.move_on_after(1.0) as scope:
        await sandbox.run(code=code, args={"marker": marker})
    assert scope.cancelled_caught
    assert processes_with_arg(marker) == []
    after = await sandbox.run(code="print(42)")
    assert after.status is ExecStatus.OK


@pytest.mark.anyio
async def test_many_jobs_in_a_row_stay_fast_and_clean(sandbox: Sandbox) -> None:
    started = time.monotonic()
    for i in range(50):
        result = await sandbox.run(code="print(args['i'])", args={"i": i})
        assert result.status is ExecStatus.OK and result.stdout == f"{i}\n".encode()
    assert time.monotonic() - started < 10  # generous: a shared 2-core machine


# --------------------------------------------------------------------------- disk quota

_FILL = (
    "import os, time\n"
    "written = 0\n"
    "try:\n"
    "    for i in range(64):\n"  # 64 files of 1 MiB, each under the file size limit
    "        with open(f'f{i}', 'wb') as f:\n"
    "            f.write(b'x' * (1 << 20))\n"
    "        written += 1\n"
    "        time.sleep(0.02)\n"
    "except OSError as e:\n"
    "    print('stopped', e.errno, flush=True)\n"
    "print('written', written, flush=True)\n"
)
needs_job_tmpfs = pytest.mark.skipif(
    not HOST.features.get("job_tmpfs"), reason=f"no job tmpfs below STRICT here: {HOST.notes}"
)


@pytest.mark.anyio
@needs_job_tmpfs
@pytest.mark.parametrize(
    "level",
    [
        pytest.param(IsolationLevel.STANDARD, marks=needs_standard, id="standard"),
        pytest.param(IsolationLevel.BASIC, id="basic"),
    ],
)
async def test_below_strict_the_job_directory_is_a_tmpfs_of_its_quota(
    level: IsolationLevel,
) -> None:
    async with Sandbox(isolation=level, max_concurrency=1, max_disk_bytes=8 << 20) as sb:
        assert sb.isolation.features["kernel_disk_quota"], sb.isolation
        limits = SandboxLimits(timeout_s=20, max_disk_bytes=8 << 20)
        result = await sb.run(code=_FILL, limits=limits)
        # the kernel refuses the write past the quota (ENOSPC): the job goes on and ends ok
        assert result.status is ExecStatus.OK, result
        assert b"stopped 28" in result.stdout, result.stdout
        written = int(result.stdout.split()[-1])
        assert 4 <= written <= 8, result.stdout
        # the job's view is unchanged: its directory (cwd = HOME) is its own
        probe = (
            "import os\n"
            "result = [os.getcwd() == os.environ['HOME'], os.stat('.').st_uid == os.getuid()]"
        )
        again = await sb.run(code=probe)
        assert msgpack.unpackb(again.return_value) == [True, True], again
        # a job's own, lower quota: still the fork-server's check, at the end of a short job too
        quick = (
            "for i in range(2):\n"
            "    with open(f'f{i}', 'wb') as f:\n"
            "        f.write(b'x' * (3 << 19))\n"
        )
        over = await sb.run(code=quick, limits=SandboxLimits(max_disk_bytes=2 << 20))
        assert over.status is ExecStatus.KILLED, over
        assert f"disk quota of {2 << 20} bytes exceeded" in over.detail, over


@pytest.mark.anyio
async def test_without_a_job_tmpfs_the_quota_is_the_fork_servers_check(
    monkeypatch: pytest.MonkeyPatch, workdir_root: Path
) -> None:
    """A host without (unprivileged) mount namespaces: the check every 100 ms kills."""
    from crankmesh.executor.sandbox import _sandbox

    features = {**HOST.features, "job_tmpfs": False}
    no_tmpfs = IsolationReport(HOST.level, features, HOST.notes)
    monkeypatch.setattr(_sandbox, "host_isolation", lambda: no_tmpfs)
    async with Sandbox(
        isolation=IsolationLevel.BASIC,
        max_concurrency=1,
        workdir_root=str(workdir_root),
        max_disk_bytes=8 << 20,
    ) as sb:
        assert not sb.isolation.features["kernel_disk_quota"], sb.isolation
        limits = SandboxLimits(timeout_s=20, max_disk_bytes=8 << 20)
        result = await sb.run(code=_FILL, limits=limits)
        assert result.status is ExecStatus.KILLED, result
        assert f"disk quota of {8 << 20} bytes exceeded" in result.detail, result
        assert b"stopped" not in result.stdout, result.stdout
    assert files_under(workdir_root) == []
