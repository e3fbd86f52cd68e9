"""The spend ledger of budget tokens: what has been reserved and charged against each token.

A verified token chain (:class:`~crankmesh.protocol.tokens.TokenGrant`) says how much its holder
*may* spend; it is not a coin, and siblings delegated from one token may together name more than
it holds.  A :class:`BudgetLedger` keeps one node's spending within every token of the chains it
spends from: each job reserves its maximum price against **every link** of its chain (the leaf,
its ancestors, the root), so jobs spending through different children of one token share that
token's amount::

    ledger = BudgetLedger()
    ledger.reserve(grant, job_cid, max_charge_micros=bid_price)   # BudgetExceeded if it can't
    ...
    ledger.settle(job_cid, receipt_charge)     # charge; the rest of the reservation is released
    # or ledger.release(job_cid)               # the job failed or was cancelled

Invariant, for every token: ``charged + reserved <= amount``.

One ledger per spender (an originator's client, or an executor tracking what it serves against
each originator's tokens): two nodes do not see each other's spending.  Amounts are micro-units
of the grant's currency; the caller compares currencies (a bid in EUR against a USD token) and
verifies the chain (signatures, expiry) before reserving.

Pure: no I/O, no clocks.  Error handling: :class:`~crankmesh.protocol.errors.BudgetExceeded`
when a reservation or charge does not fit; :class:`ValueError` for misuse (an unknown job, a
second reservation for a job, a negative amount).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..protocol.errors import BudgetExceeded

if TYPE_CHECKING:
    from ..protocol.tokens import TokenGrant

__all__ = ["BudgetLedger", "JobCharge", "JobChargeState"]

JobChargeState = Literal["reserved", "settled", "released"]


@dataclass(frozen=True, slots=True)
class JobCharge:
    """One job's use of a token.

    ``max_charge`` is what the job reserved; ``reserved`` is what it still holds (``max_charge``
    while ``reserved``, 0 once settled or released); ``charged`` is what it was charged.
    """

    job_cid: str
    token_cid: str
    root_cid: str
    currency: str
    max_charge: int
    reserved: int
    charged: int
    state: JobChargeState

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_cid": self.job_cid,
            "token_cid": self.token_cid,
            "root_cid": self.root_cid,
            "currency": self.currency,
            "max_charge": self.max_charge,
            "reserved": self.reserved,
            "charged": self.charged,
            "state": self.state,
        }


@dataclass(slots=True)
class _Account:
    """Spending against one token (any link of a chain)."""

    amount: int
    currency: str
    reserved: int = 0
    charged: int = 0

    @property
    def available(self) -> int:
        return self.amount - self.reserved - self.charged


def _check_micros(name: str, value: int) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be a non-negative integer of micro-units, got {value!r}")


class BudgetLedger:
    """Reservations and charges against budget tokens, per token CID (every chain link)."""

    __slots__ = ("_accounts", "_chains", "_jobs")

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}
        self._jobs: dict[str, JobCharge] = {}
        self._chains: dict[str, tuple[str, ...]] = {}

    def __repr__(self) -> str:
        n_open = sum(1 for j in self._jobs.values() if j.state == "reserved")
        return f"BudgetLedger(tokens={len(self._accounts)}, jobs={len(self._jobs)}, open={n_open})"

    # ------------------------------------------------------------------ queries

    def remaining(self, grant: TokenGrant) -> int:
        """What ``grant``'s holder may still reserve: the least left on any link of its chain."""
        left = []
        for cid, amount in zip(grant.chain_cids, grant.link_amounts, strict=True):
            acc = self._accounts.get(cid)
            left.append(amount if acc is None else acc.available)
        return max(0, min(left))

    def spent(self, grant: TokenGrant) -> int:
        """What has been charged through ``grant``'s leaf token (settled jobs only)."""
        acc = self._accounts.get(grant.leaf_cid)
        return 0 if acc is None else acc.charged

    def reserved(self, grant: TokenGrant) -> int:
        """What open jobs hold through ``grant``'s leaf token."""
        acc = self._accounts.get(grant.leaf_cid)
        return 0 if acc is None else acc.reserved

    def job(self, job_cid: str) -> JobCharge | None:
        """The record of one job, or None if it never reserved."""
        return self._jobs.get(job_cid)

    def jobs(self) -> tuple[JobCharge, ...]:
        """Every job record, in the order of their (latest) reservation."""
        return tuple(self._jobs.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready report: every token seen, and every job."""
        return {
            "tokens": {
                cid: {
                    "amount": a.amount,
                    "currency": a.currency,
                    "reserved": a.reserved,
                    "charged": a.charged,
                    "remaining": a.available,
                }
                for cid, a in self._accounts.items()
            },
            "jobs": [j.to_dict() for j in self._jobs.values()],
        }

    # ------------------------------------------------------------------ changes

    def reserve(self, grant: TokenGrant, job_cid: str, max_charge_micros: int) -> None:
        """Hold ``max_charge_micros`` (the most the job can cost) for ``job_cid``.

        Raises :class:`BudgetExceeded` (and changes nothing) when some link of the chain has
        less left; :class:`ValueError` when the job already holds a reservation or was settled.
        """
        _check_micros("max_charge_micros", max_charge_micros)
        old = self._jobs.get(job_cid)
        if old is not None and old.state != "released":
            raise ValueError(
                f"job {job_cid} is already {old.state} against token {old.token_cid}; "
                "settle or release it before reserving again"
            )
        accounts = []
        for cid, amount in zip(grant.chain_cids, grant.link_amounts, strict=True):
            acc = self._accounts.get(cid)
            if acc is None:
                acc = _Account(amount, grant.currency)
            elif acc.amount != amount or acc.currency != grant.currency:
                raise ValueError(
                    f"token {cid} was seen with amount {acc.amount} µ{acc.currency}, now with "
                    f"{amount} µ{grant.currency}: grants must come from verify_chain"
                )
            accounts.append((cid, acc))
        remaining = max(0, min(acc.available for _, acc in accounts))
        if max_charge_micros > remaining:
            raise BudgetExceeded(
                needed_micros=max_charge_micros,
                remaining_micros=remaining,
                currency=grant.currency,
            )
        for cid, acc in accounts:
            acc.reserved += max_charge_micros
            self._accounts.setdefault(cid, acc)
        self._jobs.pop(job_cid, None)  # a re-reservation moves to the end
        self._jobs[job_cid] = JobCharge(
            job_cid=job_cid,
            token_cid=grant.leaf_cid,
            root_cid=grant.root_cid,
            currency=grant.currency,
            max_charge=max_charge_micros,
            reserved=max_charge_micros,
            charged=0,
            state="reserved",
        )
        self._chains[job_cid] = grant.chain_cids

    def settle(self, job_cid: str, actual_charge_micros: int) -> JobCharge:
        """Charge ``actual_charge_micros`` for a reserved job and release the rest.

        Raises :class:`BudgetExceeded` (and changes nothing) when the charge exceeds the
        reservation: the caller decides whether to settle at the reservation and dispute the
        rest; :class:`ValueError` when the job holds no reservation.
        """
        _check_micros("actual_charge_micros", actual_charge_micros)
        rec = self._open(job_cid, "settle")
        if actual_charge_micros > rec.reserved:
            raise BudgetExceeded(
                needed_micros=actual_charge_micros,
                remaining_micros=rec.reserved,
                currency=rec.currency,
            )
        for cid in self._chains[job_cid]:
            acc = self._accounts[cid]
            acc.reserved -= rec.reserved
            acc.charged += actual_charge_micros
        done = JobCharge(
            job_cid=job_cid,
            token_cid=rec.token_cid,
            root_cid=rec.root_cid,
            currency=rec.currency,
            max_charge=rec.max_charge,
            reserved=0,
            charged=actual_charge_micros,
            state="settled",
        )
        self._jobs[job_cid] = done
        return done

    def release_if_reserved(self, job_cid: str) -> bool:
        """Release ``job_cid`` if it holds a reservation; ``False`` when it does not
        (unknown, already released, or settled).  For cleanup paths."""
        rec = self._jobs.get(job_cid)
        if rec is None or rec.state != "reserved":
            return False
        self.release(job_cid)
        return True

    def release(self, job_cid: str) -> None:
        """Give back a reserved job's whole reservation (it failed or was cancelled).

        Releasing a released job does nothing; a settled or unknown job is a
        :class:`ValueError`.
        """
        rec = self._jobs.get(job_cid)
        if rec is not None and rec.state == "released":
            return
        rec = self._open(job_cid, "release")
        for cid in self._chains[job_cid]:
            self._accounts[cid].reserved -= rec.reserved
        self._jobs[job_cid] = JobCharge(
            job_cid=job_cid,
            token_cid=rec.token_cid,
            root_cid=rec.root_cid,
            currency=rec.currency,
            max_charge=rec.max_charge,
            reserved=0,
            charged=0,
            state="released",
        )

    def _open(self, job_cid: str, action: str) -> JobCharge:
        rec = self._jobs.get(job_cid)
        if rec is None:
            raise ValueError(f"cannot {action} job {job_cid}: it holds no reservation")
        if rec.state != "reserved":
            raise ValueError(f"cannot {action} job {job_cid}: it is already {rec.state}")
        return rec
