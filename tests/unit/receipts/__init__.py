"""Builders of real signed receipt histories for the receipts tests.

Everything is signed with the real protocol code; nothing is mocked. ``History`` keeps
one hash chain per executor and the stream records an auditor would read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from crankmesh.protocol.cid import cid_for_document
from crankmesh.protocol.encoding import canonical_encode
from crankmesh.protocol.envelope import Envelope, sign_envelope
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import Bid, BidSlo, Metering, Receipt, Settlement
from crankmesh.receipts.audit import Record

FED = "t"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def ident(name: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(name.encode()).digest())


def doc_cid(*parts: object) -> str:
    return cid_for_document(canonical_encode({"p": [str(p) for p in parts]}))


AREA = {"receipt": "receipts", "bid": "bids", "settlement": "settlements", "token": "tokens"}


def record_of(env: Envelope, seq: int | None = None, *, msg_id: str | None = None) -> Record:
    subject = f"crank.{FED}.{AREA[env.type]}.{env.signer[len('did:key:') :]}"
    return Record(subject, env.raw, seq, env.cid if msg_id is None else msg_id)


@dataclass
class Job:
    bid: Envelope
    receipt: Envelope
    settlement: Envelope | None

    @property
    def envelopes(self) -> list[Envelope]:
        return [e for e in (self.bid, self.receipt, self.settlement) if e is not None]


class History:
    """A growing stream: ``job()`` signs a bid, a receipt (next in the executor's chain)
    and a settlement, and appends them as records."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.heads: dict[str, tuple[int, str | None]] = {}
        self.n = 0

    @property
    def records(self) -> list[Record]:
        return [record_of(e, i + 1) for i, e in enumerate(self.envelopes)]

    def add(self, *envs: Envelope) -> None:
        self.envelopes.extend(envs)

    def replace(self, old: Envelope, new: Envelope) -> None:
        self.envelopes[self.envelopes.index(old)] = new

    def remove(self, *envs: Envelope) -> None:
        for env in envs:
            self.envelopes.remove(env)

    def token(
        self,
        issuer: Identity,
        aud: Identity,
        amount: int,
        *,
        parent: Envelope | None = None,
        currency: str = "USD",
    ) -> Envelope:
        self.n += 1
        body: dict[str, Any] = {
            "ts": T0,
            "aud": aud.did,
            "scope": "jobs",
            "amount": amount,
            "currency": currency,
            "nbf": T0,
            "exp": T0 + 86_400_000,
            "nonce": hashlib.sha256(f"token{self.n}".encode()).digest()[:16],
        }
        if parent is not None:
            body["parent"] = parent.cid
        env = sign_envelope(issuer, "token", body)
        self.add(env)
        return env

    def job(
        self,
        originator: Identity,
        executor: Identity,
        *,
        price: int = 1000,
        charge: int | None = None,
        p95_us: int | None = 2000,
        wall_us: int = 1000,
        observed_us: int | None = None,
        overhead_us: int | None = None,
        status: str = "ok",
        budget: Envelope | None = None,
        settle: bool = True,
        signer: Identity | None = None,
        settled_by: Identity | None = None,
        seq: int | None = None,
        prev: str | None | bool = True,
        bid_by: Identity | None = None,
        bid_job: str | None = None,
        add: bool = True,
        advance: bool = True,
        job_cid: str | None = None,
    ) -> Job:
        """One executed job; keyword arguments forge the pieces for tamper tests."""
        self.n += 1
        job_cid = job_cid or doc_cid("job", self.n)
        ts = T0 + self.n * 1000
        bidder = bid_by or executor
        bid = Bid(
            signer=bidder.did,
            ts=ts,
            exp=ts + 10_000,
            job=bid_job or job_cid,
            nonce=hashlib.sha256(f"nonce{self.n}".encode()).digest()[:16],
            price=price,
            slo=BidSlo(p95_us=p95_us, samples=100 if p95_us else 0),
        ).sign(bidder)
        who = signer or executor
        head_seq, head_cid = self.heads.get(who.did, (0, None))
        rseq = head_seq + 1 if seq is None else seq
        rprev = head_cid if prev is True else prev
        receipt = Receipt(
            signer=who.did,
            ts=ts + 5,
            job=job_cid,
            assignment=doc_cid("assignment", self.n),
            bid=bid.cid,
            originator=originator.did,
            attempt=1,
            status=status,  # type: ignore[arg-type]
            metering=Metering(wall_us=wall_us, cpu_us=wall_us // 2),
            charge=price if charge is None else charge,
            seq=rseq,
            prev=rprev if isinstance(rprev, str) else None,
            budget=None if budget is None else budget.cid,
        ).sign(who)
        if advance:
            self.heads[who.did] = (rseq, receipt.cid)
        settlement = None
        if settle:
            by = settled_by or originator
            settlement = Settlement(
                signer=by.did,
                ts=ts + 10,
                receipt=receipt.cid,
                job=job_cid,
                executor=executor.did,
                verified=True,
                observed_us=wall_us + 200 if observed_us is None else observed_us,
                promised_p95_us=p95_us,
                charge=price if charge is None else charge,
                overhead_us=overhead_us,
            ).sign(by)
        job = Job(bid, receipt, settlement)
        if add:
            self.add(*job.envelopes)
        return job


def clean_history(jobs_per_executor: int = 5) -> tuple[History, dict[str, Identity]]:
    """Three executors, two originators sharing a budget (under its cap)."""
    people = {name: ident(name) for name in ("ex-a", "ex-b", "ex-c", "orig-1", "orig-2", "bank")}
    h = History()
    root = h.token(people["bank"], people["orig-1"], 100_000)
    child = h.token(people["orig-1"], people["orig-2"], 50_000, parent=root)
    for i in range(jobs_per_executor):
        for k, name in enumerate(("ex-a", "ex-b", "ex-c")):
            orig = people["orig-1"] if (i + k) % 2 else people["orig-2"]
            budget = root if orig is people["orig-1"] else child
            h.job(orig, people[name], price=1000 * (k + 1), budget=budget)
    return h, people
