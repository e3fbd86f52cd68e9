"""Hostile bytes on every subject a node listens to are dropped, counted, survived."""

from __future__ import annotations

import os
import time

import anyio
import msgpack
import pytest

from crankmesh.originator import Job
from crankmesh.protocol import subjects
from crankmesh.protocol.cid import cid_for_blob, cid_for_document
from crankmesh.protocol.encoding import canonical_encode
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import Announce, Bid, BidSlo, JobSpec, Load

from .helpers import client_for, mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ONE_MIB = 1024 * 1024


def _garbage() -> list[bytes]:
    other = Identity.generate()
    now = time.time_ns() // 1_000_000
    job = JobSpec(
        capability="echo",
        originator=other.did,
        created=now,
        nonce=os.urandom(16),
        payload=cid_for_blob(b"x"),
        payload_size=1,
        deadline=now + 60_000,
    )
    valid_announce = Announce(signer=other.did, ts=now, exp=now + 30_000, job=job).sign(other).raw
    a_bid = (
        Bid(
            signer=other.did,
            ts=now,
            exp=now + 1000,
            job=cid_for_document(b"j"),
            nonce=os.urandom(16),
            price=1,
            slo=BidSlo(),
            load=Load(),
        )
        .sign(other)
        .raw
    )
    return [
        b"",
        os.urandom(1),
        os.urandom(64),
        os.urandom(4096),
        valid_announce[: len(valid_announce) // 2],  # truncated msgpack
        valid_announce[:-1],
        msgpack.packb([1, 2, 3]),  # valid msgpack, wrong shape
        msgpack.packb({"b": b"x", "s": b"y", "t": "announce", "v": 1}),
        msgpack.packb({"b": 1.5, "s": None, "t": 7, "v": 1}),
        canonical_encode({"v": 99, "t": "announce", "b": b"", "s": b""}),
        a_bid,  # a well-formed message of the wrong type
        os.urandom(ONE_MIB),  # 1 MiB blob
        b"\xc1" * 100,  # never-used msgpack byte
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4 G entries
        b"\x91" * 10_000 + b"\xc0",  # deep nesting
    ]


@pytest.mark.parametrize("directory", ["bucket", "subject"])
async def test_garbage_on_every_node_subject_is_dropped_counted_and_node_keeps_serving(
    nats_server, directory: str
):
    # originate="always": the node follows the adverts subject too (an executor-only node in
    # bucket mode does not subscribe to it at all, so garbage there never reaches it); advert
    # sync requests (§8.10) are answered only in subject mode
    cfg = node_config(0, originate="always", directory=directory)
    async with mesh(nats_server.url, [cfg]) as (node,):
        garbage = _garbage()
        targets = [
            subjects.announce("default", "echo"),
            subjects.assignment("default", cid_for_document(b"j"), node.did),
            subjects.closed("default", cid_for_document(b"j")),
            subjects.adverts("default"),
            subjects.advert_sync("default"),
        ]
        async with raw_connection(nats_server.url) as nc:
            for subject in targets:
                for blob in garbage:
                    await nc.publish(subject, blob)
            await nc.flush()
            # a job still runs fine, and the node kept its subscriptions
            async with client_for(nats_server.url, "echo", 1) as client:
                r = await client.run(Job.echo(b"still alive"))
                assert r.ok and r.output == b"still alive"
        m = node.metrics
        n = len(garbage)
        assert m.rejection_count("announce") >= n - 1  # the replayed-later valid one may pass
        assert m.rejection_count("assignment") >= n
        assert m.rejection_count("advert") >= n
        assert m.rejection_count("closed") >= n
        if directory == "subject":
            assert m.rejection_count("sync", "not_empty") == sum(1 for g in garbage if g)
        reasons = {
            s.labels["reason"]
            for metric in m.rejections.collect()
            for s in metric.samples
            if s.name.endswith("_total")
        }
        assert {"decode", "non_canonical", "wrong_type", "version"} <= reasons
        assert m.rejection_count(reason="handler_error") == 0


async def test_garbage_bids_and_receipts_during_a_job_are_dropped(nats_server):
    async with mesh(nats_server.url, [node_config(0)]) as (node,):
        async with raw_connection(nats_server.url) as nc:
            garbage = _garbage()

            async def inject(msg):
                env_job = msgpack.unpackb(msgpack.unpackb(msg.data)["b"])["job"]
                from crankmesh.protocol.messages import job_cid_of

                cid = job_cid_of(env_job)
                for blob in garbage:
                    await nc.publish(subjects.bids("default", cid), blob)
                    await nc.publish(subjects.receipt_delivery("default", cid), blob)

            await nc.subscribe(subjects.announce("default", "echo"), cb=inject)
            await nc.flush()
            async with client_for(nats_server.url, "echo", 1, min_bid_window_ms=50) as client:
                for _ in range(3):
                    r = await client.run(Job.echo(b"ok"))
                    assert r.ok and r.executor == node.did
                await anyio.sleep(0.1)
                assert client.metrics.rejection_count("bid") >= len(garbage)
                assert client.metrics.rejection_count("receipt") >= 1
