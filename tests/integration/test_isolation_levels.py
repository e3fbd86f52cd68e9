"""The red team's attacks from a ``python.run`` job, on real nodes over a real nats-server,
at both isolation levels a node reaches: ``strict`` (a root node: per-job uid +
namespaces + Landlock + seccomp) and ``basic`` (a node started as the unprivileged uid
``nobody``: Landlock + seccomp + a non-dumpable node). At each, the job cannot read the
node's key, environment or memory, ptrace or signal it, reach NATS or any network, write
outside its directory, or exceed its limits on memory, CPU, time, output or disk.

A node whose sandbox cannot protect it serves ``python.run`` only to its allow-list."""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import crankmesh
from crankmesh.executor.caps import ExecutorCaps
from crankmesh.executor.sandbox import IsolationLevel, IsolationReport, detect_isolation
from crankmesh.executor.sandbox import _sandbox as sandbox_module
from crankmesh.keystore import save_identity
from crankmesh.originator import Client, Job
from crankmesh.protocol.errors import CrankmeshError
from crankmesh.protocol.identity import Identity

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.slow]

NOBODY = 65534
ENV_SECRET = "ENV-SECRET-7f3a9c"
WORKTREE = str(Path(crankmesh.__file__).resolve().parent.parent)
HOST = detect_isolation()


def _unprivileged_python() -> tuple[str, str] | None:
    """An interpreter of our minor version that uid ``nobody`` can run, and the
    ``PYTHONPATH`` that gives it this checkout and our site-packages (None: no such)."""
    if os.geteuid() != 0:
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    path = os.pathsep.join([WORKTREE, *site.getsitepackages()])
    seen: set[str] = set()
    for exe in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if exe in seen or not os.access(exe, os.X_OK):
            continue
        seen.add(exe)
        probe = subprocess.run(
            [exe, "-c", "import crankmesh.cli, nacl, nats, msgpack, pydantic"],
            env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"},
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            timeout=60,
            check=False,
        )
        if probe.returncode == 0:
            return exe, path
    return None


UNPRIVILEGED = _unprivileged_python()


@dataclass
class Target:
    """A running node under attack."""

    level: str
    pid: int
    key_path: Path
    key_secret: str
    state_dir: Path
    outside_dir: Path  # a world-writable host directory outside the job's
    client: Client
    proc: subprocess.Popen[str] | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None if self.proc is not None else True


@pytest.fixture
def outside_dir() -> Iterator[Path]:
    base = next(d for d in ("/var/tmp", "/run", "/tmp") if os.path.isdir(d))
    folder = Path(tempfile.mkdtemp(prefix="crankmesh-outside-", dir=base))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@asynccontextmanager
async def strict_target(nats_server, tmp_path: Path, outside_dir: Path) -> AsyncIterator[Target]:
    if HOST.level < IsolationLevel.STRICT:
        pytest.skip(f"this host does not allow strict isolation: {HOST}")
    identity = Identity.generate()
    key = save_identity(identity, tmp_path / "node.key")
    os.environ["CRANKMESH_TEST_SECRET"] = ENV_SECRET
    cfg = node_config(0, capabilities=("python.run",), state_dir=str(tmp_path), key_path=str(key))
    try:
        async with mesh(nats_server.url, [cfg]) as (node,):
            assert node.sandbox.isolation.level is IsolationLevel.STRICT
            assert node.sandbox.isolation.features["protects_node"], node.sandbox.isolation
            async with client_for(nats_server.url, "python.run", 1) as client:
                yield Target(
                    "strict", os.getpid(), key, identity.seed.hex(), tmp_path, outside_dir, client
                )
    finally:
        os.environ.pop("CRANKMESH_TEST_SECRET", None)


@dataclass
class NobodyNode:
    proc: subprocess.Popen[str]
    state_dir: Path
    key_path: Path
    key_secret: str


