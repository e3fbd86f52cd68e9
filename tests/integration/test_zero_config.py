"""Zero-config mode (seed 003 quick-start): no URL and no CRANKMESH_NATS → a local mesh."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crankmesh import Client, ClientStateError, Job, SyncClient
from crankmesh.originator._local_mesh import ENV_NATS

from .helpers import mesh, node_config

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
ONE_LINER = (
    "from crankmesh import SyncClient, Job; "
    'print(SyncClient().run(Job.python("print(42)")).stdout)'
)


def _env_without_nats(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_NATS}
    env["CRANKMESH_HOME"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_sync_client_one_liner_prints_42_with_no_server(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", ONE_LINER],
        cwd=tmp_path,
        env=_env_without_nats(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"


def test_submit_without_nats_runs_on_a_local_mesh(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "crankmesh.cli", "submit", "--code", "print(6*7)", "--json"],
        cwd=tmp_path,
        env=_env_without_nats(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "ok" and out["stdout"].strip() == "42" and out["verified"]


def test_readme_first_code_sample_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    sample = re.search(r"```python\n(.*?)```", readme, re.S)
    assert sample is not None, "README has no python code sample"
    script = tmp_path / "sample.py"
    script.write_text(sample.group(1))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_env_without_nats(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "6"  # sum([1, 2, 3]), then executor, price, receipt


@pytest.mark.anyio
async def test_crankmesh_nats_switches_to_the_real_mesh(nats_server, monkeypatch) -> None:
    monkeypatch.setenv(ENV_NATS, nats_server.url)
    async with mesh(nats_server.url, [node_config(0, capabilities=("echo",))]) as nodes:
        async with Client() as client:
            assert not client.zero_config
            await client.wait_for_peers("echo", 1, wait_s=10)
            r = await client.run(Job.echo(b"real"))
    assert r.executor == nodes[0].did and r.output == b"real"


@pytest.mark.anyio
async def test_zero_config_client_runs_on_its_own_node_and_stops_it(monkeypatch) -> None:
    monkeypatch.delenv(ENV_NATS, raising=False)
    client = Client()
    assert client.zero_config
    async with client:
        r = await client.run(Job.echo(b"local"))
        assert r.executor == client.local_executor and r.ok
        nc = client._nc
    assert nc.is_closed


def test_sync_client_with_block_reuses_one_local_mesh(monkeypatch) -> None:
    monkeypatch.delenv(ENV_NATS, raising=False)
    with SyncClient() as c:
        a = c.run(Job.echo(b"a"))
        b = c.run(Job.echo(b"b"))
    assert a.executor == b.executor and a.ok and b.ok


def test_pipelines_doc_first_sample_runs_as_written(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "pipelines.md").read_text()
    sample = re.search(r"```python\n(.*?)```", doc, re.S)
    assert sample is not None
    script = tmp_path / "pipeline_sample.py"
    script.write_text(sample.group(1))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_env_without_nats(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 spam" in proc.stdout and "summarize" in proc.stdout


def test_sync_client_one_shot_calls_repeat_but_a_closed_one_stays_closed(monkeypatch) -> None:
    monkeypatch.delenv(ENV_NATS, raising=False)
    c = SyncClient()
    assert c.run(Job.echo(b"1")).output == b"1"
    assert c.run(Job.echo(b"2")).output == b"2"  # each call its own local mesh
    with SyncClient() as d:
        d.run(Job.echo(b"3"))
    with pytest.raises(ClientStateError):
        d.run(Job.echo(b"4"))
    with pytest.raises(ClientStateError):
        d.__enter__()
