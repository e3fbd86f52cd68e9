"""A cheap liar cannot stall jobs (issue 14 item 6, RFC 0001 §10.6): the cheapest
executor returns deliveries that fail verification; each attempt on it ends at once,
the job runs on the honest executor within 2 x the accept timeout, the originator
counts it and its local reputation of the liar records every failure."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from crankmesh.executor.agent import Executor
from crankmesh.originator import Job
from crankmesh.protocol.encoding import canonical_decode, encode_canonicalized
from crankmesh.protocol.envelope import open_envelope
from crankmesh.protocol.identity import seal
from crankmesh.protocol.messages import ReceiptDelivery

from .helpers import client_for, mesh, node_config

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ACCEPT_TIMEOUT_MS = 1_000
JOBS = 8


class _Corrupting:
    """The executor's real NATS connection, except that every ReceiptDelivery it
    publishes (as a reply or on the receipt subject) is corrupted on the way out."""

    def __init__(self, nc: Any, corrupt: Any) -> None:
        self._nc = nc
        self._corrupt = corrupt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nc, name)

    async def publish(self, subject: str, data: bytes, **kwargs: Any) -> None:
        if data[:1] in (b"\x81", b"\x82"):  # a ReceiptDelivery, not an envelope (§8.6)
            data = self._corrupt(data)
        await self._nc.publish(subject, data, **kwargs)


def _bad_signature(executor: Executor, data: bytes) -> bytes:
    delivery = canonical_decode(data)
    env = open_envelope(delivery["receipt"])
    flipped = bytes([env.signature[0] ^ 1]) + env.signature[1:]
    receipt = encode_canonicalized({"b": env.body_bytes, "s": flipped, "t": env.type, "v": 1})
    return ReceiptDelivery(receipt=receipt, result=delivery.get("result")).encode()


def _wrong_result(executor: Executor, data: bytes) -> bytes:
    delivery = canonical_decode(data)
    env = open_envelope(delivery["receipt"])
    other = seal(b"not what the receipt names", env.body["originator"], sender=executor.identity)
    return ReceiptDelivery(receipt=delivery["receipt"], result=other).encode()


class LyingExecutor(Executor):
    """A real executor whose receipts or results do not verify (``lie`` picks how)."""

    lie: Any = staticmethod(_bad_signature)

    async def _publish_receipt(self, *args: Any, **kwargs: Any) -> None:
        honest_nc = self._nc
        self._nc = _Corrupting(honest_nc, lambda d: type(self).lie(self, d))
        try:
            await super()._publish_receipt(*args, **kwargs)
        finally:
            self._nc = honest_nc


def _make_liar(node: Any, lie: Any) -> None:
    cls = type(f"Lying_{lie.__name__}", (LyingExecutor,), {"lie": staticmethod(lie)})
    node.executor.__class__ = cls


def _count(metric: Any, **labels: str) -> float:
    return sum(
        s.value
        for m in metric.collect()
        for s in m.samples
        if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def _slow(payload: bytes) -> bytes:
    await anyio.sleep(0.01)
    return payload


@pytest.mark.parametrize("lie", [_bad_signature, _wrong_result], ids=lambda f: f.__name__)
@pytest.mark.parametrize("capability", ["echo", "slow"])
async def test_cheapest_liar_costs_each_job_one_fast_attempt(nats_server, lie, capability):
    """``echo`` answers the Assignment with its delivery (§8.6); ``slow`` accepts first
    and publishes the delivery on the receipt subject: both paths end the attempt at once."""
    caps = (capability,)
    liar_cfg, honest_cfg = node_config(0, capabilities=caps), node_config(1, capabilities=caps)
    async with mesh(nats_server.url, [liar_cfg, honest_cfg], slow=_slow) as (liar, honest):
        _make_liar(liar, lie)
        async with client_for(
            nats_server.url,
            capability,
            2,
            accept_timeout_ms=ACCEPT_TIMEOUT_MS,
            min_reputation=0.0,  # keep offering the liar every job: each must still be fast
        ) as client:
            for i in range(JOBS):
                t0 = time.monotonic()
                r = await client.run(Job.call(capability, f"job {i}".encode()))
                took_ms = (time.monotonic() - t0) * 1000
                assert r.ok and r.output == f"job {i}".encode()
                assert r.executor == honest.did
                assert took_ms < 2 * ACCEPT_TIMEOUT_MS, f"job {i} took {took_ms:.0f} ms"
                (first,) = r.attempts
                assert first.executor == liar.did, r.attempts
                assert first.outcome.startswith("bad_delivery"), first.outcome
            assert _count(client.metrics.reassignments, cause="bad_delivery") == JOBS
            assert client.metrics.rejection_count("delivery", "invalid") == JOBS
            rep = client.reputation(liar.did)
            assert rep is not None and rep.failures == JOBS and rep.successes == 0
            assert client.reputation(honest.did).successes == JOBS  # type: ignore[union-attr]
        # The liar never got its Assignment a second time (no re-send, no waiting out).
        assert _count(liar.metrics.assignments, outcome="duplicate") == 0
        assert _count(liar.metrics.execution_start) == JOBS