@contextmanager
def nobody_node(nats_server) -> Iterator[NobodyNode]:
    """``crankmesh node`` started as uid ``nobody`` (development mode, its own state dir)."""
    if UNPRIVILEGED is None:
        pytest.skip(
            "needs root to start a node as uid nobody, and a python"
            f"{sys.version_info.major}.{sys.version_info.minor} that nobody can run "
            "with this checkout and its site-packages"
        )
    exe, path = UNPRIVILEGED
    state = Path(tempfile.mkdtemp(prefix="crankmesh-nobody-", dir="/tmp"))
    os.chown(state, NOBODY, NOBODY)
    state.chmod(0o700)
    key = state / "node.key"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": path,
        "HOME": str(state),
        "CRANKMESH_ENV": "development",
        "CRANKMESH_TEST_SECRET": ENV_SECRET,
    }
    proc = subprocess.Popen(
        [exe, "-m", "crankmesh.cli", "node", "--nats", nats_server.url, "--key", str(key)]
        + ["--capabilities", "python.run", "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd="/",
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"the nobody node did not start: {err[-3000:]}")
        assert json.loads(line)["did"].startswith("did:key:")
        secret = json.loads(key.read_text())["seed"]
        yield NobodyNode(proc, state, key, secret)
        assert proc.poll() is None, "the node died during the test"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=10)
        shutil.rmtree(state, ignore_errors=True)


@asynccontextmanager
async def basic_target(nats_server, tmp_path: Path, outside_dir: Path) -> AsyncIterator[Target]:
    with nobody_node(nats_server) as n:
        async with client_for(nats_server.url, "python.run", 1) as client:
            yield Target(
                "basic",
                n.proc.pid,
                n.key_path,
                n.key_secret,
                n.state_dir,
                outside_dir,
                client,
                n.proc,
            )


@pytest.fixture(params=["strict", "basic"])
async def target(
    request: pytest.FixtureRequest, nats_server, tmp_path: Path, outside_dir: Path
) -> AsyncIterator[Target]:
    make = strict_target if request.param == "strict" else basic_target
    async with make(nats_server, tmp_path, outside_dir) as t:
        yield t


async def _run(target: Target, code: str, **kw: Any) -> Any:
    r = await target.client.run(Job.python(code, **kw))
    assert r.verified
    return r


async def _still_serving(target: Target) -> None:
    assert target.alive()
    r = await target.client.run(Job.python("print('alive')"))
    assert r.ok and r.stdout == "alive\n"


# --------------------------------------------------------------------------- the node


async def test_job_cannot_read_the_node_key(target: Target) -> None:
    code = (
        "import os\n"
        "for path in (args['key'], args['dir']):\n"
        "    try:\n"
        "        print(open(path).read() if os.path.isfile(path) else os.listdir(path))\n"
        "    except OSError as e:\n"
        "        print('denied', type(e).__name__)\n"
    )
    r = await _run(target, code, args={"key": str(target.key_path), "dir": str(target.state_dir)})
    assert r.ok, r
    assert target.key_secret not in r.stdout + r.stderr
    assert r.stdout.splitlines()[0].startswith("denied")
    assert "node.key" not in r.stdout
    await _still_serving(target)


async def test_job_cannot_read_the_node_environment(target: Target) -> None:
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "try:\n"
        "    print(open(f\"/proc/{args['pid']}/environ\", 'rb').read())\n"
        "except OSError as e:\n"
        "    print('denied', type(e).__name__)\n"
    )
    r = await _run(target, code, args={"pid": target.pid})
    assert r.ok, r
    assert ENV_SECRET not in r.stdout + r.stderr and "CRANKMESH" not in r.stdout
    assert "denied" in r.stdout
    await _still_serving(target)


async def test_job_cannot_open_the_node_memory_or_ptrace_it(target: Target) -> None:
    code = (
        "import ctypes\n"
        "pid = args['pid']\n"
        "try:\n"
        "    open(f'/proc/{pid}/mem', 'rb').close()\n"
        "    print('MEM OPEN')\n"
        "except OSError as e:\n"
        "    print('mem denied', type(e).__name__)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.ptrace(0x4206, pid, 0, 0) == 0:\n"  # PTRACE_SEIZE: no SIGSTOP if it works
        "    print('PTRACED')\n"
        "else:\n"
        "    print('ptrace denied', ctypes.get_errno())\n"
    )
    r = await _run(target, code, args={"pid": target.pid})
    assert r.ok, r
    assert "mem denied" in r.stdout and "ptrace denied" in r.stdout, r.stdout
    await _still_serving(target)


