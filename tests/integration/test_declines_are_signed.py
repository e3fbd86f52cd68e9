"""Say it, don't go silent (issue 14 item 6, RFC 0001 §8.13, §11): an executor that
declines a verified announce answers with a signed NoBid, the originator's window
closes early and its error names the reasons; a misaddressed Assignment gets a fast
signed Reject; forged announces get nothing at all (no amplification)."""

from __future__ import annotations

import os
import time

import anyio
import nats.errors
import pytest

from crankmesh import BidsDeclined, NoCapacity, NoSuitableExecutor
from crankmesh.originator import Job
from crankmesh.protocol import subjects
from crankmesh.protocol.cid import cid_for_blob, cid_for_document
from crankmesh.protocol.encoding import encode_canonicalized
from crankmesh.protocol.envelope import open_envelope
from crankmesh.protocol.identity import Identity, seal
from crankmesh.protocol.messages import (
    Announce,
    Assignment,
    JobSpec,
    NoBid,
    Reject,
    decode_message,
    job_cid_of_canonical,
)

from .helpers import client_for, mesh, node_config, raw_connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _now() -> int:
    return time.time_ns() // 1_000_000


def _announce(signer: Identity, *, forged: bool = False, **job: object) -> tuple[str, bytes]:
    """A signed echo Announce by ``signer`` (``forged``: the same bytes with a random
    signature); returns (job CID, envelope bytes)."""
    now = _now()
    spec = JobSpec(
        capability="echo",
        originator=signer.did,
        created=now,
        nonce=os.urandom(16),
        payload=cid_for_blob(b"x"),
        payload_size=1,
        deadline=now + 60_000,
        **job,  # type: ignore[arg-type]
    )
    env = Announce(signer=signer.did, ts=now, exp=now + 30_000, job=spec).sign(signer)
    raw = env.raw
    if forged:
        raw = encode_canonicalized(
            {"b": env.body_bytes, "s": os.urandom(64), "t": "announce", "v": 1}
        )
    return job_cid_of_canonical(spec.to_wire()), raw


async def _answers(nc, job_cid: str, raw: bytes, wait_s: float = 0.5) -> list[bytes]:
    """Publish an announce and collect what comes back on the job's bids subject."""
    got: list[bytes] = []

    async def cb(msg) -> None:
        got.append(msg.data)

    sub = await nc.subscribe(subjects.bids("default", job_cid), cb=cb)
    await nc.flush()
    await nc.publish(subjects.announce("default", "echo"), raw)
    await nc.flush()
    await anyio.sleep(wait_s)
    await sub.unsubscribe()
    return got


def _declined(node, reason: str) -> float:
    return sum(
        s.value
        for m in node.metrics.bids_declined.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels.get("reason") == reason
    )


async def test_forged_announces_reserve_nothing_and_get_no_answer(nats_server):
    """Random signatures, random DIDs and the trusted client's DID: dropped before any
    reservation, counted as bad_signature, and never answered (no bid, no NoBid)."""
    trusted = Identity.generate()
    plain = node_config(0)
    strict = node_config(1, trusted=frozenset({trusted.did}))
    async with mesh(nats_server.url, [plain, strict]) as nodes:
        async with raw_connection(nats_server.url) as nc:
            for forged_by in (Identity.generate(), Identity.generate(), trusted):
                job_cid, raw = _announce(forged_by, forged=True)
                assert await _answers(nc, job_cid, raw, wait_s=0.3) == []
            for node in nodes:
                ex = node.executor
                assert ex is not None
                assert ex.peak_outstanding == 0 and ex.outstanding == 0
                assert node.metrics.rejection_count("announce", "bad_signature") == 3
                assert node.metrics.rejection_count("announce", "untrusted") == 0
            # The very same announce, correctly signed by the trusted DID, gets a bid from
            # both: nothing of the forgeries stuck (no replay entry, no spent budget).
            job_cid, raw = _announce(trusted)
            answers = await _answers(nc, job_cid, raw)
            assert sorted(open_envelope(a).type for a in answers) == ["bid", "bid"]


