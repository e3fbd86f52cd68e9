"""The directory bucket (RFC 0001 §8.15): late joiners see every executor at once, an
executor-only node hears no other node's adverts, and adverts carry firm quotes."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import anyio
import nats
import pytest

from crankmesh.directory import PeerDirectory
from crankmesh.directory_kv import open_bucket
from crankmesh.node import Node
from crankmesh.originator import Client, Job
from crankmesh.protocol import subjects
from crankmesh.protocol.identity import Identity, did_node_id
from crankmesh.protocol.messages import PROTOCOL_REVISION, Advert, AdvertCapability
from crankmesh.testing import NatsServer

from .helpers import mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

# Heartbeats far apart: whatever a joiner knows at once came from the bucket.
SLOW = {"advert_interval_s": 60.0, "advert_ttl_s": 120.0}
FAST = {"advert_interval_s": 0.2, "advert_ttl_s": 1.2}


def _connz(server: NatsServer) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{server.monitor_url}/connz?limit=1000", timeout=5) as r:
        doc = json.load(r)
    return {c.get("name", ""): c for c in doc["connections"]}


async def test_a_client_that_joins_late_has_every_executor_at_once(nats_server):
    async with mesh(nats_server.url, [node_config(i, **SLOW) for i in range(3)]) as nodes:
        await anyio.sleep(0.3)  # past the start-up puts; the next refresh is seconds away
        async with Client(nats=nats_server.url) as client:
            # No waiting: the bucket's current values are in before the Client is open.
            assert client.directory.source == "kv"
            assert {p.did for p in client.directory.offering("echo")} == {n.did for n in nodes}
            quotes = client.directory.quotes("echo")
            assert {q.did for q in quotes} == {n.did for n in nodes}
            assert all(p.advert.proto == PROTOCOL_REVISION for p in client.directory.peers())
            r = await client.run(Job.echo(b"hello"))
            assert r.ok and r.output == b"hello" and r.executor == nodes[0].did


async def test_an_executor_only_node_receives_no_other_nodes_adverts():
    async with NatsServer(monitoring=True) as server:
        configs = [node_config(i, **FAST) for i in range(1, 6)]
        nc = await nats.connect(server.url, name="executor-only", allow_reconnect=False)
        async with (
            Node(connection=nc, config=node_config(0, **FAST)) as lone,
            mesh(server.url, configs) as others,
        ):
            await anyio.sleep(0.5)
            before, t0 = int(_connz(server)["executor-only"]["out_msgs"]), time.monotonic()
            puts_before = lone._advert_seq
            others_before = sum(n._advert_seq for n in others)
            await anyio.sleep(3.0)
            after = int(_connz(server)["executor-only"]["out_msgs"])
            window = time.monotonic() - t0
            own_puts = lone._advert_seq - puts_before
            others_puts = sum(n._advert_seq for n in others) - others_before
            delivered = after - before
            # The others put ~2 adverts/s each; the lone node gets only its own key
            # back (+ the odd consumer heartbeat / JetStream ack), nothing of the others.
            assert others_puts >= 5 * 1.5 * window, others_puts
            assert delivered <= 2 * own_puts + 3, (delivered, own_puts, others_puts)
            assert {p.did for p in lone.directory.peers()} <= {lone.did}
            # Its first job starts the watch: then it knows everyone at once.
            assert lone.client is not None
            r = await lone.client.run(Job.echo(b"x"))
            assert r.ok
            assert {p.did for p in lone.directory.peers()} == {lone.did} | {n.did for n in others}
        await nc.close()


async def test_originate_always_follows_from_the_start(nats_server):
    async with mesh(
        nats_server.url,
        [node_config(0, **SLOW, originate="always"), node_config(1, **SLOW)],
    ) as (watcher, other):
        await anyio.sleep(0.3)
        assert watcher.directory.get(other.did) is not None
        assert {p.did for p in other.directory.peers()} <= {other.did}


async def test_originate_never_never_follows(nats_server):
    async with mesh(
        nats_server.url, [node_config(0, **FAST, originate="never"), node_config(1, **FAST)]
    ) as (lone, other):
        assert lone.client is not None
        # Its job goes to a broadcast call for bids (no directory, so the full window).
        r = await lone.client.run(Job.echo(b"x"))
        assert r.ok
        await anyio.sleep(0.5)
        assert lone.directory.get(other.did) is None


async def test_quotes_are_signed_expire_and_are_replaced(nats_server):
    cfg = node_config(0, **FAST, quote_valid_ms=900)
    async with mesh(nats_server.url, [cfg]) as (node,):
        async with Client(nats=nats_server.url) as client:
            (first,) = client.directory.quotes("echo")
            first.verify()
            assert first.verified and first.did == node.did
            q = first.quote
            assert q.capability == "echo" and q.price == 1000 and q.currency == "USD"
            assert q.exp - q.ts == 900 and q.terms.max_timeout_ms == 600_000
            assert q.load.capacity == node.executor.config.max_concurrency
            # Before it expires it is replaced by a newer one (renewed at a third left).
            with anyio.fail_after(3):
                while True:
                    await anyio.sleep(0.05)
                    now = time.time_ns() // 1_000_000
                    live = client.directory.quotes("echo", now)
                    if live and live[0].quote.seq > q.seq:
                        break
            assert live[0].quote.exp > q.exp and live[0].cid != first.cid
            # An expired quote is not live.
            assert client.directory.quotes("echo", now=q.exp + 1) in ([], live)
            assert all(x.quote.exp >= q.exp + 1 for x in client.directory.quotes("echo", q.exp + 1))


async def test_a_draining_node_withdraws_its_quotes(nats_server):
    async with Client(nats=nats_server.url) as client:
        async with mesh(nats_server.url, [node_config(0, **SLOW, drain_grace_s=0.1)]) as (node,):
            with anyio.fail_after(5):
                while not client.directory.quotes("echo"):
                    await client.directory.wait_changed()
        # The draining advert (put on shutdown) carries no quote.
        with anyio.fail_after(5):
            while (
                client.directory.get(node.did) is not None
                and not client.directory.get(node.did).advert.draining
            ):
                await client.directory.wait_changed()
        assert client.directory.quotes("echo") == []


async def test_an_advert_of_a_newer_protocol_revision_is_dropped_and_logged(nats_server, caplog):
    stranger = Identity.generate()
    now = time.time_ns() // 1_000_000
    advert = Advert(
        signer=stranger.did,
        ts=now,
        exp=now + 10_000,
        capabilities=[AdvertCapability(name="echo", price=1)],
        proto=PROTOCOL_REVISION + 1,
    ).sign(stranger)
    async with raw_connection(nats_server.url) as nc:
        kv = await open_bucket(nc, "default")
        assert kv is not None
        await kv.put(did_node_id(stranger.did), advert.raw)
        await kv.put(did_node_id(stranger.did), advert.raw)  # twice: logged once
        await nc.flush()
    async with Client(nats=nats_server.url) as client:
        await anyio.sleep(0.2)
        assert client.directory.get(stranger.did) is None
        assert client.metrics.rejection_count("advert", "proto_unsupported") >= 1
    lines = [
        r.getMessage()
        for r in caplog.records
        if "speaks crankmesh protocol revision" in r.getMessage()
    ]
    assert len(lines) == 1
    assert (
        f"node {stranger.did} speaks crankmesh protocol revision {PROTOCOL_REVISION + 1}"
        in (lines[0])
    )
    assert f"this node speaks {PROTOCOL_REVISION}" in lines[0]


async def test_an_advert_under_another_nodes_key_is_dropped(nats_server):
    stranger, victim = Identity.generate(), Identity.generate()
    now = time.time_ns() // 1_000_000
    advert = Advert(signer=stranger.did, ts=now, exp=now + 10_000, capabilities=[], proto=2).sign(
        stranger
    )
    async with raw_connection(nats_server.url) as nc:
        kv = await open_bucket(nc, "default")
        await kv.put(did_node_id(victim.did), advert.raw)
        await kv.put(did_node_id(stranger.did) + "x", b"garbage")
    directory = PeerDirectory(federation="default")
    async with raw_connection(nats_server.url) as nc, anyio.create_task_group() as tg:
        await tg.start(directory.serve, nc)
        assert directory.source == "kv"
        tg.cancel_scope.cancel()
    assert directory.peers() == []
    assert directory.metrics.rejection_count("advert", "subject_mismatch") == 1
    assert directory.metrics.rejection_count("advert", "decode") == 1


async def test_without_jetstream_nodes_fall_back_to_the_adverts_subject(caplog):
    async with NatsServer(jetstream=False) as server:
        async with mesh(server.url, [node_config(i, **FAST) for i in range(2)]) as nodes:
            assert all(n.directory_bucket is None for n in nodes)
            async with Client(nats=server.url) as client:
                assert client.directory.source == "subject"
                assert await client.wait_for_peers("echo", 2, wait_s=5) == 2
                assert len(client.directory.quotes("echo")) == 2
                r = await client.run(Job.echo(b"y"))
                assert r.ok
    assert "falling back to the adverts subject" in caplog.text


async def test_directory_subject_mode_keeps_revision_1_adverts(nats_server):
    seen: list[bytes] = []
    async with raw_connection(nats_server.url) as nc:

        async def cb(msg: Any) -> None:
            seen.append(msg.data)

        await nc.subscribe(subjects.adverts("default"), cb=cb)
        await nc.flush()
        async with mesh(nats_server.url, [node_config(0, **FAST, directory="subject")]) as (n,):
            assert n.directory_bucket is None and n.directory.source == "subject"
            await anyio.sleep(0.5)
        async with mesh(nats_server.url, [node_config(1, **FAST)]) as (m,):
            assert m.directory_bucket is not None
            count = len(seen)
            await anyio.sleep(0.5)
            assert len(seen) == count  # bucket mode: no heartbeats on the subject
    assert seen


async def test_on_a_cluster_a_late_client_on_another_server_has_the_r3_directory(nats_cluster):
    cfgs = [node_config(i, **SLOW, receipts_replicas=3) for i in range(2)]
    async with mesh(nats_cluster.urls[2], cfgs) as nodes:
        assert all(n.directory_bucket is not None for n in nodes)
        status = await nodes[0].directory_bucket.status()
        assert status.stream_info.config.num_replicas == 3  # replicated like the records
        await anyio.sleep(0.3)
        async with Client(nats=nats_cluster.urls[0]) as client:
            assert client.directory.source == "kv"
            assert {p.did for p in client.directory.offering("echo")} == {n.did for n in nodes}
            r = await client.run(Job.echo(b"across the routes"))
            assert r.ok and r.executor == nodes[0].did
