"""Budget tokens on a real mesh (seed 000 §5): delegation, refusal, spend limits."""

from __future__ import annotations

import os
import time

import pytest

from crankmesh import BudgetExceeded
from crankmesh.originator import Job
from crankmesh.protocol import subjects
from crankmesh.protocol.cid import cid_for_document
from crankmesh.protocol.errors import TokenInvalid
from crankmesh.protocol.identity import Identity, seal
from crankmesh.protocol.messages import Assignment, Reject, decode_message
from crankmesh.protocol.tokens import delegate, encode_chain, issue

from .helpers import client_for, mesh, node_config, raw_connection

pytestmark = [
    pytest.mark.integration, pytest.mark.anyio,
    pytest.mark.usefixtures("both_paths"),  # quote and call-for-bids paths
]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_delegated_budget_pays_and_halts_with_budget_exceeded(nats_server):
    treasury, team, me = Identity.generate(), Identity.generate(), Identity.generate()
    root = issue(
        treasury,
        audience=team.did,
        scope="*",
        amount=10_000,
        currency="USD",
        now_ms=now_ms(),
        ttl_ms=600_000,
    )
    child = delegate(root, team, audience=me.did, amount=3_500, scope="echo", now_ms=now_ms())
    async with mesh(nats_server.url, [node_config(0, price=1000)]) as (node,):
        async with client_for(nats_server.url, "echo", 1, identity=me) as client:
            job = Job.echo(b"paid").with_budget([root, child])
            results = [await client.run(job) for _ in range(3)]
            assert all(r.ok and r.price == 1000 for r in results)
            assert all(r.receipt.budget == child.cid for r in results)
            with pytest.raises(BudgetExceeded) as info:
                await client.run(job)  # 3 x 1000 spent, 500 left < the 1000 bid
            assert info.value.remaining_micros == 500
            assert "500" in str(info.value)
        assert node.executor.budgets.spent is not None


async def test_over_scoped_or_expired_tokens_are_refused_by_the_client(nats_server):
    treasury, me = Identity.generate(), Identity.generate()
    narrow = issue(
        treasury,
        audience=me.did,
        scope="python.*",
        amount=10_000,
        currency="USD",
        now_ms=now_ms(),
        ttl_ms=600_000,
    )
    expired = issue(
        treasury,
        audience=me.did,
        scope="*",
        amount=10_000,
        currency="USD",
        now_ms=now_ms() - 120_000,
        ttl_ms=60_000,
    )
    async with mesh(nats_server.url, [node_config(0)]):
        async with client_for(nats_server.url, "echo", 1, identity=me) as client:
            with pytest.raises(TokenInvalid, match="scope"):
                await client.run(Job.echo(b"x").with_budget([narrow]))
            with pytest.raises(TokenInvalid, match="expired"):
                await client.run(Job.echo(b"x").with_budget([expired]))


# Hand-forged assignments on bids: one path is enough (the client part fails before either).
@pytest.mark.parametrize("both_paths", ["call_for_bids"], indirect=True)
async def test_executor_refuses_forged_or_foreign_budget_chains(nats_server, both_paths):
    """A rogue originator sends assignments with chains it does not hold or that were
    tampered with; the executor rejects each with budget_invalid before running."""
    treasury, rogue, other = Identity.generate(), Identity.generate(), Identity.generate()
    others_token = issue(
        treasury,
        audience=other.did,
        scope="*",
        amount=10_000,
        currency="USD",
        now_ms=now_ms(),
        ttl_ms=600_000,
    )
    async with mesh(nats_server.url, [node_config(0)]) as (node,):
        async with client_for(
            nats_server.url, "echo", 1, identity=rogue, max_attempts=1, max_rounds=1, busy_wait_s=0
        ) as client:
            job = Job.echo(b"steal")
            # the client itself refuses a token whose audience is not its own DID ...
            with pytest.raises(TokenInvalid):
                await client.run(job.with_budget([others_token]))
        # ... so forge the assignment by hand, as a rogue node would.
        async with raw_connection(nats_server.url) as nc:
            for chain in (encode_chain([others_token]), b"\x91\xc4\x03abc"):
                now = now_ms()
                job_cid = cid_for_document(os.urandom(8))
                asg = Assignment(
                    signer=rogue.did,
                    ts=now,
                    exp=now + 5000,
                    job=job_cid,
                    bid=cid_for_document(b"nope"),
                    executor=node.did,
                    attempt=1,
                    nonce=os.urandom(16),
                    payload=seal(b"x", node.did, sender=rogue),
                    deadline=now + 9000,
                    budget_chain=chain,
                ).sign(rogue)
                reply = await nc.request(
                    subjects.assignment("default", job_cid, node.did), asg.raw, timeout=2
                )
                _, rej = decode_message(reply.data, Reject)
                assert rej.reason in ("unknown_bid", "budget_invalid")
    assert node.metrics.execution_start.collect()[0].samples == [] or all(
        s.value == 0 for s in node.metrics.execution_start.collect()[0].samples
    )
