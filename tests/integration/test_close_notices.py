"""Losing bidders get their capacity back (RFC 0001 §8.3 ``closed``, §8.7 Close).

Real nats-server, real nodes: the reservations are read off the executors.
"""

from __future__ import annotations

import time

import anyio
import pytest

from crankmesh.originator import Job
from crankmesh.protocol import subjects
from crankmesh.protocol.cid import cid_for_blob
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import Announce, JobSpec

from .helpers import client_for, mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _reserved(nodes) -> list[int]:
    return [n.executor._reserved for n in nodes]


async def _until(predicate, timeout_s: float = 5.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 (polling executor state)
            await anyio.sleep(0.01)


async def test_a_close_notice_rides_on_the_next_announce(nats_server):
    """With a long linger no standalone Close goes out: each Announce carries the
    previous job's notice, and the losers release as soon as it arrives."""
    async with mesh(nats_server.url, [node_config(i) for i in range(3)]) as nodes:
        async with client_for(
            nats_server.url, "echo", 3, close_linger_ms=60_000, min_bid_window_ms=100
        ) as client:
            standalone = 0
            original = client._close

            async def counting_close(*args, **kwargs):
                nonlocal standalone
                standalone += 1
                await original(*args, **kwargs)

            client._close = counting_close
            for i in range(5):
                r = await client.run(Job.echo(bytes([i])))
                assert r.ok and r.verified
                # only the last job's two losing bids still hold capacity
                await _until(lambda: sum(_reserved(nodes)) == 2)
            assert standalone == 0
        # leaving the client publishes the notices still waiting
        await _until(lambda: sum(_reserved(nodes)) == 0)
        assert standalone == 1


async def test_a_notice_no_announce_carries_goes_out_standalone_after_the_linger(nats_server):
    async with mesh(nats_server.url, [node_config(i) for i in range(3)]) as nodes:
        async with client_for(
            nats_server.url, "echo", 3, close_linger_ms=150, min_bid_window_ms=100
        ) as client:
            t0 = time.monotonic()
            assert (await client.run(Job.echo(b"x"))).ok
            await _until(lambda: sum(_reserved(nodes)) == 0)
            assert time.monotonic() - t0 >= 0.15


async def test_close_linger_zero_closes_at_once(nats_server):
    async with mesh(nats_server.url, [node_config(i) for i in range(3)]) as nodes:
        async with client_for(
            nats_server.url, "echo", 3, close_linger_ms=0, min_bid_window_ms=100
        ) as client:
            assert (await client.run(Job.echo(b"x"))).ok
            await _until(lambda: sum(_reserved(nodes)) == 0, timeout_s=1.0)


async def test_an_announce_cannot_release_another_originators_reservations(nats_server):
    """A ``closed`` list names jobs; an executor releases only reservations for jobs
    of the Announce's own signer (the one whose job it is, as for a Close)."""
    async with mesh(nats_server.url, [node_config(i) for i in range(2)]) as nodes:
        async with client_for(
            nats_server.url, "echo", 2, close_linger_ms=60_000, min_bid_window_ms=100
        ) as client:
            r = await client.run(Job.echo(b"x"))
            assert r.ok
            await _until(lambda: sum(_reserved(nodes)) == 1)
            # a third party announces a job of its own, "closing" the client's job
            rogue = Identity.generate()
            now = time.time_ns() // 1_000_000
            spec = JobSpec(
                capability="echo",
                originator=rogue.did,
                created=now,
                nonce=b"\x01" * 16,
                payload=cid_for_blob(b"abc"),
                payload_size=3,
                deadline=now + 60_000,
            )
            ann = Announce(
                signer=rogue.did, ts=now, exp=now + 30_000, job=spec, closed=[r.job_cid]
            ).sign(rogue)
            async with raw_connection(nats_server.url) as nc:
                await nc.publish(subjects.announce("default", "echo"), ann.raw)
                await nc.flush()
            # both executors bid on the rogue's job (2 reservations), and the
            # client's loser still holds its own (1)
            await _until(lambda: sum(_reserved(nodes)) == 3)
            await anyio.sleep(0.1)
            assert sum(_reserved(nodes)) == 3