async def test_untrusted_but_verified_announce_gets_a_signed_nobid(nats_server):
    member, outsider = Identity.generate(), Identity.generate()
    cfg = node_config(0, trusted=frozenset({member.did}))
    async with mesh(nats_server.url, [cfg]) as (node,):
        async with raw_connection(nats_server.url) as nc:
            job_cid, raw = _announce(outsider)
            (answer,) = await _answers(nc, job_cid, raw)
            env, nobid = decode_message(answer, NoBid)
            env.verify()
            assert nobid.signer == node.did and nobid.job == job_cid
            assert nobid.reason == "untrusted"
            assert node.executor is not None and node.executor.peak_outstanding == 0
            assert node.metrics.rejection_count("announce", "untrusted") == 1


async def test_rate_limited_executor_says_so_and_the_window_closes_early(nats_server):
    """A 5 s bid window ends as soon as the only peer's NoBid arrives, and the error
    names its reason instead of guessing "full, or rate-limiting"."""
    cfg = node_config(0, originator_rate=0.001, originator_burst=1)
    async with mesh(nats_server.url, [cfg]) as (node,):
        async with client_for(
            nats_server.url, "echo", 1, max_bid_window_ms=5_000, busy_wait_s=0
        ) as client:
            assert (await client.run(Job.echo(b"first"))).ok  # spends the burst of 1
            t0 = time.monotonic()
            with pytest.raises(NoCapacity) as info:
                await client.run(Job.echo(b"second"))
            assert time.monotonic() - t0 < 2.0, "the window waited for a NoBid it had"
            assert info.value.declines.keys() == {node.did}
            assert info.value.declines[node.did].startswith("rate_limited")
            assert "rate_limited" in str(info.value) and node.did in str(info.value)
        assert _declined(node, "rate_limited") == 1


async def test_a_decline_waiting_cannot_cure_ends_the_job_at_once_with_every_reason(
    nats_server,
):
    """Both nodes are over the job's price cap: the job fails within a round naming each
    node's reason, rather than busy-waiting 10 s and saying "no capacity".  The client's
    directory already shows the prices (NoSuitableExecutor, no announce at all); where it
    did not, the nodes' signed NoBids would (BidsDeclined)."""
    configs = [node_config(0, price=5_000), node_config(1, price=7_000)]
    async with mesh(nats_server.url, configs) as nodes:
        async with client_for(
            nats_server.url, "echo", 2, max_bid_window_ms=5_000, busy_wait_s=10
        ) as client:
            t0 = time.monotonic()
            with pytest.raises((BidsDeclined, NoSuitableExecutor)) as info:
                await client.run(Job.echo(b"x", max_price=100))
            assert time.monotonic() - t0 < 3.0
        reasons = _reasons_by_executor(info.value, nodes)
        assert reasons.keys() == {n.did for n in nodes}
        assert all("100" in r and ("over_price" in r or "max price" in r) for r in reasons.values())
        if isinstance(info.value, BidsDeclined):
            for node in nodes:
                assert _declined(node, "over_max_price") == 1


def _reasons_by_executor(exc: Exception, nodes) -> dict[str, str]:
    """executor DID -> the reason the error gives for it, for either fast verdict."""
    if isinstance(exc, BidsDeclined):
        return dict(exc.declines)
    assert isinstance(exc, NoSuitableExecutor)
    return {n.did: r for n in nodes for r in exc.reasons if n.did in r}


async def test_forged_nobid_is_ignored_by_the_originator(nats_server):
    """A NoBid with a bad signature (or from another job) neither closes the window
    nor shows up in the error: the real executor's bid still wins."""
    async with mesh(nats_server.url, [node_config(0)]) as (node,):
        async with raw_connection(nats_server.url) as nc:
            impostor = Identity.generate()

            async def forge(msg) -> None:
                env, ann = decode_message(msg.data, Announce)
                job_cid = job_cid_of_canonical(env.body["job"])
                real = NoBid(signer=impostor.did, ts=_now(), job=job_cid, reason="full").sign(
                    impostor
                )
                # Claims to be the node, but carries the impostor's signature.
                body = dict(real.body, signer=node.did)
                raw = encode_canonicalized(
                    {
                        "b": encode_canonicalized(dict(sorted(body.items()))),
                        "s": real.signature,
                        "t": "nobid",
                        "v": 1,
                    }
                )
                await nc.publish(subjects.bids("default", job_cid), raw)

            await nc.subscribe(subjects.announce("default", "echo"), cb=forge)
            await nc.flush()
            async with client_for(nats_server.url, "echo", 1, max_bid_window_ms=2_000) as client:
                r = await client.run(Job.echo(b"x"))
                assert r.ok and r.executor == node.did
                assert client.metrics.rejection_count("nobid", "bad_signature") >= 1


