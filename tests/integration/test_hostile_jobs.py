"""Hostile python.run jobs submitted through the mesh (issue [2/5] acceptance): each is
contained, its receipt says what happened, and the node keeps serving. Nothing of a job
survives its end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from crankmesh.executor.sandbox import IsolationLevel, detect_isolation
from crankmesh.originator import Job

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.slow]

STRICT = detect_isolation().level >= IsolationLevel.STRICT
needs_strict = pytest.mark.skipif(not STRICT, reason="host does not allow strict isolation")


def _job_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


@pytest.fixture
async def one_node(nats_server, tmp_path: Path):
    secret_key = tmp_path / "node.key"
    secret_key.write_text("TOP-SECRET-SEED")
    secret_key.chmod(0o600)
    os.environ["CRANKMESH_TEST_SECRET"] = "ENV-SECRET-VALUE"
    cfg = node_config(0, capabilities=("python.run",), state_dir=str(tmp_path))
    try:
        async with mesh(nats_server.url, [cfg]) as (node,):
            async with client_for(nats_server.url, "python.run", 1) as client:
                yield node, client, secret_key
    finally:
        os.environ.pop("CRANKMESH_TEST_SECRET", None)


async def _still_serving(client) -> None:
    r = await client.run(Job.python("print('alive')"))
    assert r.ok and r.stdout == "alive\n"


@needs_strict
async def test_no_network_not_even_the_nats_port(one_node, nats_server):
    node, client, _ = one_node
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {nats_server.port}), timeout=2)\n"
        "    print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('blocked', type(e).__name__)\n"
    )
    r = await client.run(Job.python(code))
    assert r.ok and r.stdout.startswith("blocked") and "CONNECTED" not in r.stdout
    await _still_serving(client)


@needs_strict
async def test_cannot_read_the_node_key_file(one_node):
    node, client, key = one_node
    r = await client.run(Job.python(f"print(open({str(key)!r}).read())"))
    # Not readable (another uid) -- or not even there (jobs get a private /tmp).
    assert r.status == "error"
    assert "PermissionError" in r.stderr or "FileNotFoundError" in r.stderr
    assert "TOP-SECRET-SEED" not in r.stdout + r.stderr
    await _still_serving(client)


async def test_cannot_read_the_node_environment(one_node):
    node, client, _ = one_node
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "try:\n"
        f"    print(open('/proc/{os.getpid()}/environ','rb').read())\n"
        "except OSError as e:\n"
        "    print('denied', type(e).__name__)\n"
    )
    r = await client.run(Job.python(code))
    assert "ENV-SECRET-VALUE" not in r.stdout + r.stderr
    await _still_serving(client)


async def test_fork_bomb_is_contained(one_node):
    node, client, _ = one_node
    code = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    r = await client.run(Job.python(code, timeout_sec=2))
    assert r.status in ("timeout", "killed", "error") and r.verified
    await _still_serving(client)


async def test_allocating_8_gib_hits_the_memory_limit(one_node):
    node, client, _ = one_node
    r = await client.run(Job.python("x = bytearray(8 * 1024**3)", memory_mb=256))
    assert r.status == "memory_limit" and r.verified
    await _still_serving(client)


async def test_printing_100_mb_hits_the_output_limit(one_node):
    node, client, _ = one_node
    code = "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 1024 * 1024)\n"
    r = await client.run(Job.python(code, max_output_bytes=512 * 1024))
    assert r.status == "output_limit" and len(r.stdout) <= 512 * 1024
    await _still_serving(client)
    # A result that cannot fit in one NATS message still ends with a clear receipt.
    r = await client.run(Job.python(code, max_output_bytes=1 << 20))
    assert r.status == "output_limit" and r.verified
    await _still_serving(client)


async def test_writing_a_2_gib_file_is_stopped_and_leaves_nothing(one_node):
    node, client, _ = one_node
    code = (
        "import os\n"
        "with open('big.bin', 'wb') as f:\n"
        "    for _ in range(2048):\n"
        "        f.write(b'\\0' * 1024 * 1024)\n"
        "print(os.getcwd())\n"
    )
    r = await client.run(Job.python(code, timeout_sec=10))
    assert r.status in ("killed", "error") and r.verified
    assert "file size" in (r.receipt.detail + r.stderr).lower() or r.status == "killed"
    await _still_serving(client)


async def test_cannot_signal_the_node(one_node):
    node, client, _ = one_node
    code = (
        "import os, signal\n"
        "try:\n"
        f"    os.kill({os.getpid()}, signal.SIGTERM)\n"
        "    print('SENT')\n"
        "except OSError as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    r = await client.run(Job.python(code))
    assert "SENT" not in r.stdout
    await _still_serving(client)  # we (the node's process) are still here


async def test_a_process_that_outlives_the_job_does_not_survive(one_node):
    node, client, _ = one_node
    marker = "crankmesh-orphan-" + os.urandom(4).hex()
    code = (
        "import os, subprocess\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['/bin/sleep', '60', '{marker}'])\n"
        "    os._exit(0)\n"
        "print('spawned')\n"
    )
    r = await client.run(Job.python(code))
    assert r.verified
    assert _job_processes(marker) == []
    await _still_serving(client)
