"""`crankmesh peers`, `crankmesh top` and `crankmesh explain`, run as real subprocesses
against a real nats-server while in-process nodes serve the mesh in the test's event loop
(seed 003: "Capability-Based Discovery", "Scheduling Observability")."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import pytest

from crankmesh.cli import build_parser
from crankmesh.node import Node
from crankmesh.originator import ClientConfig, Job
from crankmesh.originator.explain_service import serve_explanations
from crankmesh.protocol.cid import cid_for_document

from .helpers import mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

#: Subprocesses run in development mode (CI=true would otherwise select production mode).
DEV_ENV = {**os.environ, "CRANKMESH_ENV": "development"}

# Until `peers`/`top`/`explain` are wired into `crankmesh.cli.build_parser`, run them through
# a parser built from the same add_*_arguments functions.
_STANDALONE = """
import argparse, sys
from crankmesh.cli import _ops_cmds as ops
p = argparse.ArgumentParser(prog="crankmesh")
sub = p.add_subparsers(dest="command", required=True)
ops.add_peers_arguments(sub.add_parser("peers"))
ops.add_top_arguments(sub.add_parser("top"))
ops.add_explain_arguments(sub.add_parser("explain"))
args = p.parse_args()
sys.exit(args.fn(args))
"""


def _wired() -> bool:
    return any(
        isinstance(a, argparse._SubParsersAction) and {"peers", "top", "explain"} <= set(a.choices)
        for a in build_parser()._actions
    )


CLI = [sys.executable, "-m", "crankmesh.cli"] if _wired() else [sys.executable, "-c", _STANDALONE]

GPU_24 = {"gpu": {"type": "cuda", "model": "RTX 4090", "memory_gb": 24}}
GPU_8 = {"gpu": {"type": "cuda", "model": "RTX 3070", "memory_gb": 8}}
ROCM_32 = {"gpu": {"type": "rocm", "model": "MI50", "memory_gb": 32}}


async def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI without blocking the event loop that serves the in-process nodes."""
    done = await anyio.run_process([*CLI, *args], env=DEV_ENV, check=False)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def run_many(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    results: list[Any] = [None] * len(commands)

    async def one(i: int, argv: list[str]) -> None:
        results[i] = await run_cli(*argv)

    async with anyio.create_task_group() as tg:
        for i, argv in enumerate(commands):
            tg.start_soon(one, i, argv)
    return results


def names(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [peer["name"] for peer in json.loads(result.stdout)]


@asynccontextmanager
async def explaining(nodes: list[Node]) -> AsyncIterator[None]:
    """Start the explanation service on every node (the daemon will do this itself)."""
    async with anyio.create_task_group() as tg:
        for node in nodes:
            assert node.client is not None
            await tg.start(
                partial(serve_explanations, node.nc, federation="default", client=node.client)
            )
        yield
        tg.cancel_scope.cancel()


async def test_peers_lists_filters_and_ranks_by_region_gpu_and_price(nats_server):
    url = nats_server.url
    configs = [
        node_config(0, hardware=GPU_24, region="us-east-1"),  # price 1000
        node_config(
            1,
            capabilities=("echo", "email.classify.spam-v1"),
            hardware=GPU_8,
            region="eu-central-1",
        ),  # price 2000
        node_config(2, hardware=ROCM_32, region="eu-west-1"),  # price 3000
    ]
    async with mesh(url, configs):
        base = ["peers", "--nats", url, "--listen-s", "2", "--json"]
        (
            every,
            capability,
            gpu,
            rocm,
            cheap,
            eu,
            eu_west,
            only_eu,
            text,
            nothing,
        ) = await run_many(
            base,
            [*base, "--capability", "email.classify.spam-v1"],
            [*base, "--gpu-type", "cuda", "--min-gpu-memory-gb", "16"],
            [*base, "--gpu-type", "amd"],
            [*base, "--capability", "echo", "--max-price", "0.0025"],
            [*base, "--region", "eu"],
            [*base, "--region", "eu-west-1"],
            [*base, "--region", "eu", "--only-region"],
            ["peers", "--nats", url, "--listen-s", "2", "--region", "eu-west-1"],
            ["peers", "--nats", url, "--listen-s", "2", "--capability", "no.such"],
        )
    # all peers, the cheapest (then least loaded) first when there is no region preference
    assert names(every) == ["node-0", "node-1", "node-2"]
    peer = json.loads(every.stdout)[0]
    assert peer["did"].startswith("did:key:z6Mk") and peer["region"] == "us-east-1"
    assert peer["capabilities"][0]["name"] == "echo" and peer["capabilities"][0]["price"] == 1000
    assert peer["gpus"] == [{"index": 0, "memory_mb": 24576, "model": "RTX 4090", "type": "cuda"}]
    assert peer["load"] == 0 and peer["draining"] is False
    assert names(capability) == ["node-1"]
    # seed 003 "Query by GPU type": CUDA with 16 GB+ finds only the 24 GB CUDA node
    assert names(gpu) == ["node-0"]
    assert names(rocm) == ["node-2"]  # an alias of rocm
    # "Query by cost constraints": 0.0025 units = 2500 µ-units drops the 3000 node
    assert names(cheap) == ["node-0", "node-1"]
    # "Query by geographic region": exact, then prefix, then near, then the others
    assert names(eu) == ["node-1", "node-2", "node-0"]
    assert names(eu_west) == ["node-2", "node-1", "node-0"]
    assert [p["region_match"] for p in json.loads(eu_west.stdout)] == ["exact", "near", "other"]
    assert names(only_eu) == ["node-1", "node-2"]
    # the table: one row per capability, the eu-west node first
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "DID",
        "REGION",
        "LOAD",
        "ISOLATION",
        "GPU",
        "CAPABILITY",
        "PRICE",
        "P95",
    ]
    assert lines[1].startswith("node-2") and "eu-west-1" in lines[1] and "rocm MI50 32G" in lines[1]
    assert "3000 µUSD" in lines[1] and "0.00 (0+0/" in lines[1]
    assert any("email.classify.spam-v1" in line and "2000 µUSD" in line for line in lines)
    assert "3 of 3 peers match" in text.stdout
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout.startswith("no peers match")


async def test_explain_shows_every_bid_from_the_node_that_ran_the_job(nats_server):
    url = nats_server.url
    # A minimum window so every bid is in the explanation (otherwise the window closes
    # as soon as no outstanding bidder could beat the cheapest bid).
    window = ClientConfig(min_bid_window_ms=200, max_bid_window_ms=400)
    async with mesh(url, [node_config(i, client=window) for i in range(3)]) as nodes:
        async with explaining(nodes):
            origin = nodes[1]
            assert origin.client is not None
            assert await origin.client.wait_for_peers("echo", 3) == 3
            result = await origin.client.run(Job.echo(b"x"))
            unknown = cid_for_document(b"\x81\xa1a\x01")
            as_json, as_text, missing, invalid = await run_many(
                ["explain", result.job_cid, "--nats", url, "--json"],
                ["explain", result.job_cid, "--nats", url],
                ["explain", unknown, "--nats", url, "--timeout", "0.5"],
                ["explain", "not-a-cid", "--nats", url],
            )
    assert as_json.returncode == 0, as_json.stderr
    reply = json.loads(as_json.stdout)
    assert reply["job_cid"] == result.job_cid and reply["node"] == origin.did
    explanation = reply["explanation"]
    assert explanation["policy"] == "cost"
    considered = explanation["considered"]
    assert {c["executor"] for c in considered} == {n.did for n in nodes}
    for c in considered:  # every bid with its score, or the filter it failed
        assert c["score"] is not None or c["failed_filter"], c
    assert explanation["winner"]["executor"] == result.executor == nodes[0].did  # cheapest

    assert as_text.returncode == 0, as_text.stderr
    assert f"explained by {origin.did}" in as_text.stdout
    assert f"Selection for job {result.job_cid}" in as_text.stdout
    assert "selected:" in as_text.stdout and "reason:" in as_text.stdout

    assert missing.returncode == 1
    assert f"no node on this federation ran job {unknown}" in missing.stderr
    assert "nodes keep the last 1024 jobs" in missing.stderr
    assert invalid.returncode == 2 and "is not a job CID" in invalid.stderr


async def test_explain_without_any_explaining_node_exits_1_at_once(nats_server):
    cid = cid_for_document(b"\x80")
    with anyio.fail_after(10):
        done = await run_cli("explain", cid, "--nats", nats_server.url, "--timeout", "30")
    assert done.returncode == 1 and "no node on this federation ran job" in done.stderr


async def test_explain_service_ignores_garbage_and_unknown_jobs(nats_server):
    async with mesh(nats_server.url, [node_config(0)]) as (node,):
        async with explaining([node]):
            nc = node.nc
            inbox = nc.new_inbox()
            got: list[Any] = []

            async def collect(msg: Any) -> None:
                got.append(msg)

            await nc.subscribe(inbox, cb=collect)
            for subject in ("crank.default.explain.garbage", "crank.default.explain.bafy"):
                await nc.publish(subject, os.urandom(64), reply=inbox)
            await nc.publish("crank.default.explain.x", b"no reply subject")
            await nc.flush()
            await anyio.sleep(0.3)
            assert got == []
            # the service still answers for a job it ran
            assert node.client is not None
            await node.client.wait_for_peers("echo", 1)
            result = await node.client.run(Job.echo(b"y"))
            msg = await nc.request(f"crank.default.explain.{result.job_cid}", b"\xff", timeout=2)
            body = json.loads(msg.data)
            assert body["node"] == node.did and "render" in body
            assert body["explanation"]["job_cid"] == result.job_cid


async def test_top_shows_peers_and_message_counts_while_jobs_run(nats_server):
    url = nats_server.url
    async with mesh(url, [node_config(i) for i in range(2)]) as nodes:
        client = nodes[0].client
        assert client is not None
        assert await client.wait_for_peers("echo", 2) == 2
        results: list[subprocess.CompletedProcess[str]] = []

        async def watch() -> None:
            results.extend(
                await run_many(
                    # 2 frames 1 s apart: every node (advertising every second) is in the last
                    ["top", "--nats", url, "--iterations", "2", "--interval", "1"],
                    ["top", "--nats", url, "--iterations", "2", "--interval", "1", "--json"],
                )
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            jobs = 0
            while not results:  # an auction: announces and bids for top to count
                await client.run(dataclasses.replace(Job.echo(b"tick"), auction=True))
                jobs += 1
                await anyio.sleep(0.05)
    text, as_json = results
    assert text.returncode == 0, text.stderr
    frames = text.stdout.split("-" * 72)
    assert len(frames) == 2
    last = frames[-1]
    assert "PEERS (2)" in last and "node-0" in last and "node-1" in last and "echo" in last
    totals = {
        line.split()[0]: int(line.split()[-1])
        for line in last.splitlines()
        if line.strip()
        and line.split()[0] in ("announces", "bids", "assignments", "receipts", "closes", "adverts")
    }
    assert len(totals) == 6
    assert totals["announces"] > 0 and totals["bids"] > 0 and totals["adverts"] > 0
    assert totals["assignments"] > 0 and totals["receipts"] > 0
    assert as_json.returncode == 0, as_json.stderr
    objs = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(objs) == 2
    assert {p["name"] for p in objs[-1]["peers"]} == {"node-0", "node-1"}
    assert objs[-1]["messages"]["announces"]["total"] >= objs[-1]["messages"]["announces"]["last"]
    assert objs[-1]["messages"]["bids"]["total"] > 0
