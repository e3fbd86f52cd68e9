"""``crankmesh pipeline plan|run`` as a user runs it: subprocesses against real nodes,
including an originator SIGKILLed after step 2 of 4 and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from crankmesh.node import Node
from crankmesh.protocol.envelope import open_envelope
from crankmesh.protocol.messages import Receipt, decode_message
from crankmesh.receipts.export import read_stream
from crankmesh.receipts.store import stream_name

from .helpers import mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]

FOUR = """\
pipeline: four
steps:
  - name: a
    python: "result = 'hello'"
  - name: b
    python: "result = args['inputs']['a'] + ' world'"
    inputs: [a]
  - name: c
    capability: text.upper
    inputs: [b]
  - name: d
    python: "print(args['inputs']['c'] + '!')"
    inputs: [c]
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CRANKMESH_NATS"}
    env["CRANKMESH_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "crankmesh.cli", "pipeline", *args]


def _start(argv: list[str], env: dict[str, str], errfile: Path) -> subprocess.Popen[bytes]:
    with open(errfile, "wb") as err:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)


async def _upper(data: bytes) -> bytes:
    return data.upper()


async def _ok_receipts(url: str, want: int) -> list[Receipt]:
    """The ok receipts in the federation's stream (waiting, bounded, for ``want``)."""
    out: list[Receipt] = []
    async with raw_connection(url) as nc:
        with anyio.move_on_after(10):
            while True:
                out = []
                for rec in await read_stream(nc, stream_name("default")):
                    env = open_envelope(rec.data)
                    if env.type == "receipt":
                        _, receipt = decode_message(env, Receipt)
                        if receipt.status == "ok":
                            out.append(receipt)
                if len(out) >= want:
                    break
                await anyio.sleep(0.2)
    return out


async def test_originator_killed_after_step_2_resumes_running_only_steps_3_and_4(
    nats_server, tmp_path
):
    pipe = tmp_path / "four.yaml"
    pipe.write_text(FOUR)
    state = tmp_path / "state"
    log = state / "runs" / "r1.jsonl"
    env = _env(tmp_path)
    async with mesh(nats_server.url, [node_config(0, capabilities=("python.run",))]):
        # Nobody offers text.upper yet: step 3 cannot start before the kill.
        errfile = tmp_path / "first-run.stderr"
        proc = _start(
            _cli("run", str(pipe), "--nats", nats_server.url, "--run-id", "r1",
                 "--state-dir", str(state), "--wait-peers", "0"),
            env, errfile,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if log.exists() and '"key":"b"' in log.read_text():
                    proc.send_signal(signal.SIGKILL)
                    break
                if proc.poll() is not None:
                    break
                await anyio.sleep(0.005)
            rc = proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert rc == -signal.SIGKILL, errfile.read_text()
        done = [json.loads(x)["key"] for x in log.read_text().splitlines() if '"step"' in x]
        assert done == ["a", "b"]

        cfg = node_config(1, capabilities=("python.run",))
        async with Node(nats=nats_server.url, config=cfg, services={"text.upper": _upper}):
            resumed = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    _cli("run", str(pipe), "--nats", nats_server.url, "--resume", "r1",
                         "--state-dir", str(state), "--json"),
                    env=env, capture_output=True, text=True, timeout=60,
                )
            )
            assert resumed.returncode == 0, resumed.stderr
            doc = json.loads(resumed.stdout)
            sources = {s["key"]: s["source"] for s in doc["run"]["steps"]}
            assert sources == {"a": "resumed", "b": "resumed", "c": "run", "d": "run"}
            job_cids = {s["job_cid"] for s in doc["run"]["steps"]}
            receipts = await _ok_receipts(nats_server.url, 4)
            await anyio.sleep(0.5)  # anything late would show up too
            receipts = await _ok_receipts(nats_server.url, 4)
            audited = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [sys.executable, "-m", "crankmesh.cli", "audit", "--nats", nats_server.url,
                     "--pipeline-runs", str(state), "--json"],
                    env=env, capture_output=True, text=True, timeout=60,
                )
            )
    report = json.loads(audited.stdout)
    (group,) = report["pipeline_runs"]
    assert group["run_id"] == "r1" and group["pipeline"] == "four" and group["ok"], group
    assert [s["verdict"] for s in group["steps"]] == ["verified"] * 4
    assert audited.returncode == (0 if report["ok"] else 1), audited.stderr
    # Exactly one ok receipt per step, and none for anything else.
    assert sorted(r.job for r in receipts) == sorted(job_cids) and len(receipts) == 4


