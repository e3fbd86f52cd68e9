"""Selection policies on a real mesh of five executors with different price, latency,
load and accuracy profiles (issue [3/5] acceptance)."""

from __future__ import annotations

import pytest

from crankmesh import NoEligibleBid
from crankmesh.originator import Job
from crankmesh.protocol.messages import BidSlo, Constraints, JobSlo

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

#: name: (price µUSD, p50 µs, p95 µs, accuracy ppm, queued jobs)
PROFILES = {
    "cheap-slow": (1000, 30_000, 50_000, 900_000, 2),
    "fast": (2000, 1_000, 2_000, 950_000, 0),
    "fastest-busy": (3000, 300, 800, 950_000, 5),
    "mid-loaded": (1500, 5_000, 10_000, 950_000, 6),
    "accurate": (5000, 2_000, 4_000, 995_000, 3),
}


@pytest.fixture
async def five(nats_server):
    cfgs = [node_config(i, price=p[0], name=name) for i, (name, p) in enumerate(PROFILES.items())]
    async with mesh(nats_server.url, cfgs) as nodes:
        by_name = {}
        for node, (name, (_price, p50, p95, acc, queued)) in zip(
            nodes, PROFILES.items(), strict=True
        ):
            node.executor.slo_for = (  # type: ignore[method-assign]
                lambda cap, p50=p50, p95=p95, acc=acc: BidSlo(
                    p50_us=p50, p95_us=p95, p99_us=p95 * 2, accuracy_ppm=acc, samples=100
                )
            )
            node.executor._queued = queued  # advertised and bid load
            by_name[name] = node
        try:
            async with client_for(
                nats_server.url, "echo", 5, max_bid_window_ms=400, min_bid_window_ms=150
            ) as client:
                yield by_name, client
        finally:
            for node in by_name.values():
                node.executor._queued = 0  # the fake load must not hold up the drain
                node.executor._idle.set()


def _job(p95_ms: float | None = None, accuracy_ppm: int | None = None) -> Job:
    slo = None
    if p95_ms is not None or accuracy_ppm is not None:
        slo = JobSlo(
            p95_us=None if p95_ms is None else int(p95_ms * 1000),
            min_accuracy_ppm=accuracy_ppm,
        )
    return Job(capability="echo", payload=b"x", constraints=Constraints(timeout_ms=5000), slo=slo)


async def test_cost_picks_the_cheapest(five):
    nodes, client = five
    r = await client.run(_job(), policy="cost")
    assert r.executor == nodes["cheap-slow"].did


async def test_latency_picks_the_lowest_expected_latency(five):
    nodes, client = five
    r = await client.run(_job(), policy="latency")
    # fastest-busy has the lowest p50, but 5 queued jobs ahead push its expected latency
    # (bench + queue) above the idle "fast" executor's.
    assert r.executor == nodes["fast"].did
    considered = {c.executor: c for c in r.explanation.considered}
    assert considered[nodes["fast"].did].rank == 1


async def test_balanced_picks_the_least_loaded(five):
    nodes, client = five
    r = await client.run(_job(), policy="balanced")
    assert r.executor == nodes["fast"].did


async def test_slo_picks_the_cheapest_bid_meeting_the_p95(five):
    nodes, client = five
    r = await client.run(_job(p95_ms=5), policy="slo")
    assert r.executor == nodes["fast"].did  # 2000: cheapest of those promising p95 ≤ 5 ms
    failed = {c.executor: c.failed_filter for c in r.explanation.considered}
    assert failed[nodes["cheap-slow"].did] == "slo_p95"
    assert failed[nodes["mid-loaded"].did] == "slo_p95"


async def test_slo_with_accuracy_floor(five):
    nodes, client = five
    # its 4 ms p95 is quoted at its load (3 queued on 2 slots: + 4 ms of wait, 8 ms)
    r = await client.run(_job(p95_ms=10, accuracy_ppm=990_000), policy="slo")
    assert r.executor == nodes["accurate"].did


async def test_slo_nobody_meets_names_each_bid_and_missed_constraint(five):
    nodes, client = five
    with pytest.raises(NoEligibleBid) as info:
        await client.run(_job(p95_ms=0.5), policy="slo")
    assert len(info.value.failures) == 5
    assert all("slo_p95" in line for line in info.value.failures)
    for node in nodes.values():
        assert node.did in str(info.value)


async def test_greedy_takes_the_first_compatible_bid(five):
    nodes, client = five
    r = await client.run(_job(), policy="greedy")
    first = min(r.explanation.considered, key=lambda c: c.rank)
    assert r.executor == first.executor
