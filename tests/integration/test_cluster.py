"""A mesh spread over a 3-server NATS cluster (docs/scale-out.md): routes carry the protocol
between servers; killing the server under the busiest executor mid-run loses no job and no
receipt from the replicated records stream (RFC 0002); an originator whose server dies
reconnects to a survivor and still gets its receipts."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from crankmesh.node import Node
from crankmesh.originator import Client, ClientConfig, Job, JobResult
from crankmesh.protocol import subjects
from crankmesh.protocol.cid import cid_for_blob
from crankmesh.protocol.errors import TransportError
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import Announce, Bid, JobSpec, Receipt, decode_message, job_cid_of
from crankmesh.receipts.audit import Record, audit
from crankmesh.receipts.export import read_stream
from crankmesh.receipts.store import RecordStore, record_subjects, stream_name
from crankmesh.testing import NatsCluster
from crankmesh.transport import NatsOptions, connect

from .helpers import mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.slow]

FED = "default"
PY = ("python.run",)
JOBS = 90
KILL_AFTER = 30
CONCURRENCY = 6


def _count(counter: Any) -> int:
    return int(
        sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
    )


def _executions(node: Node) -> int:
    return _count(node.metrics.execution_start)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _server_of(cluster: NatsCluster, nc: NatsClient) -> int:
    """Index of the cluster member ``nc`` is connected to right now."""
    assert nc.is_connected and nc.connected_url is not None
    return [s.port for s in cluster.servers].index(nc.connected_url.port)


async def _connect_starting_at(cluster: NatsCluster, i: int) -> NatsClient:
    """A connection that lists every member, as docs/scale-out.md tells nodes and clients to,
    and that starts on server ``i``.

    nats-py shuffles the server list and NatsOptions cannot turn that off, so the first server
    is random: connect (through crankmesh.transport, as a node does) until it is server ``i``.
    """
    others = [url for j, url in enumerate(cluster.urls) if j != i]
    options = NatsOptions(servers=(cluster.urls[i], *others), reconnect_time_wait_s=0.1)
    for _ in range(200):
        nc = await connect(options)
        if _server_of(cluster, nc) == i:
            return nc
        await nc.close()
    raise AssertionError(f"200 connections listing every server never started on server {i}")


@asynccontextmanager
async def _connections(
    cluster: NatsCluster, starts: Iterable[int], *, every_server: bool = True
) -> AsyncIterator[list[Any]]:
    """Connections starting on the given servers; listing every server, or only that one
    (nats-py then still learns the others from the cluster's INFO and can fail over)."""
    async with AsyncExitStack() as stack:
        conns = []
        for i in starts:
            if every_server:
                nc = await _connect_starting_at(cluster, i)
            else:
                options = NatsOptions(servers=(cluster.urls[i],), reconnect_time_wait_s=0.1)
                nc = await connect(options)
            stack.push_async_callback(nc.close)
            conns.append(nc)
        yield conns


def _receipts(records: list[Record]) -> list[Receipt]:
    return [decode_message(r.data, Receipt)[1] for r in records if ".receipts." in r.subject]


async def _wait_for_every_receipt(
    nc: NatsClient, nodes: list[Node], within_s: float
) -> list[Record]:
    """The records stream once it holds receipts 1..head of every node's chain.

    Buffered records flush with backoff (up to 2 s), and right after a member died JetStream
    may time out while it elects new leaders: poll.
    """
    wanted = {n.did: n.executor.chain.seq for n in nodes if n.executor is not None}
    records: list[Record] = []
    with anyio.move_on_after(within_s):
        while True:
            try:
                records = await read_stream(nc, stream_name(FED))
            except TransportError:  # while JetStream elects new leaders
                records = []
            seqs = Counter((r.signer, r.seq) for r in _receipts(records))
            pending = sum(n.record_store.pending for n in nodes if n.record_store is not None)
            if not pending and all(
                (did, s) in seqs for did, head in wanted.items() for s in range(1, head + 1)
            ):
                return records
            await anyio.sleep(0.25)
    return records


def _python_job(i: int, sleep_s: float = 0.05) -> Job:
    code = f"import time\ntime.sleep({sleep_s})\nprint(args['i'])"
    return Job.python(code, {"i": i}, timeout_sec=2)


async def test_job_published_through_server_0_runs_on_a_node_attached_to_server_2(
    nats_cluster: NatsCluster,
) -> None:
    # node and client each know one server only: the routes carry adverts, announce, bids,
    # the assignment request and its reply, and the receipt
    async with mesh(nats_cluster.urls[2], [node_config(0)]) as (node,):
        assert _server_of(nats_cluster, node.nc) == 2
        async with Client(nats=nats_cluster.urls[0]) as client:
            assert await client.wait_for_peers("echo", 1, wait_s=10) == 1
            r = await client.run(Job.echo(b"across the routes"))
            assert r.ok and r.verified, (r.status, r.receipt.detail)
            assert r.executor == node.did and r.output == b"across the routes"
            assert _server_of(nats_cluster, client._nc) == 0
            # the node created the records stream (one replica) through server 2; it holds
            # the receipt and is readable through server 0
            records = await _wait_for_every_receipt(client._nc, [node], within_s=10)
            assert [(x.signer, x.seq) for x in _receipts(records)] == [(node.did, 1)]
            assert r.receipt_cid in {rec.msg_id for rec in records}
            report = audit(records, now_ms=_now_ms())
            assert report.ok, report.render()


async def test_a_node_set_to_three_receipts_replicas_creates_an_r3_records_stream(
    nats_cluster: NatsCluster,
) -> None:
    # receipts_replicas (CRANKMESH_RECEIPTS_REPLICAS=3 in compose.yaml) reaches the stream
    async with mesh(nats_cluster.urls[0], [node_config(0, receipts_replicas=3)]):
        async with _connections(nats_cluster, [1]) as (nc,):
            info = await nc.jetstream().stream_info(stream_name(FED))
    assert info.config.num_replicas == 3
    assert info.cluster is not None and len(info.cluster.replicas or []) == 2  # + the leader


@pytest.mark.parametrize("nodes_list", ["every_server", "own_server_only"])
async def test_killing_the_server_under_the_busiest_executor_loses_no_job_and_no_receipt(
    nats_cluster: NatsCluster, nodes_list: str
) -> None:
    cluster = nats_cluster
    # The documented scale-out setup: the records stream is created once with three
    # replicas before the first node starts (a node leaves it alone when the limits match).
    async with _connections(cluster, [0]) as (admin,):
        info = await RecordStore(admin, federation=FED, replicas=3).ensure_stream()
        assert info.config.num_replicas == 3
    # Node i starts on server i and lists every server (docs/scale-out.md), or only server i
    # and relies on the servers the cluster advertises, to fail over. Node 0 is the
    # cheapest and has the most slots: under the cost policy it is the busiest executor.
    cfgs = [
        node_config(0, capabilities=PY, price=1000, max_concurrency=4, queue_depth=0),
        node_config(1, capabilities=PY, price=2000, max_concurrency=2, queue_depth=0),
        node_config(2, capabilities=PY, price=3000, max_concurrency=2, queue_depth=0),
    ]
    config = ClientConfig(busy_wait_s=30, receipt_grace_ms=1000)
    results: dict[int, JobResult] = {}
    killed: list[int] = []
    every_server = nodes_list == "every_server"
    async with (
        _connections(cluster, [0, 1, 2], every_server=every_server) as conns,
        _connections(cluster, [1]) as (client_nc,),
        AsyncExitStack() as stack,
    ):
        nodes = [
            await stack.enter_async_context(Node(connection=nc, config=cfg))
            for nc, cfg in zip(conns, cfgs, strict=True)
        ]
        client = await stack.enter_async_context(Client(connection=client_nc, config=config))
        assert await client.wait_for_peers("python.run", 3, wait_s=10) == 3
        assert [_server_of(cluster, n.nc) for n in nodes] == [0, 1, 2]

        def kill_under_busiest() -> None:
            busiest = max(nodes, key=_executions)
            assert busiest is nodes[0], [_executions(n) for n in nodes]
            victim = _server_of(cluster, busiest.nc)
            cluster.kill(victim)
            killed.append(victim)

        async def one(i: int, limit: anyio.Semaphore) -> None:
            async with limit:
                r = await client.run(_python_job(i))
            assert r.ok and r.verified, (i, r.status, r.receipt.detail, r.stderr)
            assert r.stdout == f"{i}\n"
            results[i] = r
            if len(results) == KILL_AFTER and not killed:
                kill_under_busiest()

        limit = anyio.Semaphore(CONCURRENCY)
        with anyio.fail_after(45):
            async with anyio.create_task_group() as tg:
                for i in range(JOBS):
                    tg.start_soon(one, i, limit)
        assert killed == [0]
        assert _server_of(cluster, nodes[0].nc) in (1, 2)  # the executor failed over
        assert _server_of(cluster, client_nc) == 1

        # none lost: every job ended with a verified receipt of its own
        assert sorted(results) == list(range(JOBS))
        assert len({r.receipt_cid for r in results.values()}) == JOBS
        by_executor = Counter(r.executor for r in results.values())
        assert by_executor[nodes[0].did] >= KILL_AFTER // 2

        # none ran twice, except where the originator gave up on an attempt whose Accept or
        # receipt delivery died with the server: RFC 0001 §10.6 then reassigns the job, and
        # the first executor still finishes it and signs a receipt
        gave_up = Counter(a.executor for r in results.values() for a in r.attempts)
        for n in nodes:
            assert by_executor[n.did] <= _executions(n) <= by_executor[n.did] + gave_up[n.did]

        # every receipt reaches the replicated stream, buffered while JetStream was away
        records = await _wait_for_every_receipt(client_nc, nodes, within_s=20)
        stored = _receipts(records)
        assert {r.receipt_cid for r in results.values()} <= {rec.msg_id for rec in records}
        for n in nodes:
            assert n.executor is not None
            head = n.executor.chain.seq
            assert head == _executions(n)
            assert sorted(x.seq for x in stored if x.signer == n.did) == list(range(1, head + 1))
        jobs_run_twice = [j for j, k in Counter(x.job for x in stored).items() if k > 1]
        assert len(jobs_run_twice) <= sum(gave_up.values())
        report = audit(records, now_ms=_now_ms())
        assert report.ok, report.render()
        assert sum(s.receipts for s in report.executors.values()) == len(stored)
        info = await client_nc.jetstream().stream_info(stream_name(FED))
        assert info.config.num_replicas == 3


async def test_an_originator_whose_server_dies_reconnects_and_still_gets_its_receipt(
    nats_cluster: NatsCluster,
) -> None:
    cluster = nats_cluster
    async with _connections(cluster, [1]) as (admin,):
        await RecordStore(admin, federation=FED, replicas=3).ensure_stream()
    cfgs = [node_config(i, capabilities=PY) for i in (1, 2)]
    config = ClientConfig(busy_wait_s=10, receipt_grace_ms=3000)
    async with _connections(cluster, [1, 2, 0]) as conns, AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(Node(connection=nc, config=cfg))
            for nc, cfg in zip(conns[:2], cfgs, strict=True)
        ]
        client_nc = conns[2]
        client = await stack.enter_async_context(Client(connection=client_nc, config=config))
        assert await client.wait_for_peers("python.run", 2, wait_s=10) == 2
        before = await client.run(_python_job(0))
        assert before.ok and before.verified

        # a job is accepted and running when the originator's server dies
        slow = client.submit(_python_job(1, sleep_s=1.5))
        with anyio.fail_after(10):
            async for event in slow.watch():
                if event.kind == "accepted":
                    break
        cluster.kill(0)
        with anyio.fail_after(15):
            r = await slow.result()
        assert r.ok and r.verified and r.stdout == "1\n", (r.status, r.receipt.detail)
        assert not r.attempts  # the same executor's receipt, not a rerun elsewhere
        assert _server_of(cluster, client_nc) in (1, 2)

        after = await client.run(_python_job(2))
        assert after.ok and after.verified and after.stdout == "2\n"
        results = [before, r, after]
        assert sum(_executions(n) for n in nodes) == len(results)  # none ran twice
        records = await _wait_for_every_receipt(client_nc, nodes, within_s=20)
        assert {x.receipt_cid for x in results} <= {rec.msg_id for rec in records}
        report = audit(records, now_ms=_now_ms())
        assert report.ok, report.render()


