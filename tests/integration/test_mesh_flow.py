"""The signed job flow end to end on a real nats-server (RFC 0001 §8)."""

from __future__ import annotations

import os
import time
from functools import partial

import anyio
import pytest

from crankmesh.executor.handlers import EchoCapability, InProcessCapability
from crankmesh.originator import Job
from crankmesh.protocol import subjects
from crankmesh.protocol.cid import cid_for_document
from crankmesh.protocol.encoding import canonical_decode, canonical_encode
from crankmesh.protocol.envelope import open_envelope, signing_input
from crankmesh.protocol.errors import NoBids
from crankmesh.protocol.identity import Identity, did_node_id
from crankmesh.protocol.messages import (
    Announce,
    Assignment,
    Bid,
    BidSlo,
    Load,
    Receipt,
    ReceiptDelivery,
    Reject,
    decode_message,
    job_cid_of_canonical,
)

from .helpers import client_for, mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _count(metric, **labels: str) -> float:
    total = 0.0
    for m in metric.collect():
        for s in m.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def test_three_nodes_twenty_echo_jobs_every_receipt_verified_cheapest_wins(nats_server):
    async with mesh(nats_server.url, [node_config(i) for i in range(3)]) as nodes:
        cheapest = nodes[0]
        async with client_for(nats_server.url, "echo", 3) as client:
            seqs = []
            for i in range(20):
                data = os.urandom(32) + bytes([i])
                r = await client.run(Job.echo(data))
                assert r.ok and r.verified
                assert r.output == data
                assert r.executor == cheapest.did
                assert r.price == 1000
                assert r.receipt.originator == client.identity.did
                seqs.append(r.receipt.seq)
                # the explanation ranks the cheapest first (the window may close before
                # dearer bids arrive: no advertised peer could beat the cheapest)
                assert r.explanation.considered[0].executor == cheapest.did
            # the executor's receipts form an unbroken chain
            assert seqs == list(range(seqs[0], seqs[0] + 20))
        assert _count(cheapest.metrics.execution_start, capability="echo") == 20
        assert _count(nodes[1].metrics.execution_start) == 0


async def test_bid_with_forged_signature_is_never_selected(nats_server):
    """A rogue bids far below everyone, claiming another DID it cannot sign for."""
    victim = Identity.generate()
    rogue = Identity.generate()
    async with mesh(nats_server.url, [node_config(i) for i in range(2)]) as nodes:
        async with raw_connection(nats_server.url) as nc:

            async def forge(msg):
                env, ann = decode_message(msg.data, Announce)
                from crankmesh.protocol.messages import job_cid_of

                job_cid = job_cid_of(env.body["job"])
                now = time.time_ns() // 1_000_000
                body = Bid(
                    signer=victim.did,
                    ts=now,
                    exp=now + 10_000,
                    job=job_cid,
                    nonce=os.urandom(16),
                    price=1,
                    slo=BidSlo(),
                    load=Load(),
                ).to_wire()
                body_bytes = canonical_encode(body)
                sig = rogue.sign(signing_input("bid", body_bytes))  # wrong key for victim
                raw = canonical_encode({"b": body_bytes, "s": sig, "t": "bid", "v": 1})
                await nc.publish(subjects.bids("default", job_cid), raw)

            await nc.subscribe(subjects.announce("default", "echo"), cb=forge)
            await nc.flush()
            async with client_for(
                nats_server.url, "echo", 2, max_bid_window_ms=300, min_bid_window_ms=100
            ) as client:
                for _ in range(5):
                    r = await client.run(Job.echo(b"x"))
                    assert r.ok and r.executor == nodes[0].did
                    considered = {c.executor: c for c in r.explanation.considered}
                    assert considered[victim.did].failed_filter == "signature"  # seen ...
                    assert r.explanation.winner.executor == nodes[0].did
                assert client.metrics.rejection_count("bid", "bad_signature") == 5  # ...never used


