"""The `crankmesh` command line, run as real subprocesses against a real nats-server."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from crankmesh.originator import Job

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration]

CLI = [sys.executable, "-m", "crankmesh.cli"]


#: Subprocess nodes run in development mode: CI sets CI=true, which would otherwise
#: select production mode (and its TLS/credentials/trust-list requirements).
DEV_ENV = {**os.environ, "CRANKMESH_ENV": "development"}


def run_cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    kw.setdefault("env", DEV_ENV)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


@contextmanager
def node_process(
    url: str, key: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [*CLI, "node", "--nats", url, "--key", str(key), "--log-level", "WARNING", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or DEV_ENV,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"node did not start: {proc.stderr.read() if proc.stderr else ''}")
        ready = json.loads(line)
        assert ready["event"] == "ready"
        yield proc, ready["did"]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=20)  # reaps the process and closes its pipes


def test_every_command_has_help() -> None:
    for cmd in (
        [],
        ["demo"],
        ["identity"],
        ["identity", "new"],
        ["identity", "show"],
        ["node"],
        ["submit"],
    ):
        r = run_cli(*cmd, "--help", timeout=30)
        assert r.returncode == 0, r.stderr
        assert "usage:" in r.stdout


def test_identity_new_and_show(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "node.key"
    r = run_cli("identity", "new", "--out", str(key), "--json")
    assert r.returncode == 0, r.stderr
    did = json.loads(r.stdout)["did"]
    assert did.startswith("did:key:z6Mk")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    r = run_cli("identity", "show", "--key", str(key), "--json", "--trust-domain", "example.org")
    shown = json.loads(r.stdout)
    assert shown["did"] == did and shown["spiffe"].startswith("spiffe://example.org/node/z6Mk")
    # refuses to overwrite, refuses unsafe permissions
    assert run_cli("identity", "new", "--out", str(key)).returncode == 2  # refused overwrite
    key.chmod(0o644)
    r = run_cli("identity", "show", "--key", str(key))
    assert r.returncode == 2 and "chmod 600" in r.stderr


def test_node_subprocess_serves_submit_and_exits_0_on_sigterm(nats_server, tmp_path: Path) -> None:
    with node_process(
        nats_server.url, tmp_path / "n.key", "--capabilities", "echo", "--price", "0.002"
    ) as (proc, did):
        r = run_cli(
            "submit",
            "--nats",
            nats_server.url,
            "--capability",
            "echo",
            "--payload",
            "hello mesh",
            "--json",
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["status"] == "ok" and out["output"] == "hello mesh"
        assert out["executor"] == did and out["price"] == 2000 and out["verified"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
    # the receipt chain head sits next to the key
    head = json.loads((tmp_path / "receipt-chain.log").read_text().splitlines()[-1])
    assert head["seq"] == 1


def test_submit_with_no_executor_fails_with_a_clear_error(nats_server) -> None:
    r = run_cli(
        "submit",
        "--nats",
        nats_server.url,
        "--capability",
        "nobody.serves.this",
        "--payload",
        "x",
        "--wait-peers",
        "0.2",
    )
    assert r.returncode == 1
    assert "no executor bid" in r.stdout + r.stderr


@pytest.mark.anyio
@pytest.mark.slow
async def test_executor_killed_after_winning_is_reassigned_and_job_completes(
    nats_server, tmp_path: Path
) -> None:
    """The cheapest executor (a real `crankmesh node` process) accepts a python.run job,
    then dies with SIGKILL mid-job; the originator notices its adverts stop and the job
    completes on the next-best executor."""
    pytest.importorskip("crankmesh.executor.sandbox")
    cfg = node_config(1, capabilities=("python.run",), price=50_000)
    async with mesh(nats_server.url, [cfg]) as (honest,):
        with node_process(
            nats_server.url, tmp_path / "victim.key", "--capabilities", "python.run", "--price", "1"
        ) as (proc, victim_did):
            async with client_for(nats_server.url, "python.run", 2) as client:
                job = Job.python("import time\ntime.sleep(1.5)\nprint('done')", timeout_sec=5)
                result: dict = {}

                async def submit() -> None:
                    result["r"] = await client.run(job)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(submit)
                    await anyio.sleep(0.8)  # the victim has won and accepted by now
                    os.kill(proc.pid, signal.SIGKILL)
                r = result["r"]
                assert r.ok and r.stdout.strip() == "done"
                assert r.executor == honest.did
                assert [a.executor for a in r.attempts] == [victim_did]
                assert r.attempts[0].outcome.startswith(("executor_gone", "no_receipt"))
    assert time.monotonic() > 0


@pytest.mark.slow
def test_demo_then_audit_on_the_stream_reports_50_verified_receipts(nats_server) -> None:
    r = run_cli("demo", "--nats", nats_server.url, "--jobs", "50", "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    summary = lines[-1]
    assert summary["verified"] == 50 and summary["audit_ok"] is True
    a = run_cli("audit", "--nats", nats_server.url, "--json", timeout=120)
    assert a.returncode == 0, a.stdout[-2000:] + a.stderr[-2000:]
    report = json.loads(a.stdout)
    executors = report["executors"]  # one object per executor
    assert sum(e["receipts"] for e in executors) == 50
    assert not report["findings"]
    for e in executors:  # per-executor SLO figures are there
        assert e["promised_p95_us"] is not None and e["observed_p95_us"] is not None
        assert e["slo_jobs"] == e["receipts"]


@pytest.mark.anyio
async def test_sigkilled_executor_vanishes_from_every_peers_directory_within_its_ttl(
    nats_server, tmp_path: Path
) -> None:
    async with mesh(nats_server.url, [node_config(0), node_config(1)]) as peers:
        with node_process(
            nats_server.url, tmp_path / "gone.key", "--capabilities", "echo", "--advert-ttl", "2"
        ) as (proc, victim):
            with anyio.fail_after(10):
                while not all(p.directory.get(victim) for p in peers):
                    await peers[0].directory.wait_changed()
            os.kill(proc.pid, signal.SIGKILL)
            # Its last advert expires at most one TTL (2 s) after it was sent: by then the
            # victim is gone from every peer's directory (no goodbye was ever sent).
            await anyio.sleep(2 + 0.3)
            assert all(p.directory.get(victim) is None for p in peers)
            assert all(victim not in {x.did for x in p.directory.peers()} for p in peers)
