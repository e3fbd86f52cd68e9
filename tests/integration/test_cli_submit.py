"""``crankmesh submit``: every option does what its help says (a real node subprocess on a
real nats-server; each test fails if its option were ignored)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crankmesh.testing import NatsServer

pytestmark = [pytest.mark.integration]

CLI = [sys.executable, "-m", "crankmesh.cli"]
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("CRANKMESH_")}
BASE_ENV["CRANKMESH_ENV"] = "development"


@dataclass
class Mesh:
    url: str
    key: Path  # the originator key the node trusts
    did: str  # its DID
    node_did: str
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {**BASE_ENV, "CRANKMESH_HOME": str(self.home), **extra}

    def submit(self, *args: str, key: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        extra = ["--key", str(self.key)] if key else []
        return subprocess.run(
            [*CLI, "submit", "--nats", self.url, "--wait-peers", "5", *extra, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env(**env),
        )


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def trusting_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One node (python.run and echo at 2000 µUSD, named 'trusting') whose trust list
    holds one originator key; everything else signed is refused."""
    tmp = tmp_path_factory.mktemp("submit")
    env = {**BASE_ENV, "CRANKMESH_HOME": str(tmp / "home")}
    key = tmp / "originator.key"
    r = _cli("identity", "new", "--out", str(key), "--json", env=env)
    assert r.returncode == 0, r.stderr
    did = json.loads(r.stdout)["did"]
    with NatsServer() as server:
        proc = subprocess.Popen(
            [
                *CLI, "node", "--nats", server.url, "--key", str(tmp / "node.key"),
                "--state-dir", str(tmp / "state"), "--name", "trusting",
                "--capabilities", "python.run,echo", "--price", "0.002",
                "--trust", did, "--log-level", "WARNING", "--metrics-port", "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            ready = json.loads(line)
            yield Mesh(server.url, key, did, ready["did"], tmp / "home")
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


def _last_json(r: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_key_signs_so_a_trust_listed_node_serves_it(trusting_mesh: Mesh) -> None:
    ok = trusting_mesh.submit("--capability", "echo", "--payload", "hi", "--json")
    assert ok.returncode == 0, ok.stderr
    assert _last_json(ok)["executor"] == trusting_mesh.node_did
    # The same job signed by a fresh identity (no --key) is not served by this node.
    refused = trusting_mesh.submit(
        "--capability", "echo", "--payload", "hi", "--wait-peers", "2", key=False
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr


def test_crankmesh_key_environment_variable_is_the_default_key(trusting_mesh: Mesh) -> None:
    r = trusting_mesh.submit(
        "--capability", "echo", "--payload", "env", "--json",
        key=False, CRANKMESH_KEY=str(trusting_mesh.key),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_slo_p95_ms_filters_bids(trusting_mesh: Mesh) -> None:
    r = trusting_mesh.submit("--capability", "echo", "--payload", "x", "--slo-p95-ms", "0.001")
    assert r.returncode == 1, r.stdout
    assert "no eligible bid" in r.stderr and "Traceback" not in r.stderr
    # a generous SLO passes (the slo policy is what --slo-p95-ms implies)
    r = trusting_mesh.submit("--capability", "echo", "--payload", "x", "--slo-p95-ms", "60000")
    assert r.returncode == 0, r.stderr


def test_max_price_below_every_price_fails_fast_with_the_figures(trusting_mesh: Mesh) -> None:
    r = trusting_mesh.submit("--capability", "echo", "--payload", "x", "--max-price", "500")
    assert r.returncode == 1, r.stdout
    assert "trusting" in r.stderr and "2000 µUSD" in r.stderr and "500 µUSD" in r.stderr


def test_an_unsupported_env_profile_is_named(trusting_mesh: Mesh) -> None:
    r = trusting_mesh.submit("--code", "print(1)", "--env-profile", "no-such-profile")
    assert r.returncode == 1, r.stdout
    assert "no-such-profile" in r.stderr and "Traceback" not in r.stderr


def test_budget_spends_from_the_token(trusting_mesh: Mesh, tmp_path: Path) -> None:
    env = trusting_mesh.env()

    def token(micros: int, name: str) -> Path:
        out = tmp_path / name
        r = _cli(
            "token", "issue", "--key", str(trusting_mesh.key), "--audience", trusting_mesh.did,
            "--scope", "echo", "--amount-micros", str(micros), "--out", str(out), env=env,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return out

    small = token(500, "small.tok")  # less than the node's 2000 µUSD
    r = trusting_mesh.submit("--capability", "echo", "--payload", "x", "--budget", str(small))
    assert r.returncode == 1 and "budget" in r.stderr, r.stdout + r.stderr
    big = token(10_000, "big.tok")
    r = trusting_mesh.submit(
        "--capability", "echo", "--payload", "x", "--budget", str(big), "--json"
    )
    assert r.returncode == 0, r.stderr
    assert _last_json(r)["price"] == 2000
    # a token for another capability is refused before connecting
    r = trusting_mesh.submit("--code", "1", "--budget", str(big))
    assert r.returncode == 2 and "error: " in r.stderr, r.stderr


def test_explain_prints_the_explanation_and_explain_reads_it_back(trusting_mesh: Mesh) -> None:
    r = trusting_mesh.submit("--capability", "echo", "--payload", "x", "--explain")
    assert r.returncode == 0, r.stderr
    assert "Selection for job" in r.stdout
    job_cid = r.stdout.split("[ok] job ", 1)[1].split()[0]
    # The submitting process has exited: `explain` reads what it saved.
    e = _cli("explain", job_cid, "--nats", trusting_mesh.url, "--json", env=trusting_mesh.env())
    assert e.returncode == 0, e.stderr
    assert json.loads(e.stdout)["explanation"]["winner"]["executor"] == trusting_mesh.node_did
    j = trusting_mesh.submit("--capability", "echo", "--payload", "y", "--explain", "--json")
    assert _last_json(j)["explanation"]["winner"]["executor"] == trusting_mesh.node_did
    plain = trusting_mesh.submit("--capability", "echo", "--payload", "z", "--json")
    assert "explanation" not in _last_json(plain)


def test_text_shows_return_value_executor_name_and_attempts(trusting_mesh: Mesh) -> None:
    r = trusting_mesh.submit("--code", "print('hello'); result = {'n': args['n'] * 2}",
                             "--args", '{"n": 21}')  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "hello" in r.stdout and 'result: {"n": 42}' in r.stdout
    assert "on trusting (" in r.stdout and "(attempt 1)" in r.stdout


def test_text_shows_a_failed_jobs_traceback(trusting_mesh: Mesh) -> None:
    r = trusting_mesh.submit("--code", "def f():\n    raise ValueError('boom-42')\nf()")
    assert r.returncode == 1
    assert "ValueError: boom-42" in r.stdout and "Traceback" in r.stdout
    status = r.stdout.rsplit("] job ", 1)[0].rsplit("[", 1)[1]
    assert status != "ok"


def test_count_and_concurrency_run_a_batch_with_a_summary(trusting_mesh: Mesh) -> None:
    code = "import time\ntime.sleep(0.4)\nresult = 1"
    r = trusting_mesh.submit("--code", code, "--count", "4", "--concurrency", "2", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.strip().splitlines()]
    jobs, summary = lines[:-1], lines[-1]
    assert len(jobs) == 4 and all(j["status"] == "ok" for j in jobs)
    assert summary["summary"] and summary["ok"] == 4 and summary["failed"] == 0
    # two at a time: some job's run overlapped another's (each sleeps 0.4 s)
    spans = sorted((j["started_ms"], j["ended_ms"]) for j in jobs)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)), spans
    text = trusting_mesh.submit("--code", "result = 1", "--count", "3")
    assert text.returncode == 0 and "3 ok, 0 failed" in text.stderr


def test_concurrency_1_runs_one_at_a_time(trusting_mesh: Mesh) -> None:
    code = "import time\ntime.sleep(0.2)"
    r = trusting_mesh.submit("--code", code, "--count", "3", "--concurrency", "1", "--json")
    assert r.returncode == 0, r.stderr
    jobs = [json.loads(line) for line in r.stdout.strip().splitlines()][:-1]
    spans = sorted((j["started_ms"], j["ended_ms"]) for j in jobs)
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:], strict=False)), spans


def test_ctrl_c_during_a_batch_prints_the_summary_and_exits_130(trusting_mesh: Mesh) -> None:
    proc = subprocess.Popen(
        [*CLI, "submit", "--nats", trusting_mesh.url, "--key", str(trusting_mesh.key),
         "--code", "import time\ntime.sleep(0.3)", "--count", "50", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=trusting_mesh.env(),
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first["status"] == "ok"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["summary"] and summary["interrupted"] and summary["ok"] >= 1
    assert summary["ok"] + summary["failed"] + summary["not_run"] == 50
    assert summary["not_run"] > 0


def test_timeout_ends_a_long_job(trusting_mesh: Mesh) -> None:
    r = trusting_mesh.submit("--code", "import time\ntime.sleep(5)", "--timeout", "0.5", "--json")
    assert r.returncode == 1, r.stderr
    assert _last_json(r)["status"] == "timeout"


def test_file_is_the_code(trusting_mesh: Mesh, tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text("print('from a file', args['x'])\n")
    r = trusting_mesh.submit("--file", str(job), "--args", '{"x": 7}')
    assert r.returncode == 0, r.stderr
    assert "from a file 7" in r.stdout


def test_federation_flag_and_variable_choose_the_federation(trusting_mesh: Mesh) -> None:
    # the node is on 'default': on another federation nobody offers echo
    for extra, env in (
        (["--federation", "elsewhere"], {}),
        ([], {"CRANKMESH_FEDERATION": "elsewhere"}),
    ):
        r = trusting_mesh.submit(
            "--capability", "echo", "--payload", "x", "--wait-peers", "0.3", *extra, **env
        )
        assert r.returncode == 1, r.stdout
        assert "no executor bid" in r.stderr and "Traceback" not in r.stderr


def test_crankmesh_nats_variable_is_the_default_url(trusting_mesh: Mesh) -> None:
    r = subprocess.run(
        [*CLI, "submit", "--key", str(trusting_mesh.key), "--capability", "echo",
         "--payload", "via env", "--json"],
        capture_output=True, text=True, timeout=120,
        env=trusting_mesh.env(CRANKMESH_NATS=trusting_mesh.url),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _last_json(r)["output"] == "via env"


def test_a_batch_on_a_terminal_shows_a_progress_bar(trusting_mesh: Mesh) -> None:
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, "submit", "--nats", trusting_mesh.url, "--key", str(trusting_mesh.key),
         "--code", "import time\ntime.sleep(0.3)", "--count", "4", "--wait-peers", "5"],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
        env=trusting_mesh.env(TERM="xterm-256color"),
    )  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=60) == 0, seen[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = seen.decode("utf-8", "replace")
    assert "jobs" in text and "━" in text, text[-3000:]  # the bar
    assert "4 ok, 0 failed" in text