async def test_executor_refuses_assignment_for_a_bid_it_did_not_make(nats_server):
    originator = Identity.generate()
    async with mesh(nats_server.url, [node_config(0)]) as (node,):
        async with raw_connection(nats_server.url) as nc:
            now = time.time_ns() // 1_000_000
            job_cid = cid_for_document(b"some job")
            from crankmesh.protocol.identity import seal

            asg = Assignment(
                signer=originator.did,
                ts=now,
                exp=now + 5000,
                job=job_cid,
                bid=cid_for_document(b"a bid nobody made"),
                executor=node.did,
                attempt=1,
                nonce=os.urandom(16),
                payload=seal(b"hi", node.did, sender=originator),
                deadline=now + 10_000,
            ).sign(originator)
            reply = await nc.request(
                subjects.assignment("default", job_cid, node.did), asg.raw, timeout=2
            )
            env, rej = decode_message(reply.data, Reject)
            env.verify()
            assert rej.signer == node.did and rej.reason == "unknown_bid"
            assert rej.assignment == asg.cid
    assert _count(node.metrics.execution_start) == 0


async def test_replayed_assignment_is_not_executed_twice(nats_server):
    async with mesh(nats_server.url, [node_config(0)]) as (node,):
        async with raw_connection(nats_server.url) as sniffer:
            captured: list[tuple[str, bytes]] = []

            async def grab(msg):
                captured.append((msg.subject, msg.data))

            await sniffer.subscribe("crank.default.jobs.*.assignment.*", cb=grab)
            await sniffer.flush()
            async with client_for(nats_server.url, "echo", 1) as client:
                r = await client.run(Job.echo(b"once"))
                assert r.ok
            assert len(captured) == 1
            subject, raw = captured[0]
            receipts = []

            async def on_receipt(msg):
                receipts.append(msg.data)

            await sniffer.subscribe(subjects.receipt_delivery("default", r.job_cid), cb=on_receipt)
            for _ in range(3):
                reply = await sniffer.request(subject, raw, timeout=2)
                env = open_envelope(reply.data)
                env.verify()
                assert env.type == "accept"  # the original acceptance, not a new run
            await anyio.sleep(0.2)
            assert len(receipts) == 3  # the original receipt is re-published
            assert _count(node.metrics.execution_start) == 1
            assert _count(node.metrics.assignments, outcome="duplicate") == 3


class _DrainAfterBid(EchoCapability):
    """An echo that starts draining right after it bids: its assignment is rejected."""

    executor = None

    def check(self, job):
        self.executor._draining = True  # the bid is still published after this check
        return None


async def test_rejecting_executor_leads_to_next_bid(nats_server):
    handler = _DrainAfterBid()
    cfgs = [node_config(0, capabilities=(), extra_handlers=[handler]), node_config(1)]
    async with mesh(nats_server.url, cfgs) as nodes:
        handler.executor = nodes[0].executor
        async with client_for(nats_server.url, "echo", 2, max_bid_window_ms=500) as client:
            r = await client.run(Job.echo(b"next"))
            assert r.ok and r.executor == nodes[1].did
            assert [a.executor for a in r.attempts] == [nodes[0].did]
            assert r.attempts[0].outcome.startswith("rejected: draining")
        assert _count(nodes[0].metrics.execution_start) == 0


async def test_executor_gone_before_accept_fails_over_at_once(nats_server):
    async with mesh(nats_server.url, [node_config(0), node_config(1)]) as nodes:
        victim = nodes[0]
        async with raw_connection(nats_server.url) as sniffer:

            async def kill_on_bid(msg):
                env = open_envelope(msg.data)
                if env.signer == victim.did and not victim.nc.is_closed:
                    await victim.nc.close()

            await sniffer.subscribe("crank.default.jobs.*.bids", cb=kill_on_bid)
            await sniffer.flush()
            # keep the window open long enough for the victim's connection to be gone
            async with client_for(
                nats_server.url, "echo", 2, max_bid_window_ms=500, min_bid_window_ms=300
            ) as client:
                t = time.perf_counter()
                r = await client.run(Job.echo(b"failover"))
                assert r.ok and r.executor == nodes[1].did
                assert r.attempts and r.attempts[0].executor == victim.did
                assert r.attempts[0].outcome.startswith("unreachable")
                assert time.perf_counter() - t < 2.0


