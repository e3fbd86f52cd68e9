"""`python.run` jobs through the mesh: results, limits, and receipts that say what happened."""

from __future__ import annotations

import pytest

from crankmesh.originator import Job

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PY = ("python.run",)


async def test_three_nodes_twenty_python_jobs_every_receipt_verified(nats_server):
    cfgs = [node_config(i, capabilities=("echo", "python.run")) for i in range(3)]
    async with mesh(nats_server.url, cfgs) as nodes:
        async with client_for(nats_server.url, "python.run", 3) as client:
            for i in range(20):
                r = await client.run(Job.python("print(args['i'] * 2)", {"i": i}))
                assert r.ok and r.verified, (r.status, r.receipt.detail, r.stderr)
                assert r.stdout == f"{2 * i}\n"
                assert r.executor == nodes[0].did  # the cheapest
                assert r.receipt.metering.wall_us > 0


async def test_return_value_and_args(nats_server):
    async with mesh(nats_server.url, [node_config(0, capabilities=PY)]):
        async with client_for(nats_server.url, "python.run", 1) as client:
            r = await client.run(Job.python("result = {'sum': sum(args['xs'])}", {"xs": [1, 2, 3]}))
            assert r.ok and r.return_value == {"sum": 6}


async def test_job_that_loops_forever_ends_with_a_timeout_receipt(nats_server):
    async with mesh(nats_server.url, [node_config(0, capabilities=PY)]) as (node,):
        async with client_for(nats_server.url, "python.run", 1) as client:
            r = await client.run(Job.python("while True:\n    pass", timeout_sec=0.5))
            assert r.status == "timeout" and r.verified
            assert r.executor == node.did
            assert r.receipt.metering.wall_us >= 500_000
            with pytest.raises(Exception, match="timeout"):
                r.raise_for_status()
            # the node is unharmed and serves the next job
            r2 = await client.run(Job.python("print('next')"))
            assert r2.ok and r2.stdout == "next\n"


async def test_failing_code_reports_error_with_traceback(nats_server):
    async with mesh(nats_server.url, [node_config(0, capabilities=PY)]):
        async with client_for(nats_server.url, "python.run", 1) as client:
            r = await client.run(Job.python("raise ValueError('boom')"))
            assert r.status == "error" and r.verified
            assert "ValueError: boom" in r.stderr


async def test_output_limit_is_enforced(nats_server):
    async with mesh(nats_server.url, [node_config(0, capabilities=PY)]):
        async with client_for(nats_server.url, "python.run", 1) as client:
            r = await client.run(Job.python("print('x' * 10_000_000)", max_output_bytes=4096))
            assert r.status == "output_limit" and r.verified
            assert len(r.stdout) <= 4096