async def test_job_cannot_signal_the_node(target: Target) -> None:
    code = (
        "import os, signal\n"
        "for sig in (0, signal.SIGTERM, signal.SIGKILL):\n"
        "    try:\n"
        "        os.kill(args['pid'], sig)\n"
        "        print('SENT', sig)\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
    )
    r = await _run(target, code, args={"pid": target.pid})
    assert r.ok, r
    assert "SENT" not in r.stdout and r.stdout.count("refused") == 3
    await _still_serving(target)


async def test_job_cannot_reach_nats_or_any_network(target: Target, nats_server) -> None:
    code = (
        "import socket\n"
        "def attempt(what, fn):\n"
        "    try:\n"
        "        fn()\n"
        "        print('REACHED', what)\n"
        "    except OSError as e:\n"
        "        print('blocked', what, type(e).__name__)\n"
        "attempt('nats', lambda: socket.create_connection(('127.0.0.1', args['port']), 2))\n"
        "attempt('remote', lambda: socket.create_connection(('10.255.255.1', 80), 1))\n"
        "attempt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
        ".sendto(b'x', ('127.0.0.1', args['port'])))\n"
        "attempt('ipv6', lambda: socket.socket(socket.AF_INET6).connect(('::1', args['port'])))\n"
    )
    r = await _run(target, code, args={"port": nats_server.port})
    assert r.ok, r
    assert "REACHED" not in r.stdout and r.stdout.count("blocked") == 4, r.stdout
    await _still_serving(target)


async def test_job_cannot_write_outside_its_directory(target: Target) -> None:
    code = (
        "import os\n"
        "for d in (args['state'], args['outside'], '/'):\n"
        "    try:\n"
        "        open(os.path.join(d, 'planted-by-job'), 'w').write('x')\n"
        "        print('WROTE', d)\n"
        "    except OSError as e:\n"
        "        print('denied', type(e).__name__)\n"
        "open('mine', 'w').write('fine')\n"
    )
    args = {"state": str(target.state_dir), "outside": str(target.outside_dir)}
    r = await _run(target, code, args=args)
    assert r.ok, r
    assert "WROTE" not in r.stdout and r.stdout.count("denied") == 3, r.stdout
    assert not (target.state_dir / "planted-by-job").exists()
    assert not (target.outside_dir / "planted-by-job").exists()
    await _still_serving(target)


async def test_job_cannot_read_host_files_or_create_namespaces(target: Target) -> None:
    code = (
        "import ctypes, os, subprocess\n"
        "for path in ('/etc/passwd', '/etc/hostname', '/etc/group', '/root', '/home', '/'):\n"
        "    try:\n"
        "        print('READ', path, (open(path).read(20) if os.path.isfile(path)"
        " else os.listdir(path))[:3])\n"
        "    except OSError as e:\n"
        "        print('hidden', type(e).__name__)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for name, flag in (('user', 0x10000000), ('mount', 0x20000), ('net', 0x40000000)):\n"
        "    print('unshare', name, libc.unshare(flag), ctypes.get_errno())\n"
        "r = subprocess.run(['/usr/bin/unshare', '-U', '-r', 'true'], capture_output=True)\n"
        "print('unshare-cmd', r.returncode)\n"
    )
    r = await _run(target, code)
    assert r.ok, (r.receipt.detail, r.stderr)
    assert "READ" not in r.stdout and r.stdout.count("hidden") == 6, r.stdout
    for name in ("user", "mount", "net"):
        assert f"unshare {name} -1 1\n" in r.stdout, r.stdout  # EPERM
    assert "unshare-cmd 0" not in r.stdout
    await _still_serving(target)


# --------------------------------------------------------------------------- the limits


async def test_job_cannot_exceed_memory_time_or_cpu(target: Target) -> None:
    r = await _run(target, "x = bytearray(2 * 1024**3)", memory_mb=256)
    assert r.status == "memory_limit"
    code = (
        "import os, time\n"  # four processes, each under the limit, together far over it
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        break\n"
        "x = bytearray(150 * 1024**2)\n"
        "time.sleep(3)\n"
    )
    r = await _run(target, code, memory_mb=256)
    assert r.status == "memory_limit", r.receipt.detail
    assert "processes together" in r.receipt.detail
    r = await _run(target, "import time\ntime.sleep(30)", timeout_sec=1)
    assert r.status == "timeout"
    assert r.receipt.metering.wall_us < 5_000_000
    r = await _run(target, "while True:\n    pass\n", timeout_sec=2)
    assert r.status in ("timeout", "killed")
    assert r.receipt.metering.cpu_us <= 4_000_000
    await _still_serving(target)