async def test_pipeline_plan_cli_prints_every_format_and_exits_1_on_a_mismatch(
    nats_server, tmp_path
):
    pipe = tmp_path / "four.yaml"
    pipe.write_text(FOUR)
    env = _env(tmp_path)
    async with mesh(nats_server.url, [node_config(0, capabilities=("python.run",))]) as nodes:

        def plan(fmt: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                _cli("plan", str(pipe), "--nats", nats_server.url, "--format", fmt,
                     "--wait-peers", "1"),
                env=env, capture_output=True, text=True, timeout=60,
            )

        out = {fmt: await anyio.to_thread.run_sync(plan, fmt) for fmt in ("json", "mermaid", "dot")}
    for fmt, proc in out.items():
        assert proc.returncode == 1, (fmt, proc.stderr)  # nobody offers text.upper
    doc = json.loads(out["json"].stdout)
    by = {s["step"]: s for s in doc["steps"]}
    assert by["c"]["mismatch"] == "no live executor offers text.upper"
    assert [c["executor"] for c in by["a"]["candidates"]] == [nodes[0].did]
    assert out["mermaid"].stdout.startswith("flowchart LR")
    assert nodes[0].did in out["mermaid"].stdout and "s_d" in out["mermaid"].stdout
    assert out["dot"].stdout.startswith('digraph "four"') and '"step:c"' in out["dot"].stdout


def test_pipeline_cli_usage_errors_exit_2(tmp_path):
    env = _env(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: x\nsteps:\n  - name: a\n    python: 'pass'\n    each: nope\n")
    proc = subprocess.run(_cli("plan", str(bad)), env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "'nope', which is no step" in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text("pipeline: x\nsteps:\n  - name: a\n    python: 'pass'\n")
    proc = subprocess.run(
        _cli("run", str(good), "--resume", "nosuchrun", "--state-dir", str(tmp_path)),
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "no pipeline run 'nosuchrun'" in proc.stderr


TWO = """\
pipeline: two
steps:
  - name: a
    python: "result = 6"
  - name: b
    python: "result = args['inputs']['a'] * 7"
    inputs: [a]
"""


def test_zero_config_run_reuse_and_budget_options(tmp_path):
    """No --nats: each command runs on its own local mesh; --reuse pays nothing the second
    time; --budget/--key halt when the token is too small, naming per-step spend."""
    from crankmesh.cli._token_cmds import write_chain_file
    from crankmesh.keystore import save_identity
    from crankmesh.protocol.identity import Identity
    from crankmesh.protocol.tokens import issue

    pipe = tmp_path / "two.yaml"
    pipe.write_text(TWO)
    env = _env(tmp_path)
    state = str(tmp_path / "state")

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _cli("run", str(pipe), "--state-dir", state, "--json", *extra),
            env=env, capture_output=True, text=True, timeout=90,
        )

    first = run()
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["costs"]["total"] == {"USD": 2000}
    assert doc["run"]["steps"][1]["inputs"] == {"a": [doc["run"]["steps"][0]["result_cid"]]}
    again = run("--reuse")
    assert again.returncode == 0, again.stderr
    doc2 = json.loads(again.stdout)
    assert {s["source"] for s in doc2["run"]["steps"]} == {"reused"}
    assert doc2["costs"]["total"] == {"USD": 0}
    assert run().returncode == 0  # without --reuse it pays again (checked in the SDK test)

    me, bank = Identity.generate(), Identity.generate()
    key = save_identity(me, tmp_path / "me.key")
    now = time.time_ns() // 1_000_000
    token = issue(bank, audience=me.did, scope="*", amount=1500, now_ms=now, ttl_ms=600_000)
    chain = write_chain_file(tmp_path / "budget.json", [token])
    paid = run("--budget", str(chain), "--key", str(key))
    assert paid.returncode == 1, paid.stderr
    err = json.loads(paid.stdout)
    assert err["error"] == "PipelineBudgetExceeded"
    assert err["spent_by_step"] == {"a": 1000}
    missing_key = run("--budget", str(chain))
    assert missing_key.returncode == 2 and "--budget needs --key" in missing_key.stderr


async def test_plan_uses_the_federation_option(nats_server, tmp_path):
    pipe = tmp_path / "two.yaml"
    pipe.write_text(TWO)
    env = _env(tmp_path)
    cfg = node_config(0, capabilities=("python.run",), federation="fedx")
    async with mesh(nats_server.url, [cfg]) as (node,):

        def plan(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                _cli("plan", str(pipe), "--nats", nats_server.url, "--format", "json",
                     "--wait-peers", "1", *extra),
                env=env, capture_output=True, text=True, timeout=60,
            )

        other = await anyio.to_thread.run_sync(plan)
        ours = await anyio.to_thread.run_sync(plan, "--federation", "fedx")
    assert other.returncode == 1  # nobody in federation "default"
    assert ours.returncode == 0, ours.stderr
    doc = json.loads(ours.stdout)
    assert doc["steps"][0]["candidates"][0]["executor"] == node.did


def test_load_run_logs_reads_all_runs_or_only_the_named_ones(tmp_path):
    from crankmesh.cli._pipeline_cmds import load_run_logs
    from crankmesh.originator._pipeline_log import RunLog

    for rid in ("r1", "r2"):
        RunLog(tmp_path, rid).start({"pipeline": rid})
    assert sorted(load_run_logs(str(tmp_path))) == ["r1", "r2"]
    assert list(load_run_logs(str(tmp_path), ["r2"])) == ["r2"]
    with pytest.raises(ValueError, match="no pipeline run 'r3'"):
        load_run_logs(str(tmp_path), ["r3"])