async def test_misaddressed_assignment_gets_a_fast_signed_reject(nats_server):
    originator, other = Identity.generate(), Identity.generate()
    async with mesh(nats_server.url, [node_config(0)]) as (node,):
        async with raw_connection(nats_server.url) as nc:
            now = _now()
            job_cid = cid_for_document(b"some job")
            asg = Assignment(
                signer=originator.did,
                ts=now,
                exp=now + 5000,
                job=job_cid,
                bid=cid_for_document(b"a bid"),
                executor=other.did,  # not this node
                attempt=1,
                nonce=os.urandom(16),
                payload=seal(b"hi", other.did, sender=originator),
                deadline=now + 10_000,
            ).sign(originator)
            t0 = time.monotonic()
            reply = await nc.request(
                subjects.assignment("default", job_cid, node.did), asg.raw, timeout=1
            )
            assert time.monotonic() - t0 < 0.5
            env, rej = decode_message(reply.data, Reject)
            env.verify()
            assert rej.signer == node.did and rej.reason == "not_addressed"
            assert rej.assignment == asg.cid and other.did in rej.detail
            assert node.metrics.rejection_count("assignment", "not_addressed") == 1
            # The same assignment with a forged signature gets no signed answer at all.
            forged = encode_canonicalized(
                {"b": asg.body_bytes, "s": os.urandom(64), "t": "assignment", "v": 1}
            )
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(
                    subjects.assignment("default", job_cid, node.did), forged, timeout=0.5
                )
            assert node.metrics.rejection_count("assignment", "bad_signature") == 1


async def test_verified_originators_share_an_executors_reservations_fairly(nats_server):
    """Capacity 4: a lone originator gets at most half in live bids once half full,
    a second one still gets a bid, and each is told "full" with the fair-share detail."""
    a, b, c, d = (Identity.generate() for _ in range(4))
    cfg = node_config(0, max_concurrency=1, queue_depth=3)
    async with mesh(nats_server.url, [cfg]) as (node,):
        async with raw_connection(nats_server.url) as nc:

            async def answer(who: Identity) -> NoBid | str:
                job_cid, raw = _announce(who)
                (data,) = await _answers(nc, job_cid, raw, wait_s=0.3)
                env = open_envelope(data)
                if env.type == "bid":
                    return "bid"
                return decode_message(env, NoBid)[1]

            got = [await answer(x) for x in (a, a, a, b, b, c, d)]
            assert got[:2] == ["bid", "bid"]
            assert isinstance(got[2], NoBid) and got[2].reason == "full"
            assert "fair share" in got[2].detail and "holds 2 of 4" in got[2].detail
            assert got[3] == "bid"  # room was left for a newcomer
            assert isinstance(got[4], NoBid) and "fair share" in got[4].detail
            assert got[5] == "bid"
            assert isinstance(got[6], NoBid) and got[6].reason == "full"
            assert "fair share" not in got[6].detail  # simply full now: 4 of 4
        assert _declined(node, "fair_share") == 2 and _declined(node, "no_capacity") == 1
        assert node.executor is not None and node.executor.peak_outstanding == 4


