"""``crankmesh top``: LOAD measured from the receipts, colours and ``q`` on a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import anyio
import pytest

from crankmesh.originator import Job

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration]

CLI = [sys.executable, "-m", "crankmesh.cli"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CRANKMESH_")}


async def slow(payload: bytes) -> bytes:
    await anyio.sleep(0.15)
    return payload


@pytest.mark.anyio
async def test_top_load_is_measured_from_receipts_while_jobs_run(nats_server) -> None:
    url = nats_server.url
    cfg = node_config(0, capabilities=("slow",), max_concurrency=1)
    async with mesh(url, [cfg], slow=slow):
        async with client_for(url, "slow", 1) as client:
            done = anyio.Event()
            result: list[subprocess.CompletedProcess[str]] = []

            async def watch() -> None:
                result.append(
                    await anyio.run_process(
                        [
                            *CLI,
                            "top",
                            "--nats",
                            url,
                            "--iterations",
                            "2",
                            "--interval",
                            "1.5",
                            "--json",
                        ],
                        env=ENV,
                        check=False,
                    )
                )
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                while not done.is_set():
                    await client.run(Job.call("slow", b"x"))
    (r,) = result
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.splitlines()[-1])
    (peer,) = [p for p in last["peers"] if p["name"] == "node-0"]
    # one job at a time, each sleeping 0.15 s, back to back: busy most of the interval
    assert peer["busy"] > 0.2, peer
    assert peer["jobs_per_s"] > 0 and peer["load"] >= peer["busy"]


def test_top_on_a_terminal_is_coloured_and_q_quits(nats_server) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, "top", "--nats", nats_server.url, "--interval", "0.2"],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**ENV, "TERM": "xterm-256color"},
        close_fds=True,
    )
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"MESSAGES" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                seen += os.read(master, 65536)
        assert b"MESSAGES" in seen, seen[-2000:]
        assert b"\x1b[" in seen  # ANSI styles: colour on a terminal
        os.write(master, b"q")
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0 and b"Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        os.close(master)


@pytest.mark.anyio
async def test_healthz_capacity_is_what_peers_shows(nats_server) -> None:
    url = nats_server.url
    cfg = node_config(0, max_concurrency=3, queue_depth=5)
    async with mesh(url, [cfg]) as (node,):
        health = node.health()
        r = await anyio.run_process(
            [*CLI, "peers", "--nats", url, "--json", "--listen-s", "1.5"], env=ENV, check=False
        )
    assert r.returncode == 0, r.stderr
    (peer,) = json.loads(r.stdout)
    assert health["capacity"] == peer["capacity"] == 3
    assert health["queue_depth"] == 5
