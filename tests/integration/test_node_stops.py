"""Clean stops of ``crankmesh node``: Ctrl-C (SIGINT to the whole process group, as a
terminal sends it) or SIGTERM drains and exits 0 without a traceback, with the embedded
nats-server or an external one, NATS up or down; the embedded server stops after the node."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from crankmesh.testing import NatsServer

pytestmark = [pytest.mark.integration]

CLI = [sys.executable, "-m", "crankmesh.cli"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CRANKMESH_")}
ENV["CRANKMESH_ENV"] = "development"


def start_node(home: Path, *extra: str) -> tuple[subprocess.Popen[str], dict]:
    proc = subprocess.Popen(
        [*CLI, "node", "--capabilities", "echo", "--metrics-port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, "CRANKMESH_HOME": str(home)},
        start_new_session=True,  # its own process group, like a shell job
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"node did not start: {err}")
    return proc, json.loads(line)


def assert_clean_exit(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    return err


def port_open(url: str) -> bool:
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigint_to_the_process_group_with_the_embedded_server_20_of_20(tmp_path: Path) -> None:
    failures = []
    for i in range(20):
        proc, ready = start_node(tmp_path / f"home{i}")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0 or "Traceback" in err:
            failures.append((i, proc.returncode, err[-2000:]))
            continue
        # the embedded server ran in its own group, and the node stopped it on its way out
        m = re.search(r"embedded nats-server at (nats://[0-9.:]+)", err)
        assert m, err[-2000:]
        assert not port_open(m.group(1)), f"embedded server {m.group(1)} still running"
        assert ready["event"] == "ready"
    assert not failures, failures


def test_sigterm_with_an_external_server_up_exits_0(tmp_path: Path) -> None:
    with NatsServer() as server:
        proc, _ = start_node(tmp_path, "--nats", server.url)
        proc.send_signal(signal.SIGTERM)
        assert_clean_exit(proc)


def test_sigint_and_sigterm_while_nats_is_down_exit_0(tmp_path: Path) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        server = NatsServer()
        server.start()
        try:
            proc, _ = start_node(tmp_path / sig.name, "--nats", server.url)
        finally:
            server.stop()  # NATS goes away under the running node
        os.killpg(proc.pid, sig)
        assert_clean_exit(proc)
