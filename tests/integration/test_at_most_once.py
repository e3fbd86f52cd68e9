"""At most once across pauses and drains (RFC 0001 §10.7): an executor that was paused
past its advert TTL, whose assignment deadline passed, or whose drain grace expired,
hands its jobs back with a signed Reject instead of delivering them; the originator
reassigns at once, and JetStream holds exactly one receipt per job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest

from crankmesh.originator import Job
from crankmesh.protocol import subjects
from crankmesh.protocol.messages import Assignment, Constraints, Receipt, Reject, decode_message
from crankmesh.receipts.export import read_stream
from crankmesh.receipts.store import stream_name

from .helpers import client_for, mesh, node_config, raw_connection
from .test_cli import CLI, DEV_ENV, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@contextmanager
def victim_node(
    url: str, tmp_path: Path, *extra: str
) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """A ``crankmesh node`` subprocess (the cheapest python.run executor) whose
    stderr goes to a file the test reads afterwards."""
    log = tmp_path / "victim.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                *CLI,
                "node",
                "--nats",
                url,
                "--key",
                str(tmp_path / "victim.key"),
                "--log-level",
                "WARNING",
                "--capabilities",
                "python.run",
                "--price",
                "1",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=DEV_ENV,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"node did not start: {log.read_text()[-2000:]}")
        ready = json.loads(line)
        assert ready["event"] == "ready"
        yield proc, ready["did"], log
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.communicate(timeout=20)


async def receipts_per_job(url: str) -> Counter[str]:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        records = await read_stream(nc, stream_name("default"))
    finally:
        await nc.close()
    counts: Counter[str] = Counter()
    for r in records:
        if ".receipts." in r.subject:
            _, receipt = decode_message(r.data, Receipt)
            counts[receipt.job] += 1
    return counts


@pytest.mark.slow
async def test_200_jobs_with_the_winner_paused_20s_none_lost_none_run_twice(
    nats_server, tmp_path: Path
) -> None:
    cfgs = [node_config(i, capabilities=("python.run",), price=5000 + i) for i in range(2)]
    async with mesh(nats_server.url, cfgs):
        with victim_node(nats_server.url, tmp_path) as (proc, victim, log):
            async with client_for(nats_server.url, "python.run", 3, busy_wait_s=60) as client:
                results: dict[int, object] = {}
                job_cids: dict[int, str] = {}
                paused = anyio.Event()

                async def pause_winner() -> None:
                    os.kill(proc.pid, signal.SIGSTOP)
                    paused.set()
                    await anyio.sleep(20)
                    os.kill(proc.pid, signal.SIGCONT)

                async def one(i: int, limit: anyio.Semaphore, tg: anyio.abc.TaskGroup) -> None:
                    async with limit:
                        r = await client.run(
                            Job.python(
                                "import time\ntime.sleep(0.05)\nprint(args['i'])",
                                {"i": i},
                                timeout_sec=5,
                            )
                        )
                    assert r.ok and r.stdout == f"{i}\n", (r.status, r.stderr)
                    results[i] = r
                    job_cids[i] = r.job_cid
                    if len(results) == 60 and not paused.is_set():
                        tg.start_soon(pause_winner)

                limit = anyio.Semaphore(8)
                with anyio.fail_after(150):
                    async with anyio.create_task_group() as tg:
                        for i in range(200):
                            tg.start_soon(one, i, limit, tg)
                assert paused.is_set()
            # Give the resumed victim time to finish what it held and answer for it.
            await anyio.sleep(3)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        victim_log = log.read_text()
        counts = await receipts_per_job(nats_server.url)
    assert sorted(results) == list(range(200))  # none lost
    by_executor = Counter(r.executor for r in results.values())  # type: ignore[attr-defined]
    assert by_executor[victim] > 0  # the victim won work before its pause
    # It held jobs when paused; resumed, it handed them back instead of delivering them
    # (fenced because its presence lapsed, or because their deadline passed meanwhile).
    assert "handed back, result fenced:" in victim_log, victim_log[-3000:]
    assert set(counts) >= set(job_cids.values())
    twice = {cid: n for cid, n in counts.items() if n > 1}
    assert not twice, twice  # none run twice: one receipt per job CID in JetStream
    audit = run_cli("audit", "--nats", nats_server.url, "--json", timeout=120)
    assert audit.returncode == 0, audit.stdout[-2000:] + audit.stderr[-2000:]


async def test_a_job_whose_deadline_passed_in_the_queue_is_handed_back_not_started(
    nats_server,
) -> None:
    started: list[bytes] = []
    first_started = anyio.Event()

    async def slow(payload: bytes) -> bytes:
        started.append(payload)
        first_started.set()
        await anyio.sleep(float(payload))
        return payload

    cfg = node_config(0, capabilities=(), max_concurrency=1, advert_interval_s=1.0)
    async with (
        mesh(nats_server.url, [cfg], slow=slow) as (node,),
        raw_connection(nats_server.url) as sniffer,
    ):
        assignments: list[tuple[str, bytes]] = []

        async def grab(msg: Any) -> None:
            assignments.append((msg.subject, msg.data))

        await sniffer.subscribe("crank.default.jobs.*.assignment.*", cb=grab)
        await sniffer.flush()
        async with client_for(
            nats_server.url, "slow", 1, receipt_grace_ms=100, busy_wait_s=0
        ) as client:

            async def first() -> None:
                r = await client.run(
                    Job(capability="slow", payload=b"1.5", constraints=Constraints(timeout_ms=3000))
                )
                assert r.ok

            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                with anyio.fail_after(10):
                    await first_started.wait()
                t0 = time.monotonic()
                with pytest.raises(Exception) as info:
                    # Deadline = assigned + 200 ms + 100 ms grace: passed in the queue.
                    await client.run(
                        Job(
                            capability="slow", payload=b"0", constraints=Constraints(timeout_ms=200)
                        )
                    )
                waited = time.monotonic() - t0
            # The originator gave up at the deadline (+ grace after a re-send) ...
            attempts = info.value.attempts  # type: ignore[attr-defined]
            assert [a.outcome.split(":")[0] for a in attempts] == ["no_receipt"], attempts
            assert waited < 1.4  # ... before the slot came free (1.5 s)
        # ... and the executor, its turn come, did not start it: handed back, no receipt.
        with anyio.fail_after(5):
            while node.metrics.handed_back.labels(cause="deadline")._value.get() < 1:
                await node.directory.wait_changed()  # adverts: once a second
        assert started == [b"1.5"]
        # The same assignment again -- as the originator re-sends it at the deadline
        # (no reply subject), and as a request: the same signed hand-back, never a run.
        subject, raw = assignments[-1]
        _, asg = decode_message(raw, Assignment)
        heard: list[bytes] = []

        async def on_receipt(msg: Any) -> None:
            heard.append(msg.data)

        await sniffer.subscribe(subjects.receipt_delivery("default", asg.job), cb=on_receipt)
        await sniffer.publish(subject, raw)
        reply = await sniffer.request(subject, raw, timeout=2)
        await anyio.sleep(0.3)
        for data in (reply.data, *heard):
            env, rej = decode_message(data, Reject)
            env.verify()
            assert rej.reason == "handed_back" and rej.detail.startswith("deadline:")
            assert rej.signer == node.did and rej.job == asg.job
        assert len(heard) == 1 and heard[0] == reply.data
        assert started == [b"1.5"]
        assert node.record_store is not None
        await node.record_store.wait_flushed()  # records leave in batches (linger_s)
        counts = await receipts_per_job(nats_server.url)
    assert sorted(counts.values()) == [1]  # the first job's receipt only


async def test_a_drain_whose_grace_expires_hands_back_a_5s_job_which_runs_once_elsewhere(
    nats_server, tmp_path: Path
) -> None:
    cfg = node_config(0, capabilities=("python.run",), price=5000)
    async with mesh(nats_server.url, [cfg]) as (survivor,):
        with victim_node(nats_server.url, tmp_path, "--grace", "1") as (proc, victim, log):
            async with client_for(nats_server.url, "python.run", 2) as client:
                code = "import time\ntime.sleep(5)\nprint('done')"
                async with anyio.create_task_group() as tg:
                    out: list[object] = []

                    done = anyio.Event()

                    async def run() -> None:
                        out.append(await client.run(Job.python(code, timeout_sec=8)))
                        done.set()

                    tg.start_soon(run)
                    with anyio.fail_after(10):  # wait until the victim runs it
                        while not _running_on(victim, client):
                            await client.directory.wait_changed()
                    await anyio.sleep(0.5)
                    t0 = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    with anyio.fail_after(15):
                        await done.wait()
                    took = time.monotonic() - t0
            stopped = proc.wait(timeout=10)
        r = out[0]
        assert r.ok and r.stdout == "done\n", r  # type: ignore[attr-defined]
        assert r.executor == survivor.did  # type: ignore[attr-defined]
        outcomes = [a.outcome for a in r.attempts]  # type: ignore[attr-defined]
        assert len(outcomes) == 1 and outcomes[0].startswith("handed_back: drained"), outcomes
        # Handed back after the 1 s grace, reassigned at once: ~1 s + the 5 s rerun.
        assert took < 5 + 3.5, took
        assert stopped == 0
        assert "handed back, result fenced: drained" in log.read_text()
        assert survivor.record_store is not None
        await survivor.record_store.wait_flushed()  # records leave in batches (linger_s)
        counts = await receipts_per_job(nats_server.url)
    assert counts[r.job_cid] == 1  # type: ignore[attr-defined]


def _running_on(executor: str, client: object) -> bool:
    peer = client.directory.get(executor)  # type: ignore[attr-defined]
    return peer is not None and peer.advert.load.running > 0