async def test_output_cap_bounds_stdout_stderr_and_return_value_together(target: Target) -> None:
    noisy = "import sys\nsys.stderr.write('e' * 20000)\nprint('o' * 300)\nresult = 'r' * 300\n"
    r = await _run(target, noisy, max_output_bytes=0)
    assert r.status == "output_limit"
    assert r.stdout == "" and r.stderr == "" and r.return_value is None
    r = await _run(target, noisy, max_output_bytes=1000)
    total = len(r.stdout.encode()) + len(r.stderr.encode()) + len(r._py().get("return") or b"")
    assert r.status == "ok" and total <= 1000, (r.status, total)
    r = await _run(target, noisy, max_output_bytes=500)
    assert r.status == "output_limit"  # stdout (301) + return value (303) do not fit
    total = len(r.stdout.encode()) + len(r.stderr.encode())
    assert total <= 500
    await _still_serving(target)


async def test_job_cannot_exceed_its_disk_quota(target: Target) -> None:
    code = (
        "import os, sys\n"
        "written = 0\n"
        "try:\n"
        "    for i in range(400):\n"  # 400 files of 1 MiB, each under the file size limit
        "        with open(f'f{i}', 'wb') as f:\n"
        "            f.write(b'x' * (1 << 20))\n"
        "        written += 1\n"
        "        if written % 16 == 0:\n"
        "            print('written', written, flush=True)\n"
        "except OSError as e:\n"
        "    print('stopped', e.errno, flush=True)\n"
        "print('written', written)\n"
    )
    # the job directory is a tmpfs of the quota at strict, and at basic where the host allows
    # unprivileged user namespaces (the node's features say which)
    kernel = target.level == "strict" or _nobody_capabilities()["features"]["kernel_disk_quota"]
    r = await _run(target, code, timeout_sec=20)
    # the per-job quota is the operator's disk cap (max_job_disk_mb, 64 MiB by default): the
    # kernel refuses more (the tmpfs: ENOSPC), or the fork-server's check kills the job
    quota_mb = ExecutorCaps().max_disk_mb
    counts = [int(line.split()[1]) for line in r.stdout.splitlines() if line.startswith("written")]
    assert counts
    if kernel:
        assert r.ok, (r.status, r.receipt.detail)
        assert "stopped 28" in r.stdout, r.stdout  # ENOSPC
        assert max(counts) <= quota_mb, counts  # never a byte past the quota
    else:
        detail = r.receipt.detail
        assert r.status == "killed", (r.status, detail)
        assert f"disk quota of {quota_mb << 20} bytes exceeded" in detail, detail
        # a quota enforced by the fork-server's check (every 100 ms, and at the end): the job is
        # stopped long before its 400 files, but may write for one check interval past the quota
        assert max(counts) < 400, counts
    many = "for i in range(6000):\n    open(f'e{i}', 'w').close()\n"
    r = await _run(target, many, timeout_sec=20)
    assert r.status in ("killed", "error"), r
    assert "4096 files" in r.receipt.detail or "No space" in r.stderr, (r.receipt.detail, r.stderr)
    await _still_serving(target)


# --------------------------------------------------------------------------- no protection


