"""Capability verification and reputation in selection (issue [4/5] acceptance)."""

from __future__ import annotations

import anyio
import pytest

from crankmesh.executor.handlers import EchoCapability, Outcome
from crankmesh.originator import Job
from crankmesh.protocol.messages import BidSlo

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


class LyingEcho(EchoCapability):
    """Answers every echo with something else (signed and consistent: only a canary
    with a known answer can tell)."""

    async def execute(self, job, payload):  # type: ignore[no-untyped-def]
        return Outcome("ok", payload[::-1] + b"!")


class SlowEcho(EchoCapability):
    async def execute(self, job, payload):  # type: ignore[no-untyped-def]
        await anyio.sleep(0.04)
        return Outcome("ok", payload)


async def test_executor_with_wrong_canary_answers_is_excluded_within_two_intervals(
    nats_server,
):
    interval = 0.5
    cfgs = [
        node_config(0, capabilities=(), extra_handlers=[LyingEcho()], price=100),
        node_config(1, price=5000),
        # the originator's node probes its peers
        node_config(2, capabilities=(), probe_interval_s=interval),
    ]
    async with mesh(nats_server.url, cfgs) as (liar, honest, me):
        assert await me.client.wait_for_peers("echo", 2) == 2
        # Before any probe the liar (cheapest) wins, and nothing on the wire shows it lies.
        first = await me.client.run(Job.echo(b"abc"))
        assert first.executor == liar.did and first.output == b"cba!" and first.verified
        # Within two probe intervals (each jittered by up to +20 %, plus the canary's
        # own run time) the liar is excluded.
        await anyio.sleep(interval * 2 * 1.2 + 0.5)
        reason = me.client.excluded(liar.did, "echo")
        assert reason is not None and "failed canary" in reason
        assert me.client.excluded(honest.did, "echo") is None
        for _ in range(5):
            r = await me.client.run(Job.echo(b"xyz"))
            assert r.executor == honest.did and r.output == b"xyz"
        considered = {c.executor: c for c in r.explanation.considered}
        assert considered[liar.did].failed_filter == "reputation"
        # counted, and the explanation says why
        assert me.client.conduct.counts(liar.did).get("canary_wrong", 0) >= 1
        assert "canary_wrong" in (considered[liar.did].failure_reason or "")
        assert not set(me.client.conduct.counts(honest.did)) - {"slo_missed"}


async def test_executor_far_slower_than_promised_ranks_below_an_honest_one(nats_server):
    cfgs = [
        node_config(0, capabilities=(), extra_handlers=[SlowEcho()], price=1000),
        node_config(1, price=1000),
    ]
    async with mesh(nats_server.url, cfgs) as (slow, honest):
        # The slow executor promises 1 ms p95 but takes ~40 ms.
        slow.executor.slo_for = lambda cap: BidSlo(  # type: ignore[method-assign]
            p50_us=500, p95_us=1000, p99_us=1500, samples=100
        )
        async with client_for(nats_server.url, "echo", 2) as client:
            for _ in range(12):
                await client.run(Job.echo(b"x"), executor=slow.did)
                await client.run(Job.echo(b"x"), executor=honest.did)
            slow_rep = client.reputation(slow.did)
            honest_rep = client.reputation(honest.did)
            assert slow_rep is not None and honest_rep is not None
            assert slow_rep.score < honest_rep.score
            # Equal prices: the honest executor now wins the tie on reputation ...
            r = await client.run(Job.echo(b"y"))
            assert r.executor == honest.did
            # ... and past the threshold of missed promises it is excluded, which the
            # explanation says (RFC 0002 §6.1: its service time is judged, not a constant).
            reason = client.excluded(slow.did, "echo")
            assert reason is not None and "promised p95" in reason
            r = await client.run(Job.echo(b"z", slo_p95_ms=20), policy="slo")
            assert r.executor == honest.did
            considered = {c.executor: c for c in r.explanation.considered}
            assert considered[slow.did].failed_filter == "reputation"
            assert "excluded: service time above 3 ×" in (considered[slow.did].failure_reason or "")
            assert client.conduct.counts(slow.did)["slo_missed"] >= 10
            assert client.conduct.counts(honest.did).get("slo_missed", 0) <= 1
