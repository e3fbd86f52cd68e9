"""Misbehaviour classes on a real mesh: each detected, counted, priced and, within 20 of its
jobs, excluded (issue 18 item 3). The dishonest executors are real nodes whose agent is
altered in one place; NATS is real."""

from __future__ import annotations

import contextvars
import time
from typing import Any

import anyio
import pytest

from crankmesh.executor.agent import MAX_ASSIGNMENT_BYTES, Executor, ExecutorConfig
from crankmesh.originator import ClientConfig, Job
from crankmesh.protocol.messages import Assignment, Settlement, decode_message
from crankmesh.receipts.audit import audit
from crankmesh.receipts.export import read_stream
from crankmesh.receipts.store import stream_name
from crankmesh.transport import NatsOptions, connect
from crankmesh.verification import CanaryProber

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

_receipt_pricing = contextvars.ContextVar("receipt_pricing", default=False)


def _misconduct(client: Any, did: str, kind: str) -> int:
    return int(client.conduct.counts(did).get(kind, 0))


def _metric(client: Any, kind: str) -> float:
    for metric in client.metrics.misbehaviour.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("kind") == kind:
                return float(sample.value)
    return 0.0


async def test_an_executor_that_bids_then_rejects_every_assignment_is_excluded(
    nats_server, monkeypatch
):
    griefers: set[str] = set()
    honest_handler = Executor._on_assignment

    async def grief(self: Executor, msg: Any) -> None:
        if self.identity.did not in griefers:
            await honest_handler(self, msg)
            return
        env, asg = decode_message(msg.data, Assignment, max_len=MAX_ASSIGNMENT_BYTES)
        await self._reject(msg, asg, env.cid, "no_capacity", "queue full (griefing)")

    monkeypatch.setattr(Executor, "_on_assignment", grief)
    cfgs = [node_config(0, price=100), node_config(1, price=5000)]
    async with mesh(nats_server.url, cfgs) as (griefer, honest):
        griefers.add(griefer.did)
        async with client_for(nats_server.url, "echo", 2) as client:
            tried_griefer = []
            for i in range(20):
                r = await client.run(Job.echo(bytes([i])))
                assert r.ok and r.executor == honest.did
                tried_griefer.append(any(a.executor == griefer.did for a in r.attempts))
            # the cheapest bidder wins every first attempt until it is excluded ...
            assert all(tried_griefer[:3])
            # ... within 20 of its jobs, and then it is passed over
            assert not any(tried_griefer[-5:])
            reason = client.excluded(griefer.did, "echo")
            assert reason is not None and "rejected_assignment" in reason
            assert 4 <= _misconduct(client, griefer.did, "rejected_assignment") <= 20
            assert _metric(client, "rejected_assignment") >= 4
            rep_g, rep_h = client.reputation(griefer.did), client.reputation(honest.did)
            assert rep_g is not None and rep_h is not None and rep_g.score < rep_h.score
            considered = {c.executor: c for c in r.explanation.considered}
            why = considered[griefer.did].failure_reason or ""
            assert considered[griefer.did].failed_filter == "reputation"
            assert "× rejected_assignment" in why and "excluded:" in why
            assert client.excluded(honest.did, "echo") is None


