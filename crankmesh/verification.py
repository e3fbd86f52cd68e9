"""Capability verification (seed 003, "Capability Verification"): canary jobs.

A node periodically sends each peer, for each capability it advertises that has a
canary, a small job whose answer is known, pinned to that peer
(``Client.run(job, executor=did)``).  A wrong answer, a failed accelerator check
(the peer advertises a GPU the canary cannot see), or a service time far above the
p95 the peer advertised excludes that peer from that capability's work in this
originator's selection; a later passing canary readmits it.  The service time is the one
the client judges every job by (RFC 0002 §6.1): observed less the client's measured
overhead estimate for that peer, never below the peer's own meter — no fixed network
allowance, so honest quick executors are not excluded for the network's latency.

Resource handling: :meth:`CanaryProber.run` lives in the node's task group and is
cancelled with it.  Error handling: a canary that cannot run (no bid, transport
trouble) is logged and retried next round; it never excludes anyone by itself.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from .directory import Peer, PeerDirectory
from .originator.client import Client
from .originator.job import Job, JobResult
from .protocol.errors import CrankmeshError

__all__ = ["Canary", "CanaryOutcome", "CanaryProber", "default_canaries"]

log = logging.getLogger("crankmesh.verification")

_COMMITMENT_KINDS = frozenset(
    {"no_delivery", "invalid_delivery", "rejected_assignment", "overcharge"}
)


@dataclass(frozen=True, slots=True)
class Canary:
    """A job with a known answer: ``make()`` returns the job and a checker of the
    result that returns ``None`` when right, else what is wrong."""

    capability: str
    make: Callable[[Peer], tuple[Job, Callable[[JobResult], str | None]]]


@dataclass(frozen=True, slots=True)
class CanaryOutcome:
    executor: str
    capability: str
    passed: bool
    problem: str | None
    latency_ms: float | None
    at_ms: int


def _echo(_peer: Peer) -> tuple[Job, Callable[[JobResult], str | None]]:
    blob = os.urandom(24)

    def check(r: JobResult) -> str | None:
        return None if r.ok and r.output == blob else f"echo returned {r.output!r:.60}"

    return Job.echo(blob, timeout_sec=5), check


def _python(peer: Peer) -> tuple[Job, Callable[[JobResult], str | None]]:
    a, b = random.randint(10**6, 10**9), random.randint(10**6, 10**9)
    job = Job.python("print(args['a'] * args['b'])", {"a": a, "b": b}, timeout_sec=10)

    def check(r: JobResult) -> str | None:
        if not r.ok:
            return f"status {r.status}: {r.receipt.detail or r.stderr[-200:]}"
        return None if r.stdout.strip() == str(a * b) else f"wrong product {r.stdout!r:.60}"

    return job, check


def _python_gpu(peer: Peer) -> tuple[Job, Callable[[JobResult], str | None]]:
    """For peers advertising a GPU: the accelerator must really be there."""
    gpus = peer.advert.hardware.get("gpus") or []
    kind = "mps" if any(g.get("type") == "metal" for g in gpus) else "cuda"
    code = (
        "import torch\n"
        f"ok = torch.cuda.is_available() if {kind!r} == 'cuda' "
        "else torch.backends.mps.is_available()\n"
        "print('gpu' if ok else 'no-gpu')\n"
    )
    job = Job.python(code, env_profile="python-ml", accelerator=kind, timeout_sec=30)

    def check(r: JobResult) -> str | None:
        if r.ok and r.stdout.strip() == "gpu":
            return None
        return f"advertised GPU not usable: {r.status} {r.stdout.strip()[:40]} {r.receipt.detail}"

    return job, check


_SPAM = "WIN a FREE prize!!! Click now to claim your cash reward, limited offer"


def _spam(_peer: Peer) -> tuple[Job, Callable[[JobResult], str | None]]:
    def check(r: JobResult) -> str | None:
        try:
            label = json.loads((r.output or b"{}").decode()).get("label")
        except (ValueError, AttributeError):
            label = None
        return None if r.ok and label == "spam" else f"classified obvious spam as {label!r}"

    return Job.call("email.classify.spam-v1", _SPAM.encode(), timeout_sec=5), check


def default_canaries() -> dict[str, Canary]:
    return {
        "echo": Canary("echo", _echo),
        "python.run": Canary("python.run", _python),
        "email.classify.spam-v1": Canary("email.classify.spam-v1", _spam),
    }


class CanaryProber:
    """Probes peers with canary jobs and excludes those that fail (see module doc).

    ``slow_factor``: a canary whose service time exceeds ``slow_factor ×`` the peer's
    advertised p95 twice in a row counts as a failure; after one such canary the peer is not
    readmitted until a canary is within it again.
    """

    def __init__(
        self,
        client: Client,
        directory: PeerDirectory,
        *,
        interval_s: float = 60.0,
        canaries: Mapping[str, Canary] | None = None,
        exclude_for_s: float = 600.0,
        slow_factor: float = 3.0,
        own_did: str | None = None,
    ) -> None:
        self.client = client
        self.directory = directory
        self.interval_s = interval_s
        self.canaries = dict(canaries if canaries is not None else default_canaries())
        self.exclude_for_s = exclude_for_s
        self.slow_factor = slow_factor
        self.own_did = own_did
        self.outcomes: list[CanaryOutcome] = []
        self._slow_strikes: dict[tuple[str, str], int] = {}

    async def probe_once(self) -> list[CanaryOutcome]:
        """One round: every live peer, every capability it offers that has a canary."""
        round_: list[CanaryOutcome] = []
        for peer in self.directory.peers():
            if peer.did == self.own_did or peer.advert.draining:
                continue
            for cap in peer.advert.capabilities:
                canary = self.canaries.get(cap.name)
                if canary is not None:
                    round_.append(
                        await self._probe(peer, canary, cap.slo.p95_us if cap.slo else None)
                    )
            if peer.advert.hardware.get("gpus") and "python.run" in {
                c.name for c in peer.advert.capabilities
            }:
                gpu = Canary("python.run", _python_gpu)
                round_.append(await self._probe(peer, gpu, None, label="python.run[gpu]"))
        self.outcomes.extend(round_)
        del self.outcomes[:-1000]
        return round_

    async def _probe(
        self, peer: Peer, canary: Canary, p95_us: int | None, label: str | None = None
    ) -> CanaryOutcome:
        job, check = canary.make(peer)
        key = (peer.did, canary.capability)
        started = time.perf_counter()
        before = self.client.conduct.counts(peer.did)
        try:
            result = await self.client.run(job, executor=peer.did)
        except CrankmeshError as exc:
            log.info(
                "canary %s on %s did not run: %s",
                label or canary.capability,
                peer.did,
                str(exc).splitlines()[0],
            )
            return CanaryOutcome(peer.did, canary.capability, True, None, None, _now_ms())
        latency_ms = (time.perf_counter() - started) * 1000
        problem = check(result)
        if problem is not None:
            self.client.conduct.note(peer.did, "canary_wrong")
        else:
            # a right answer delivered with misconduct (e.g. charging more than the bid)
            # does not pass: the client has just excluded the peer for it
            after = self.client.conduct.counts(peer.did)
            broken = sorted(
                k for k, n in after.items() if k in _COMMITMENT_KINDS and n > before.get(k, 0)
            )
            if broken:
                problem = "canary job: " + ", ".join(broken)
        service_us = self.client.service_time(peer.did, canary.capability)
        if problem is None and p95_us is not None and service_us is not None:
            if service_us > p95_us * self.slow_factor:
                strikes = self._slow_strikes.get(key, 0) + 1
                self._slow_strikes[key] = strikes
                if strikes >= 2:
                    self.client.conduct.note(peer.did, "canary_slow")
                    problem = (
                        f"canary service time {service_us / 1000:.3f} ms (observed "
                        f"{latency_ms:.1f} ms end to end, less the measured overhead) is far "
                        f"above the advertised p95 of {p95_us / 1000:.3f} ms"
                    )
            else:
                self._slow_strikes.pop(key, None)
        if problem is None:
            if key not in self._slow_strikes:  # a clean pass, not a first slow strike
                if self.client.excluded(peer.did, canary.capability) is not None:
                    self.client.readmit(peer.did, canary.capability)
        else:
            self.client.exclude(
                peer.did,
                canary.capability,
                f"failed canary ({label or canary.capability}): {problem}",
                int(self.exclude_for_s * 1000),
            )
        return CanaryOutcome(
            peer.did, canary.capability, problem is None, problem, latency_ms, _now_ms()
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self.interval_s * random.uniform(0.8, 1.2))
            try:
                await self.probe_once()
            except Exception:  # one bad round never stops probing
                log.exception("canary round failed")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
