"""Advert sync (RFC 0001 §8.10): a party that joins asks every node to advertise now."""

from __future__ import annotations

import time

import anyio
import pytest

from crankmesh.originator import Client, Job
from crankmesh.protocol import subjects

from .helpers import mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

# Heartbeats far apart: anything learnt within a test's few seconds was solicited.
SLOW = {"advert_interval_s": 60.0, "advert_ttl_s": 120.0}


@pytest.mark.parametrize("directory", ["bucket", "subject"])
async def test_a_client_that_joins_late_learns_every_peer_at_once(nats_server, directory):
    configs = [node_config(i, **SLOW, directory=directory) for i in range(3)]
    async with mesh(nats_server.url, configs) as nodes:
        await anyio.sleep(0.3)  # past the start-up adverts: the next are 60 s away
        async with Client(nats=nats_server.url) as client:
            assert await client.wait_for_peers("echo", 3, wait_s=5) == 3
            assert {p.did for p in client.directory.offering("echo")} == {n.did for n in nodes}
            # Knowing every bidder, the first job needs no full bid window and goes to
            # the cheapest of the three.
            r = await client.run(Job.echo(b"hello"))
            assert r.ok and r.output == b"hello" and r.executor == nodes[0].did


async def test_a_short_settle_after_the_first_peer_sees_every_bidder(nats_server):
    # What `crankmesh submit` does: wait for one peer, then settle, so that its first job
    # is not decided among the first node to answer only.
    async with mesh(nats_server.url, [node_config(i, **SLOW) for i in range(3)]) as nodes:
        await anyio.sleep(0.3)
        async with Client(nats=nats_server.url) as client:
            assert await client.wait_for_peers("echo", 1, wait_s=5, settle_s=0.2) == 3
            r = await client.run(Job.echo(b"x"))
            assert r.ok and r.executor == nodes[0].did  # the cheapest
        async with Client(nats=nats_server.url) as client:
            # Without a settle, it returns as soon as the first one is in.
            assert await client.wait_for_peers("echo", 1, wait_s=5) >= 1


async def test_solicitations_are_coalesced_and_a_non_empty_one_is_counted(nats_server):
    # Nodes answer advert sync on the adverts subject: without JetStream, or (as here)
    # in directory "subject" mode; in bucket mode a joiner reads the bucket instead.
    async with mesh(nats_server.url, [node_config(0, **SLOW, directory="subject")]) as (node,):
        await anyio.sleep(0.3)
        async with raw_connection(nats_server.url) as nc:
            seen: list[float] = []

            async def on_advert(msg):
                seen.append(time.monotonic())

            await nc.subscribe(subjects.adverts("default"), cb=on_advert)
            await nc.flush()
            for _ in range(50):  # a burst of joiners (or someone hammering the subject)
                await nc.publish(subjects.advert_sync("default"), b"")
            await nc.flush()
            await anyio.sleep(1.0)
            # One advert for the burst, perhaps one more 250 ms later; never fifty.
            assert 1 <= len(seen) <= 2, seen
            if len(seen) == 2:
                assert seen[1] - seen[0] >= 0.2
            for _ in range(3):
                await nc.publish(subjects.advert_sync("default"), b"please")
            await nc.flush()
            await anyio.sleep(0.3)
        assert node.metrics.rejection_count("sync", "not_empty") == 3