async def test_unprotected_node_serves_python_run_only_to_its_allow_list(
    nats_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host without Landlock and seccomp, as a non-root node sees it: no protection."""
    features = {"rlimits": True, "no_new_privs": True, "landlock": False, "seccomp": False}
    fake = IsolationReport(IsolationLevel.BASIC, features, ("landlock: not on this kernel",))
    monkeypatch.setattr(sandbox_module, "host_isolation", lambda: fake)
    allowed = Identity.generate()
    stranger = Identity.generate()
    cfg = node_config(
        0,
        capabilities=("python.run",),
        state_dir=str(tmp_path),
        python_run_allow=frozenset({allowed.did}),
    )
    async with mesh(nats_server.url, [cfg]) as (node,):
        report = node.sandbox.isolation
        assert not report.features["protects_node"]
        assert any("unprotected node" in note for note in report.notes)
        if os.geteuid() == 0:  # an unconfined root job can do it all; the node kept running
            found = "; ".join(report.notes)
            for attack in ("read the node's environment", "ptrace the node", "connect to a TCP"):
                assert attack in found, found
        assert node.executor.config.isolation == "none"  # advertised: no isolation claim
        async with client_for(nats_server.url, "python.run", 1, identity=allowed) as client:
            r = await client.run(Job.python("print('trusted')"))
            assert r.ok and r.stdout == "trusted\n"
        async with client_for(nats_server.url, "python.run", 1, identity=stranger) as client:
            with pytest.raises(CrankmeshError):
                await client.run(Job.python("print('stranger')"))
        declined = node.metrics.bids_declined.labels(reason="originator_not_allowed")
        assert declined._value.get() >= 1


def test_capabilities_command_says_whether_the_node_is_protected_and_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    import crankmesh.executor.sandbox as sandbox_package
    from crankmesh.cli._executor_cmds import cmd_capabilities

    args = argparse.Namespace(json=True, no_gpu=True, storage_dir=None)
    assert cmd_capabilities(args) == 0
    doc = json.loads(capsys.readouterr().out)["isolation"]
    assert doc["protects_node"] is HOST.features["protects_node"]
    if doc["protects_node"]:
        assert doc["python_run"].startswith("served to any originator")
    features = {"rlimits": True, "landlock": False, "seccomp": True, "protects_node": False}
    gap = "unprotected node: a job could read the node's key"
    fake = IsolationReport(IsolationLevel.BASIC, features, (gap,))
    monkeypatch.setattr(sandbox_package, "detect_isolation", lambda: fake)
    assert cmd_capabilities(args) == 0
    doc = json.loads(capsys.readouterr().out)["isolation"]
    assert doc["protects_node"] is False
    assert doc["python_run"].startswith("served only to allow-listed originators")
    assert gap in doc["python_run"]
    args.json = False
    assert cmd_capabilities(args) == 0
    assert "python.run: served only to allow-listed originators" in capsys.readouterr().out


def _nobody_capabilities() -> dict[str, Any]:
    """``crankmesh capabilities --json`` of a node running as uid ``nobody``."""
    if UNPRIVILEGED is None:
        pytest.skip("needs root and a python that uid nobody can run")
    exe, path = UNPRIVILEGED
    out = subprocess.run(
        [exe, "-m", "crankmesh.cli", "capabilities", "--json"],
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin", "CRANKMESH_ENV": "development"},
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    doc: dict[str, Any] = json.loads(out.stdout)["isolation"]
    return doc


def _userns_allowed() -> bool:
    """What the host's sysctls say about unprivileged user namespaces."""
    knobs = {
        "/proc/sys/user/max_user_namespaces": lambda v: int(v) > 0,
        "/proc/sys/kernel/unprivileged_userns_clone": lambda v: int(v) == 1,
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns": lambda v: int(v) == 0,
    }
    for knob, ok in knobs.items():
        try:
            value = Path(knob).read_text().strip()
        except OSError:
            continue
        if not ok(value):
            return False
    return True


def test_unprivileged_capabilities_report_basic_protected_isolation() -> None:
    doc = _nobody_capabilities()
    assert doc["level"] == "basic"
    features = doc["features"]
    expected = features["landlock"] and features["seccomp"]
    assert doc["protects_node"] is expected, doc
    # the job directory's quota: a tmpfs in a user + mount namespace where the host allows
    # unprivileged user namespaces, else only the fork-server's check
    assert features["kernel_disk_quota"] is features["job_tmpfs"], doc
    assert features["job_tmpfs"] is _userns_allowed(), doc


SPIN_IN_CHILDREN = (  # CPU in processes that each stay under the per-process RLIMIT_CPU
    "import os, time\n"
    "for _ in range(5):\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        end = time.process_time() + 1.0\n"
    "        while time.process_time() < end:\n"
    "            pass\n"
    "        os._exit(0)\n"
    "    os.waitpid(pid, 0)\n"
)


@pytest.mark.parametrize("level", [IsolationLevel.BASIC, IsolationLevel.STRICT])
async def test_cpu_and_memory_limits_bind_the_whole_process_tree(
    level: IsolationLevel, tmp_path: Path
) -> None:
    from crankmesh.executor.sandbox import Sandbox, SandboxLimits

    if level > HOST.level:
        pytest.skip(f"this host does not allow {level.token}")
    async with Sandbox(isolation=level, workdir_root=str(tmp_path / "w")) as sandbox:
        # 5 s of CPU in children of 1 s each: each under cpu_seconds=2, together over it
        r = await sandbox.run(
            code=SPIN_IN_CHILDREN, limits=SandboxLimits(timeout_s=60, cpu_seconds=2)
        )
        assert r.status.value == "killed", r
        assert "cpu time limit of 2 s exceeded by the job's" in r.detail
        r = await sandbox.run(
            code=SPIN_IN_CHILDREN, limits=SandboxLimits(timeout_s=60, cpu_seconds=8)
        )
        assert r.ok, r


READABLE = "/etc/ld.so.cache"


@pytest.mark.skipif(not os.path.isfile(READABLE), reason=f"no {READABLE} on this host")
async def test_a_key_the_job_can_read_makes_the_node_unprotected(
    nats_server, tmp_path: Path
) -> None:
    """The self-test reads the configured key: one in a path jobs may read (here a
    world-readable system file standing in for it) is found, and python.run allow-listed."""
    readable = READABLE
    cfg = node_config(0, capabilities=("python.run",), state_dir=str(tmp_path), key_path=readable)
    async with mesh(nats_server.url, [cfg]) as (node,):
        report = node.sandbox.isolation
        assert not report.features["protects_node"]
        assert any(f"read {readable}" in note for note in report.notes), report.notes
        assert node.executor.config.isolation == "none"


WRITE_MIB_FILES = (
    "import os\n"
    "n = 0\n"
    "try:\n"
    "    for i in range(args['files']):\n"
    "        with open(f'f{i}', 'wb') as f:\n"
    "            f.write(b'x' * (1 << 20))\n"
    "        n += 1\n"
    "except OSError as e:\n"
    "    print('stopped', e.errno)\n"
    "print('written', n)\n"
)


@pytest.mark.parametrize("level", [IsolationLevel.BASIC, IsolationLevel.STRICT])
async def test_per_job_disk_limits_and_the_sandbox_quota(
    level: IsolationLevel, tmp_path: Path
) -> None:
    from crankmesh.executor.sandbox import Sandbox, SandboxLimits

    if level > HOST.level:
        pytest.skip(f"this host does not allow {level.token}")
    async with Sandbox(
        isolation=level, workdir_root=str(tmp_path / "w"), max_disk_bytes=16 << 20
    ) as sandbox:
        # the job's own quota, below the sandbox's: checked every 100 ms and at the end
        pause = "n += 1\n        __import__('time').sleep(0.05)\n"
        slow = WRITE_MIB_FILES.replace("n += 1\n", pause)
        r = await sandbox.run(
            code=slow, args={"files": 12}, limits=SandboxLimits(max_disk_bytes=4 << 20)
        )
        assert r.status.value == "killed" and "disk quota of 4194304 bytes" in r.detail, r
        # fast writers (done before the first check) are caught by the end check
        r = await sandbox.run(
            code=WRITE_MIB_FILES,
            args={"files": 8},
            limits=SandboxLimits(max_disk_bytes=4 << 20),
        )
        assert r.status.value == "killed" and "disk quota" in r.detail, r
        r = await sandbox.run(
            code="import time\nfor i in range(50):\n    open(f'e{i}', 'w').close()\n"
            "    time.sleep(0.01)\n",
            limits=SandboxLimits(max_files=20),
        )
        assert r.status.value in ("killed", "error") and (
            "20 files" in r.detail or b"No space" in r.stderr_tail
        ), r
        if level is IsolationLevel.STRICT:  # the kernel holds the sandbox's 16 MiB
            r = await sandbox.run(
                code=WRITE_MIB_FILES,
                args={"files": 40},
                limits=SandboxLimits(max_disk_bytes=1 << 30, max_file_bytes=1 << 30),
            )
            assert r.ok and "stopped 28" in r.stdout.decode(), r
            assert int(r.stdout.decode().split("written ")[1]) <= 16
