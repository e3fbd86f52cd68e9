"""Sampled calls for bids (RFC 0001 §10.8): an Announce reaches k executors, not all N."""

from __future__ import annotations

import dataclasses
import os

import pytest

from crankmesh.originator import Job

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

N = 6


def _announces(nodes) -> list[float]:
    out = []
    for node in nodes:
        total = 0.0
        for m in node.metrics.announces_seen.collect():
            for s in m.samples:
                if s.name.endswith("_total"):
                    total += s.value
        out.append(total)
    return out


async def test_a_call_for_bids_reaches_only_the_k_sampled_executors(nats_server):
    async with mesh(nats_server.url, [node_config(i) for i in range(N)]) as nodes:
        async with client_for(
            nats_server.url, "echo", N, sample_k=2, sample_explore=0.0, use_quotes=False
        ) as c:
            jobs = 10
            for i in range(jobs):
                r = await c.run(Job.echo(os.urandom(8) + bytes([i])))
                assert r.ok and r.verified
            seen = _announces(nodes)
            assert sum(seen) == 2 * jobs  # each job reached exactly k = 2 executors
            # power-of-two choices without exploration never samples the dearest
            # executor (it loses every pair it is drawn in)
            assert seen[-1] == 0
            assert seen[0] > 0


async def test_an_explicit_auction_is_broadcast_to_every_executor(nats_server):
    async with mesh(nats_server.url, [node_config(i) for i in range(N)]) as nodes:
        async with client_for(nats_server.url, "echo", N, sample_k=2) as c:
            r = await c.run(dataclasses.replace(Job.echo(b"all of you"), auction=True))
            assert r.ok and r.executor == nodes[0].did  # the cheapest of all N
            assert sum(_announces(nodes)) == N
        async with client_for(nats_server.url, "echo", N, auction=True) as c:
            before = sum(_announces(nodes))
            assert (await c.run(Job.echo(b"all again"))).executor == nodes[0].did
            assert sum(_announces(nodes)) - before == N


async def test_sample_k_zero_broadcasts(nats_server):
    async with mesh(nats_server.url, [node_config(i) for i in range(N)]) as nodes:
        async with client_for(nats_server.url, "echo", N, sample_k=0, use_quotes=False) as c:
            assert (await c.run(Job.echo(b"x"))).executor == nodes[0].did
            assert sum(_announces(nodes)) == N


async def test_a_job_on_a_live_quote_needs_no_call_for_bids(nats_server):
    async with mesh(nats_server.url, [node_config(i) for i in range(N)]) as nodes:
        async with client_for(nats_server.url, "echo", N, use_quotes=True) as c:
            for _ in range(20):
                if len(c.directory.quotes("echo")) == N:
                    break
                await c.directory.wait_changed()
            r = await c.run(Job.echo(b"on a quote"))
            assert r.ok and r.verified and r.executor == nodes[0].did  # the cheapest quote
            assert r.explanation.path == "quote"
            assert len(r.explanation.quotes) == N  # every live quote was considered
            assert sum(_announces(nodes)) == 0  # no Announce at all
            assert r.receipt.bid == r.explanation.winner.bid_cid  # the receipt names the quote


async def test_max_quotes_bounds_the_quotes_ranked_per_job(nats_server):
    async with mesh(nats_server.url, [node_config(i) for i in range(N)]) as nodes:
        async with client_for(nats_server.url, "echo", N, use_quotes=True, max_quotes=2) as c:
            for _ in range(20):
                if len(c.directory.quotes("echo")) == N:
                    break
                await c.directory.wait_changed()
            r = await c.run(Job.echo(b"two of six"))
            assert r.explanation.path == "quote" and r.executor == nodes[0].did
            # only the two cheapest quotes were ranked, not all six
            assert {q.executor for q in r.explanation.quotes} == {nodes[0].did, nodes[1].did}
