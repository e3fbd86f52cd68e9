"""`crankmesh node` as an operator runs it: metrics, graceful shutdown, production mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crankmesh.keystore import save_identity
from crankmesh.originator import Client, Job
from crankmesh.protocol import subjects
from crankmesh.protocol.cid import cid_for_blob
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import Announce, JobSpec
from crankmesh.testing import NatsServer

from .helpers import raw_connection
from .test_cli import CLI, DEV_ENV

pytestmark = [pytest.mark.integration]


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], dict]:
    proc = subprocess.Popen(
        [*CLI, "node", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"node did not start: {err[-3000:]}")
    return proc, json.loads(line)


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _sum(metrics: dict, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lab), v in metrics.items()
        if n == name and all(dict(lab).get(k) == x for k, x in labels.items())
    )


def test_metrics_match_jobs_and_sigterm_drains_a_running_job(nats_server, tmp_path: Path):
    proc, ready = _start(
        [
            "--nats",
            nats_server.url,
            "--key",
            str(tmp_path / "n.key"),
            "--capabilities",
            "echo,python.run",
            "--metrics-port",
            "0",
            "--log-level",
            "WARNING",
            "--drain-grace",
            "20",
        ],
        DEV_ENV,
    )
    try:
        assert ready["metrics"].startswith("http://127.0.0.1:")

        async def drive() -> tuple[list, object]:
            # the call-for-bids path, where every job is bid for (on a quote none is)
            async with Client(nats=nats_server.url, use_quotes=False) as client:
                await client.wait_for_peers("python.run", 1)
                done = [await client.run(Job.echo(b"%d" % i)) for i in range(5)]
                done += [await client.run(Job.python("print(1)")) for _ in range(3)]
                m = await anyio.to_thread.run_sync(_metrics, ready["metrics"])
                assert _sum(m, "crankmesh_job_bids_total") == 8
                assert _sum(m, "crankmesh_assignments_total", outcome="accepted") == 8
                assert _sum(m, "crankmesh_executions_started_total", capability="echo") == 5
                assert _sum(m, "crankmesh_executions_started_total", capability="python.run") == 3
                assert _sum(m, "crankmesh_receipts_total", status="ok") == 8
                assert ("crankmesh_directory_peers", ()) in m
                assert _sum(m, "crankmesh_rejections_total") == 0
                # RFC 0022 §7's names, as aliases with the same values
                assert _sum(m, "job_bids_total") == 8
                assert _sum(m, "assignments_total", outcome="accepted") == 8
                assert _sum(m, "execution_start_total", capability="python.run") == 3
                # every family is crankmesh's, the process collector's or the platform's
                names = {n for n, _ in m}
                assert all(
                    n.startswith(("crankmesh_", "process_", "python_"))
                    or n in {"job_bids_total", "assignments_total", "execution_start_total"}
                    for n in names
                ), sorted(names)
                assert _sum(m, "process_resident_memory_bytes") > 1_000_000
                health_url = ready["metrics"].replace("/metrics", "/healthz")
                health = json.loads(
                    await anyio.to_thread.run_sync(
                        lambda: urllib.request.urlopen(health_url, timeout=5).read()
                    )
                )
                assert health["status"] == "ok" and health["did"] == ready["did"]
                # the load the node advertises, as `peers` shows it: max_concurrency slots
                peer = client.directory.get(ready["did"])
                assert peer is not None
                load = peer.advert.load
                assert health["capacity"] == load.capacity > 0
                # SIGTERM while a 2 s job runs: the job's receipt still arrives.
                handle = client.submit(
                    Job.python("import time\ntime.sleep(2)\nprint('done')", timeout_sec=10)
                )
                async for event in handle.watch():
                    if event.kind in ("accepted", "completed", "failed"):
                        break
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                r = await handle.result()
                return done, (r, time.monotonic() - t0)

        done, (r, elapsed) = anyio.run(drive)
        assert all(x.ok for x in done)
        assert r.ok and r.stdout == "done\n" and r.executor == ready["did"]
        proc.communicate(timeout=25)
        assert proc.returncode == 0
        assert elapsed < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_production_mode_refuses_to_start_naming_what_is_missing(tmp_path: Path):
    env = {**os.environ, "CRANKMESH_ENV": "production", "CRANKMESH_HOME": str(tmp_path)}
    r = subprocess.run([*CLI, "node"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2
    err = r.stderr.lower()
    assert "production" in err
    for missing in ("key", "nats", "tls", "credentials", "trust"):
        assert missing in err, (missing, r.stderr)


def test_ci_without_crankmesh_env_means_production(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "CRANKMESH_ENV"}
    env.update(CI="true", CRANKMESH_HOME=str(tmp_path))
    r = subprocess.run(
        [*CLI, "node", "--print-config"], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 1 and 'mode = "production"' in r.stdout


@pytest.mark.anyio
async def test_production_node_rejects_and_counts_untrusted_signers(tmp_path: Path):
    member, outsider = Identity.generate(), Identity.generate()
    key = tmp_path / "node.key"
    save_identity(Identity.generate(), key)
    async with NatsServer(token="s3cret-token") as server:
        env = {**os.environ, "CRANKMESH_ENV": "production"}
        proc, ready = await anyio.to_thread.run_sync(
            lambda: _start(
                [
                    "--nats",
                    server.url,
                    "--nats-token",
                    "s3cret-token",
                    "--key",
                    str(key),
                    "--trust",
                    member.did,
                    "--capabilities",
                    "echo",
                    "--metrics-port",
                    "0",
                    "--state-dir",
                    str(tmp_path),
                    "--log-level",
                    "WARNING",
                ],
                env,
            )
        )
        try:
            assert ready["mode"] == "production"
            async with raw_connection(f"nats://s3cret-token@127.0.0.1:{server.port}") as nc:
                now = time.time_ns() // 1_000_000
                for signer in (outsider, member):
                    job = JobSpec(
                        capability="echo",
                        originator=signer.did,
                        created=now,
                        nonce=os.urandom(16),
                        payload=cid_for_blob(b"x"),
                        payload_size=1,
                        deadline=now + 60_000,
                    )
                    env_ = Announce(signer=signer.did, ts=now, exp=now + 30_000, job=job).sign(
                        signer
                    )
                    await nc.publish(subjects.announce("default", "echo"), env_.raw)
                await nc.flush()
                await anyio.sleep(0.5)
            m = await anyio.to_thread.run_sync(_metrics, ready["metrics"])
            assert _sum(m, "crankmesh_rejections_total", kind="announce", reason="untrusted") == 1
            assert _sum(m, "crankmesh_job_bids_total") == 1  # the member's job got a bid
        finally:
            proc.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=20))
        assert proc.returncode == 0


def test_print_config_shows_precedence(tmp_path: Path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('price = 1500\nname = "from-file"\nfederation = "file-fed"\n')
    env = {**DEV_ENV, "CRANKMESH_FEDERATION": "env-fed", "CRANKMESH_HOME": str(tmp_path)}
    r = subprocess.run(
        [*CLI, "node", "--config", str(cfg), "--price", "2500", "--print-config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "price = 2500" in r.stdout  # flag beats file
    assert 'federation = "env-fed"' in r.stdout  # env beats file
    assert 'name = "from-file"' in r.stdout  # file beats default


def test_json_logs_carry_job_cid_and_the_originators_trace_id(nats_server, tmp_path: Path):
    proc, ready = _start(
        [
            "--nats",
            nats_server.url,
            "--key",
            str(tmp_path / "n.key"),
            "--capabilities",
            "echo",
            "--log-format",
            "json",
            "--log-level",
            "INFO",
        ],
        DEV_ENV,
    )
    try:

        async def drive():
            async with Client(nats=nats_server.url) as client:
                await client.wait_for_peers("echo", 1)
                return await client.run(Job.echo(b"traced"))

        r = anyio.run(drive)
        assert r.ok and len(r.trace_id) == 16
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    about_job = [x for x in lines if x.get("job_cid") == r.job_cid]
    assert about_job, err[-2000:]
    assert all(x.get("trace_id") == r.trace_id for x in about_job)
    assert {"timestamp", "level", "logger", "event"} <= set(about_job[0])
    # facts are fields, not words in the event string
    started = [x for x in about_job if x["event"] == "job started"]
    assert started and started[0]["capability"] == "echo" and started[0]["attempt"] == 1
    assert started[0]["peer"].startswith("did:key:z6Mk")
    finished = [x for x in about_job if x["event"] == "job finished"]
    assert finished, [x["event"] for x in about_job]
    assert finished[0]["status"] == "ok" and finished[0]["capability"] == "echo"
    assert finished[0]["receipt_cid"] == r.receipt_cid
    assert isinstance(finished[0]["duration_ms"], float) and finished[0]["duration_ms"] >= 0
    joined = [x for x in lines if x["event"] == "peer joined"]
    assert all(x["peer"].startswith("did:key:") and x["capability"] for x in joined)


@pytest.mark.anyio
async def test_production_node_with_nkey_credentials_serves_jobs(tmp_path: Path):
    nkeys = pytest.importorskip("nkeys")
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed)
    seed_file.chmod(0o600)
    key = tmp_path / "node.key"
    node_identity = Identity.generate()
    save_identity(node_identity, key)
    me = Identity.generate()
    async with NatsServer(authorization=f'users = [ {{ nkey: "{public}" }} ]') as server:
        env = {**os.environ, "CRANKMESH_ENV": "production"}
        proc, ready = await anyio.to_thread.run_sync(
            lambda: _start(
                [
                    "--nats",
                    server.url,
                    "--nats-nkey-seed-file",
                    str(seed_file),
                    "--key",
                    str(key),
                    "--trust",
                    me.did,
                    "--capabilities",
                    "echo",
                    "--state-dir",
                    str(tmp_path),
                    "--log-level",
                    "WARNING",
                    "--metrics-port",
                    "0",
                ],
                env,
            )
        )
        try:
            assert ready["mode"] == "production" and ready["did"] == node_identity.did
            from crankmesh.transport import NatsOptions

            opts = NatsOptions(servers=(server.url,), nkeys_seed=str(seed_file))
            async with Client(nats=opts, identity=me) as client:
                await client.wait_for_peers("echo", 1)
                r = await client.run(Job.echo(b"authenticated"))
                assert r.ok and r.executor == node_identity.did
        finally:
            proc.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=20))
        assert proc.returncode == 0