async def test_a_failed_executor_that_keeps_bidding_does_not_end_the_job_while_others_are_busy(
    nats_server,
):
    """Regression (CI, stop 8): an executor whose server died failed over and bid again on
    every re-announce while the others were full; those bids counted as "got bids", so the
    rounds ran out and the job ended in ExecutorsExhausted instead of waiting for a slot."""
    py = ("python.run",)
    cfgs = [
        node_config(0, capabilities=py, price=1),  # cheapest, but unreachable for assignments
        node_config(1, capabilities=py, price=1000, max_concurrency=1, queue_depth=0),
    ]
    async with mesh(nats_server.url, cfgs) as (ghost, busy):
        assignments = subjects.assignments_for("default", ghost.did)
        (sub,) = [s for s in ghost.nc._subs.values() if s.subject == assignments]
        await sub.unsubscribe()
        async with client_for(nats_server.url, "python.run", 2, busy_wait_s=10) as client:
            async with anyio.create_task_group() as tg:
                hold = Job.python("import time\ntime.sleep(0.8)\nprint('held')", timeout_sec=5)
                tg.start_soon(partial(client.run, hold, executor=busy.did))
                with anyio.fail_after(5):
                    while busy.executor.peak_running < 1:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                r = await client.run(Job.python("print('after')", timeout_sec=5))
            assert r.ok and r.executor == busy.did and r.stdout == "after\n"
            assert [a.executor for a in r.attempts] == [ghost.did]
            assert r.attempts[0].outcome.startswith("unreachable")


async def test_a_jobs_subscription_ends_with_its_settlement_or_its_failure(nats_server):
    """The per-job subscription (jobs.<cid>.*) is handed to the settlement task, which
    ends it in the same write as the settlement; a failed job ends it at once."""

    def job_subs(client) -> list[str]:
        return [s.subject for s in client._nc._subs.values() if ".jobs." in s.subject]

    async with mesh(nats_server.url, [node_config(0)]):
        async with client_for(nats_server.url, "echo", 1, max_attempts=1) as client:
            for i in range(5):
                r = await client.run(Job.echo(b"%d" % i))
                assert r.ok
            with anyio.fail_after(5):
                while job_subs(client):  # noqa: ASYNC110 (settlements run just after)
                    await anyio.sleep(0.01)
            with pytest.raises(NoBids):
                await client.run(Job.call("no.such.capability", b"x"), policy="cost")
            assert job_subs(client) == []


async def test_a_nodes_client_uses_the_nodes_live_directory(nats_server):
    """Regression: an empty directory is falsy (it has __len__); the node's client once
    got a fresh, never-served one, so it never knew whom to expect bids from."""
    async with mesh(nats_server.url, [node_config(0), node_config(1)]) as (a, b):
        assert a.client.directory is a.directory
        assert await a.client.wait_for_peers("echo", 2, wait_s=5) == 2
        r = await a.client.run(Job.echo(b"local or remote"))
        assert r.ok and r.executor == a.did  # cheapest, and local


async def _answers_to_assignments(url: str, run) -> list[bytes]:
    """Run ``run()`` while sniffing every reply (``_INBOX.>``); return the answers to
    assignment requests (every reply but JetStream's JSON acks of audit records)."""
    answers: list[bytes] = []
    async with raw_connection(url) as sniffer:

        async def grab(msg):
            if not msg.data.startswith(b"{"):
                answers.append(msg.data)

        await sniffer.subscribe("_INBOX.>", cb=grab)
        await sniffer.flush()
        await run()
        await anyio.sleep(0.1)
    return answers


async def test_a_quick_job_answers_its_assignment_with_the_receipt(nats_server):
    """RFC 0001 §8.6: echo with a free slot answers with its ReceiptDelivery; no Accept."""
    async with mesh(nats_server.url, [node_config(0)]) as (node,):
        async with client_for(nats_server.url, "echo", 1) as client:
            results = []

            async def run():
                for i in range(3):
                    results.append(await client.run(Job.echo(bytes([i]))))

            answers = await _answers_to_assignments(nats_server.url, run)
        assert [r.output for r in results] == [b"\x00", b"\x01", b"\x02"]
        assert all(r.ok and r.verified for r in results)
        assert len(answers) == 3
        for answer, r in zip(answers, results, strict=True):
            delivery = ReceiptDelivery.model_validate(canonical_decode(answer))
            env, receipt = decode_message(delivery.receipt, Receipt)
            assert receipt.job == r.job_cid and env.cid == r.receipt_cid
        # one delivery per job, as the answer: none on the receipt subject
        assert _count(node.metrics.assignments, outcome="accepted") == 3