async def test_an_executor_charging_more_than_it_bid_is_paid_its_bid_and_excluded(
    nats_server, monkeypatch
):
    cheats: set[str] = set()
    honest_publish = Executor._publish_receipt
    honest_price = ExecutorConfig.price_for

    async def publish(self: Executor, *args: Any, **kwargs: Any) -> None:
        token = _receipt_pricing.set(self.identity.did in cheats)
        try:
            await honest_publish(self, *args, **kwargs)
        finally:
            _receipt_pricing.reset(token)

    def price_for(self: ExecutorConfig, capability: str) -> int:
        price = honest_price(self, capability)
        return price * 3 if _receipt_pricing.get() else price

    monkeypatch.setattr(Executor, "_publish_receipt", publish)
    monkeypatch.setattr(ExecutorConfig, "price_for", price_for)
    cfgs = [node_config(0, price=100), node_config(1, price=5000)]
    async with mesh(nats_server.url, cfgs) as (cheat, honest):
        cheats.add(cheat.did)
        async with client_for(nats_server.url, "echo", 2) as client:
            winners = []
            for i in range(20):
                r = await client.run(Job.echo(bytes([i])))
                assert r.ok
                winners.append(r.executor)
            # its first receipt proves the overcharge: excluded at once
            assert winners[0] == cheat.did and winners[1:] == [honest.did] * 19
            reason = client.excluded(cheat.did, "echo")
            assert reason is not None and "overcharge" in reason
            assert _misconduct(client, cheat.did, "overcharge") == winners.count(cheat.did)
            assert _metric(client, "overcharge") == 1
            # a canary with the right answer does not readmit it: the canary job overcharged
            prober = CanaryProber(client, client.directory)
            outcomes = {o.executor: o for o in await prober.probe_once()}
            assert not outcomes[cheat.did].passed and "overcharge" in (
                outcomes[cheat.did].problem or ""
            )
            assert outcomes[honest.did].passed
            assert client.excluded(cheat.did, "echo") is not None
        for node in (cheat, honest):
            assert node.record_store is not None
            await node.record_store.wait_flushed()
        nc = await connect(NatsOptions(servers=(nats_server.url,)))
        try:
            with anyio.fail_after(10):
                while True:
                    records = await read_stream(nc, stream_name("default"))
                    settled = [
                        decode_message(x.data, Settlement)[1]
                        for x in records
                        if ".settlements." in x.subject
                    ]
                    if len(settled) >= 20:
                        break
                    await anyio.sleep(0.1)
        finally:
            await nc.close()
    # the settlements pay the bid's price, never the overcharge ...
    assert {s.charge for s in settled if s.executor == cheat.did} == {100}
    # ... and the audit proves the overcharge from the cheat's own signatures
    report = audit(records, now_ms=time.time_ns() // 1_000_000 + 1000)
    over = [f for f in report.findings if f.kind == "overcharge"]
    # (its 1 winning job, and the canary job it overcharged too)
    assert len(over) == winners.count(cheat.did) + 1 and {f.executor for f in over} == {cheat.did}
    assert report.executors[cheat.did].misconduct == len(over)
    assert report.executors[honest.did].misconduct == 0


async def test_an_executor_that_accepts_then_never_delivers_is_excluded(nats_server, monkeypatch):
    silent: set[str] = set()
    honest_execute = Executor._execute

    async def execute(self: Executor, *args: Any, **kwargs: Any) -> None:
        if self.identity.did not in silent:
            await honest_execute(self, *args, **kwargs)
        # else: accepted, holds the job, never delivers a receipt

    async def work(payload: bytes) -> bytes:
        return payload

    monkeypatch.setattr(Executor, "_execute", execute)
    cfgs = [
        # (its jobs never end: do not wait for them when it shuts down)
        node_config(0, capabilities=("work",), price=100, drain_grace_s=0.5),
        node_config(1, capabilities=("work",), price=5000),
    ]
    config = ClientConfig(receipt_grace_ms=150)
    async with mesh(nats_server.url, cfgs, work=work) as (cheat, honest):
        silent.add(cheat.did)
        async with client_for(nats_server.url, "work", 2, config=config) as client:
            tried = []
            for i in range(8):
                r = await client.run(Job.call("work", bytes([i]), timeout_sec=0.2))
                assert r.ok and r.executor == honest.did
                tried.append(any(a.executor == cheat.did for a in r.attempts))
            assert tried[:4] == [True] * 4 and not any(tried[-3:])
            reason = client.excluded(cheat.did, "work")
            assert reason is not None and "no_delivery" in reason
            assert 4 <= _misconduct(client, cheat.did, "no_delivery") <= 5
            assert _metric(client, "no_delivery") >= 4


async def test_an_executor_answering_assignments_with_garbage_is_excluded(nats_server, monkeypatch):
    garblers: set[str] = set()
    honest_handler = Executor._on_assignment

    async def garble(self: Executor, msg: Any) -> None:
        if self.identity.did not in garblers:
            await honest_handler(self, msg)
            return
        await self._reply(msg, b"\x84 not an accept, a reject or a receipt")

    monkeypatch.setattr(Executor, "_on_assignment", garble)
    cfgs = [node_config(0, price=100), node_config(1, price=5000)]
    async with mesh(nats_server.url, cfgs) as (garbler, honest):
        garblers.add(garbler.did)
        async with client_for(nats_server.url, "echo", 2) as client:
            tried = []
            for i in range(10):
                r = await client.run(Job.echo(bytes([i])))
                assert r.ok and r.executor == honest.did
                tried.append([a.outcome for a in r.attempts if a.executor == garbler.did])
            assert all(t and t[0].startswith("bad_accept") for t in tried[:4])
            assert not any(tried[-3:])
            reason = client.excluded(garbler.did, "echo")
            assert reason is not None and "invalid_delivery" in reason
            assert _metric(client, "invalid_delivery") >= 4