async def test_early_close_floors_come_only_from_bidders_that_have_not_answered(nats_server):
    """Cost policy. A (1000) bids, B (500, the cheapest advert) declines with a NoBid, C
    (3000) is slow to answer: with B's NoBid counted, no bid still to come can beat A,
    so the window closes at once instead of waiting for C."""
    from crankmesh.executor.agent import Executor

    class _Slow(Executor):
        async def _on_announce(self, msg):  # type: ignore[no-untyped-def]
            await anyio.sleep(1.5)
            await super()._on_announce(msg)

    configs = [
        node_config(0, price=1000),
        node_config(1, price=500, originator_burst=0),  # declines every job: rate_limited
        node_config(2, price=3000),
    ]
    async with mesh(nats_server.url, configs) as (a, b, c):
        assert c.executor is not None
        c.executor.__class__ = _Slow
        async with client_for(
            nats_server.url, "echo", 3, max_bid_window_ms=3_000, policy="cost"
        ) as client:
            t0 = time.monotonic()
            r = await client.run(Job.echo(b"x"))
            took = time.monotonic() - t0
        assert r.ok and r.executor == a.did
        assert took < 1.0, f"the window waited {took:.2f} s for a bid that could not win"
        assert _declined(b, "rate_limited") == 1


async def test_nobids_to_one_originator_are_bounded_and_the_rest_counted(nats_server):
    """An originator over its rate gets NoBids only up to the bound (burst 8 here):
    a flood of genuine announces cannot make the executor sign without limit."""
    flooder = Identity.generate()
    cfg = node_config(0, originator_rate=0.001, originator_burst=1)
    async with mesh(nats_server.url, [cfg]) as (node,):
        async with raw_connection(nats_server.url) as nc:
            kinds: list[str] = []

            async def cb(msg) -> None:
                kinds.append(open_envelope(msg.data).type)

            await nc.subscribe("crank.default.jobs.*.bids", cb=cb)
            await nc.flush()
            for _ in range(12):
                _, raw = _announce(flooder)
                await nc.publish(subjects.announce("default", "echo"), raw)
            await nc.flush()
            await anyio.sleep(0.5)
        assert sorted(kinds) == ["bid"] + ["nobid"] * 8, kinds
        assert node.metrics.rejection_count("nobid", "suppressed") == 3
        assert _declined(node, "rate_limited") == 11


async def test_untrusted_signers_share_one_nobid_bound_however_many_keys(nats_server):
    """Twelve genuine announces from twelve fresh untrusted keys: eight NoBids (the
    shared burst), four suppressed -- fresh keys buy no more signed answers."""
    member = Identity.generate()
    # NoBid bound: max(rate, 1)/s, burst max(burst, 8) -- 8 here.
    cfg = node_config(0, trusted=frozenset({member.did}), originator_rate=0.001, originator_burst=1)
    async with mesh(nats_server.url, [cfg]) as (node,):
        async with raw_connection(nats_server.url) as nc:
            kinds: list[str] = []

            async def cb(msg) -> None:
                kinds.append(open_envelope(msg.data).type)

            await nc.subscribe("crank.default.jobs.*.bids", cb=cb)
            await nc.flush()
            for _ in range(12):
                _, raw = _announce(Identity.generate())
                await nc.publish(subjects.announce("default", "echo"), raw)
            await nc.flush()
            await anyio.sleep(0.5)
        assert kinds == ["nobid"] * 8, kinds
        assert node.metrics.rejection_count("nobid", "suppressed") == 4
        assert node.metrics.rejection_count("announce", "untrusted") == 12


async def test_an_unsupported_env_profile_is_named_in_the_error_at_once(nats_server):
    cfg = node_config(0, capabilities=("python.run",))
    async with mesh(nats_server.url, [cfg]) as (node,):
        async with client_for(nats_server.url, "python.run", 1, max_bid_window_ms=5_000) as c:
            t0 = time.monotonic()
            with pytest.raises((BidsDeclined, NoSuitableExecutor)) as info:
                await c.run(Job.python("print(1)", env_profile="no-such-profile"))
            assert time.monotonic() - t0 < 2.0
        (reason,) = _reasons_by_executor(info.value, [node]).values()
        assert "no-such-profile" in reason, reason
        if isinstance(info.value, BidsDeclined):  # the node's own signed word
            assert reason.startswith("unsupported_profile: python.run: unsupported_env_profile")
            assert _declined(node, "unsupported_env_profile") == 1