async def test_a_job_that_is_not_quick_is_accepted_first(nats_server):
    async def upper(data: bytes) -> bytes:
        return data.upper()

    cfg = node_config(0, capabilities=(), extra_handlers=[InProcessCapability("upper", upper)])
    async with mesh(nats_server.url, [cfg]):
        async with client_for(nats_server.url, "upper", 1) as client:
            results = []

            async def run():
                results.append(await client.run(Job.call("upper", b"abc")))

            answers = await _answers_to_assignments(nats_server.url, run)
        assert results[0].output == b"ABC"
        assert len(answers) == 1 and open_envelope(answers[0]).type == "accept"


async def test_a_malformed_receipt_answer_fails_the_attempt_and_the_job_moves_on(nats_server):
    """A rogue bids cheapest and answers its assignment with a map that is no valid
    ReceiptDelivery: the attempt fails at once (bad_accept) and an honest node runs it."""
    rogue = Identity.generate()
    async with mesh(nats_server.url, [node_config(1)]) as (honest,):
        async with raw_connection(nats_server.url) as nc:

            async def bid(msg):
                env, ann = decode_message(msg.data, Announce)
                job_cid = job_cid_of_canonical(env.body["job"])
                now = time.time_ns() // 1_000_000
                b = Bid(
                    signer=rogue.did,
                    ts=now,
                    exp=now + 10_000,
                    job=job_cid,
                    nonce=os.urandom(16),
                    price=1,
                ).sign(rogue)
                await nc.publish(subjects.bids("default", job_cid), b.raw)

            async def answer(msg):
                await msg.respond(canonical_encode({"receipt": b"not a receipt"}))

            await nc.subscribe(subjects.announce("default", "echo"), cb=bid)
            await nc.subscribe(
                f"crank.default.jobs.*.assignment.{did_node_id(rogue.did)}", cb=answer
            )
            await nc.flush()
            async with client_for(
                nats_server.url, "echo", 1, max_bid_window_ms=300, min_bid_window_ms=100
            ) as client:
                t0 = time.monotonic()
                r = await client.run(Job.echo(b"x"))
                assert r.ok and r.executor == honest.did
                assert time.monotonic() - t0 < 1.5  # not the 2 s accept timeout
                first = r.attempts[0]
                assert first.executor == rogue.did and first.outcome.startswith("bad_accept")
                assert client.metrics.rejection_count("receipt", "decode") == 1


class _SlowQuickEcho(EchoCapability):
    """Claims to be quick but takes longer than the originator's accept timeout."""

    async def execute(self, job, payload):  # type: ignore[no-untyped-def]
        await anyio.sleep(0.6)
        return await super().execute(job, payload)


async def test_a_quick_job_whose_answer_came_too_late_still_delivers_at_once(nats_server):
    """The first request times out while the job runs; the re-sent assignment is
    accepted, and the receipt then goes to the receipt subject (not to the first,
    abandoned reply inbox): the job ends when it finishes, not at the receipt deadline."""
    cfg = node_config(0, capabilities=(), extra_handlers=[_SlowQuickEcho()])
    async with mesh(nats_server.url, [cfg]) as (node,):
        async with client_for(nats_server.url, "echo", 1, accept_timeout_ms=250) as client:
            t0 = time.monotonic()
            r = await client.run(Job.echo(b"late"))
            elapsed = time.monotonic() - t0
        assert r.ok and r.output == b"late" and len(r.attempts) == 0
        assert elapsed < 2.0  # the receipt deadline would be 10 s + 3 s away
        assert _count(node.metrics.assignments, outcome="duplicate") == 1
        assert _count(node.metrics.execution_start) == 1
