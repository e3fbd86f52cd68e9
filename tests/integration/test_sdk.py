"""The originator SDK surface: submit/handles/events, map, costs, sync wrapper,
observed-vs-promised reputation, settlements."""

from __future__ import annotations

import anyio
import pytest

from crankmesh import ClientStateError, SyncClient
from crankmesh.originator import Client, Job
from crankmesh.protocol import subjects
from crankmesh.protocol.messages import Settlement, decode_message

from .helpers import client_for, mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration]


@pytest.mark.anyio
async def test_submit_handle_events_result_and_explanation(nats_server):
    async with mesh(nats_server.url, [node_config(0), node_config(1)]) as nodes:
        async with client_for(nats_server.url, "echo", 2) as client:
            handle = client.submit(Job.echo(b"async"))
            kinds = [ev.kind async for ev in handle.watch()]
            r = await handle.result()
            assert r.output == b"async" and r.executor == nodes[0].did
            assert kinds[0] == "announced" and kinds[-1] == "completed"
            assert {"bids", "assigned", "accepted"} <= set(kinds)
            assert handle.job_cid == r.job_cid and handle.done
            assert handle.explanation.winner.executor == nodes[0].did
            assert "cheapest" in handle.explanation.render()


@pytest.mark.anyio
async def test_cancel_stops_waiting(nats_server):
    async with mesh(nats_server.url, [node_config(0, capabilities=("python.run",))]):
        async with client_for(nats_server.url, "python.run", 1) as client:
            handle = client.submit(Job.python("import time; time.sleep(5)", timeout_sec=10))
            await anyio.sleep(0.3)
            handle.cancel()
            with anyio.fail_after(3):
                with pytest.raises(BaseException, match="cancelled"):
                    await handle.result()
            assert handle.status == "cancelled"


@pytest.mark.anyio
async def test_map_bounded_concurrency_in_order_and_costs(nats_server):
    async with mesh(nats_server.url, [node_config(0), node_config(1)]) as nodes:
        async with client_for(nats_server.url, "echo", 2) as client:
            jobs = [Job.echo(b"%d" % i) for i in range(20)]
            results = await client.map(jobs, concurrency=4)
            assert [r.output for r in results] == [b"%d" % i for i in range(20)]
            costs = client.costs()
            assert len(costs.jobs) == 20
            assert costs.total == {"USD": sum(r.price for r in results)}
            assert set(costs.by_executor) <= {n.did for n in nodes}
            assert all(e.duration_ms > 0 for e in costs.jobs)


@pytest.mark.anyio
async def test_map_return_exceptions(nats_server):
    async with mesh(nats_server.url, [node_config(0)]):
        async with client_for(nats_server.url, "echo", 1, busy_wait_s=0) as client:
            out = await client.map(
                [Job.echo(b"ok"), Job.call("nobody.has.this", b"x")], return_exceptions=True
            )
            assert out[0].ok and isinstance(out[1], Exception)


@pytest.mark.anyio
async def test_originator_countersigns_a_settlement_per_receipt(nats_server):
    async with mesh(nats_server.url, [node_config(0)]) as (node,):
        async with raw_connection(nats_server.url) as nc:
            got: list[bytes] = []

            async def grab(msg):
                got.append(msg.data)

            await nc.subscribe(subjects.settlements_all("default"), cb=grab)
            await nc.flush()
            async with client_for(nats_server.url, "echo", 1) as client:
                r = await client.run(Job.echo(b"settle me"))
                await anyio.sleep(0.2)
            assert len(got) == 1
            env, st = decode_message(got[0], Settlement)
            env.verify()
            assert st.signer == client.identity.did and st.receipt == r.receipt_cid
            assert st.executor == node.did and st.verified and st.charge == r.price
            assert st.assignment == r.receipt.assignment


@pytest.mark.anyio
async def test_observed_latency_feeds_local_reputation(nats_server):
    # calibrated, so that every bid carries the p95 its service times are judged by
    async with mesh(nats_server.url, [node_config(0, calibration_runs=5)]) as (node,):
        async with client_for(nats_server.url, "echo", 1) as client:
            for _ in range(6):
                await client.run(Job.echo(b"x"))
            rep = client.reputation(node.did)
            assert rep is not None and rep.score > 0.5
            r = await client.run(Job.echo(b"x"))
            considered = r.explanation.considered[0]
            assert considered.observed_p95_us is not None


def test_sync_client_runs_jobs_from_plain_code(nats_server):
    async def serve(stop: anyio.Event) -> None:
        async with mesh(nats_server.url, [node_config(0)]):
            await stop.wait()

    from anyio.from_thread import start_blocking_portal

    with start_blocking_portal() as portal:
        stop = portal.call(anyio.Event)
        future = portal.start_task_soon(serve, stop)
        try:
            with SyncClient(nats=nats_server.url) as client:
                assert client.wait_for_peers("echo", 1) == 1
                r = client.run(Job.echo(b"sync"))
                assert r.ok and r.output == b"sync"
                assert [x.output for x in client.map([Job.echo(b"a"), Job.echo(b"b")])] == [
                    b"a",
                    b"b",
                ]
                assert client.costs().total["USD"] == 3 * r.price
            with pytest.raises(ClientStateError):
                client.run(Job.echo(b"closed"))
        finally:
            portal.call(stop.set)
            future.result(timeout=10)


@pytest.mark.anyio
async def test_client_cannot_be_reopened(nats_server):
    client = Client(nats=nats_server.url)
    async with client:
        pass
    with pytest.raises(ClientStateError, match="reopen"):
        async with client:
            pass