async def test_a_node_keeps_the_replicas_of_a_records_stream_created_before_it(
    nats_cluster: NatsCluster,
) -> None:
    async with _connections(nats_cluster, [0]) as (nc,):
        js = nc.jetstream()
        # an operator creates the stream by hand: three replicas, the server's default limits
        # and one subject only; the node binds the subjects it lacks and changes nothing else
        await js.add_stream(
            name=stream_name(FED), subjects=record_subjects(FED)[:1], num_replicas=3
        )
        async with mesh(nats_cluster.urls[1], [node_config(0)]):
            info = await js.stream_info(stream_name(FED))
        assert sorted(info.config.subjects or []) == sorted(record_subjects(FED))
        assert info.config.num_replicas == 3
        assert info.config.max_age == 0  # the operator's limits, not the node's defaults


async def test_an_executor_bids_again_when_a_job_whose_bid_was_lost_is_announced_again(
    nats_cluster: NatsCluster,
) -> None:
    originator = Identity.generate()
    now = _now_ms()
    spec = JobSpec(
        capability="echo",
        originator=originator.did,
        created=now,
        nonce=os.urandom(16),
        payload=cid_for_blob(b"x"),
        payload_size=1,
        deadline=now + 120_000,
    )
    job_cid = job_cid_of(spec.to_wire())

    def announce() -> bytes:
        ts = _now_ms()
        return (
            Announce(signer=originator.did, ts=ts, exp=ts + 30_000, job=spec).sign(originator).raw
        )

    cfg = node_config(0, bid_valid_ms=300)
    async with mesh(nats_cluster.urls[2], [cfg]) as (node,):
        async with raw_connection(nats_cluster.urls[0]) as nc:
            # The executor bids, but nobody hears the bid: the originator's server died
            # between its announce and the bid.
            first = announce()
            with anyio.fail_after(10):
                while not _count(node.metrics.job_bids):
                    await nc.publish(subjects.announce(FED, "echo"), first)  # replays: dropped
                    await anyio.sleep(0.05)
            await anyio.sleep(0.5)  # that bid has expired by now
            # RFC 0001 §10.6: the reconnected originator announces the same job again
            sub = await nc.subscribe(subjects.bids(FED, job_cid))
            await nc.flush()
            await nc.publish(subjects.announce(FED, "echo"), announce())
            try:
                msg = await sub.next_msg(timeout=3)
            except nats.errors.TimeoutError:
                declined = {
                    s.labels["reason"]: s.value
                    for m in node.metrics.bids_declined.collect()
                    for s in m.samples
                    if s.name.endswith("_total")
                }
                pytest.fail(f"no bid for the re-announced job within 3 s; declined: {declined}")
            _, bid = decode_message(msg.data, Bid)
            assert bid.job == job_cid and bid.signer == node.did
