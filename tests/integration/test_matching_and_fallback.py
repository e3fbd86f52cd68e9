"""Capability requirements on a real mesh: matching, degraded matches, mismatch errors,
fallback chains (seed 003: "Capability Matching Algorithm", "Fallback Chains")."""

from __future__ import annotations

import logging

import pytest

from crankmesh import CapabilityMismatch, ExecutorsExhausted
from crankmesh.originator import Job

from .helpers import client_for, mesh, node_config

pytestmark = [
    pytest.mark.integration, pytest.mark.anyio,
    pytest.mark.usefixtures("both_paths"),  # quote and call-for-bids paths
]

GPU_BOX = {"gpu": {"type": "cuda", "model": "RTX 4090", "memory_gb": 24}}


async def test_required_gpu_goes_to_the_gpu_node_even_if_dearer(nats_server):
    cfgs = [node_config(0), node_config(1, price=9000, hardware=GPU_BOX)]
    async with mesh(nats_server.url, cfgs) as (cpu_node, gpu_node):
        async with client_for(nats_server.url, "echo", 2) as client:
            job = Job.call("echo", b"x", {"gpu": {"type": "cuda", "min_memory_gb": 8}})
            r = await client.run(job)
            assert r.ok and r.executor == gpu_node.did and r.price == 9000
            # without requirements the cheaper CPU node wins
            assert (await client.run(Job.echo(b"y"))).executor == cpu_node.did


async def test_required_gpu_with_none_raises_clear_mismatch(nats_server):
    async with mesh(nats_server.url, [node_config(0), node_config(1)]):
        async with client_for(nats_server.url, "echo", 2) as client:
            job = Job.call("echo", b"x", {"gpu": {"type": "cuda", "min_memory_gb": 8}})
            with pytest.raises(CapabilityMismatch) as info:
                await client.run(job)
            text = str(info.value)
            assert "needs gpu type cuda" in text and "executor has none" in text
            assert len(info.value.details) == 2  # one line per executor considered


async def test_preferred_gpu_with_only_cpu_runs_degraded_with_warning(nats_server, caplog):
    async with mesh(nats_server.url, [node_config(0)]) as (node,):
        async with client_for(nats_server.url, "echo", 1) as client:
            job = Job.call("echo", b"x", {"gpu": {"required": False, "preferred": True}})
            with caplog.at_level(logging.WARNING, logger="crankmesh.originator"):
                r = await client.run(job)
            assert r.ok and r.executor == node.did
            assert any("degraded" in w for w in r.warnings)
            assert "degraded match" in caplog.text


async def test_insufficient_memory_is_incompatible_with_explanation(nats_server):
    small = {"memory_gb": 16}
    async with mesh(nats_server.url, [node_config(0, hardware=small)]):
        async with client_for(nats_server.url, "echo", 1) as client:
            with pytest.raises(CapabilityMismatch, match="needs memory_gb ≥ 32, executor has 16"):
                await client.run(Job.call("echo", b"x", {"memory_gb": 32}))


async def test_gpu_to_cpu_fallback_chain(nats_server):
    cfgs = [node_config(0, capabilities=("python.run",))]
    async with mesh(nats_server.url, cfgs) as (node,):
        async with client_for(nats_server.url, "python.run", 1, max_bid_window_ms=100) as client:
            job = Job.python("print('ran')", accelerator="gpu", fallback=["cpu"])
            r = await client.run(job)
            assert r.ok and r.stdout == "ran\n" and r.executor == node.did
            assert any("fell back from gpu to cpu" in w for w in r.warnings)


async def test_exhausted_fallback_chain_lists_every_attempt(nats_server):
    cfgs = [node_config(0, capabilities=("python.run",))]
    async with mesh(nats_server.url, cfgs):
        async with client_for(nats_server.url, "python.run", 1, max_bid_window_ms=100) as client:
            job = Job.python("print(1)", accelerator="cuda", fallback=["mps", "rocm"])
            with pytest.raises(ExecutorsExhausted) as info:
                await client.run(job)
            assert [a.executor for a in info.value.attempts] == ["(cuda)", "(mps)", "(rocm)"]
            assert all("can serve the requirements" in a.outcome for a in info.value.attempts)
