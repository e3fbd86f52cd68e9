"""BudgetLedger: reservations and charges never exceed any token of a chain."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crankmesh.market import BudgetLedger, JobCharge
from crankmesh.protocol.errors import BudgetExceeded
from crankmesh.protocol.tokens import TokenGrant

CURRENCY = "USD"


def _grant(*links: tuple[str, int], currency: str = CURRENCY) -> TokenGrant:
    """A grant for the chain of (cid, amount) links, root first (as verify_chain returns)."""
    cids = tuple(c for c, _ in links)
    amounts = tuple(a for _, a in links)
    return TokenGrant(
        root_cid=cids[0],
        leaf_cid=cids[-1],
        issuer="did:key:issuer",
        holder="did:key:holder",
        scope="*",
        amount=amounts[-1],
        currency=currency,
        nbf=0,
        exp=1,
        chain_cids=cids,
        link_amounts=amounts,
    )


ROOT = ("root", 1_000)
A = _grant(ROOT, ("a", 700))
B = _grant(ROOT, ("b", 600))
A1 = _grant(ROOT, ("a", 700), ("a1", 500))
R = _grant(ROOT)
GRANTS = (R, A, B, A1)


def test_reserve_settle_release() -> None:
    ledger = BudgetLedger()
    assert ledger.remaining(A) == 700 and ledger.spent(A) == 0
    ledger.reserve(A, "job1", 300)
    assert (ledger.remaining(A), ledger.reserved(A), ledger.remaining(R)) == (400, 300, 700)
    done = ledger.settle("job1", 120)
    assert done == JobCharge("job1", "a", "root", CURRENCY, 300, 0, 120, "settled")
    assert (ledger.remaining(A), ledger.spent(A), ledger.reserved(A)) == (580, 120, 0)
    ledger.reserve(A, "job2", 580)
    with pytest.raises(BudgetExceeded) as info:
        ledger.reserve(A, "job3", 1)
    assert (info.value.needed_micros, info.value.remaining_micros, info.value.currency) == (
        1,
        0,
        "USD",
    )
    ledger.release("job2")
    ledger.release("job2")  # idempotent
    assert ledger.remaining(A) == 580
    assert ledger.job("job2") == JobCharge("job2", "a", "root", CURRENCY, 580, 0, 0, "released")
    ledger.reserve(A, "job2", 10)  # a released job may reserve again
    assert [j.job_cid for j in ledger.jobs()] == ["job1", "job2"]
    assert ledger.job("nope") is None


def test_siblings_share_the_root_amount() -> None:
    ledger = BudgetLedger()
    ledger.reserve(A, "ja", 700)
    assert ledger.remaining(B) == 300  # the root has 300 left, although b names 600
    with pytest.raises(BudgetExceeded, match="needs up to 301 µUSD but only 300 µUSD remain"):
        ledger.reserve(B, "jb", 301)
    ledger.reserve(B, "jb", 300)
    assert ledger.remaining(R) == 0 and ledger.remaining(A1) == 0
    ledger.settle("ja", 100)
    assert (ledger.remaining(R), ledger.remaining(A), ledger.remaining(A1)) == (600, 600, 500)


def test_grandchild_is_bounded_by_every_ancestor() -> None:
    ledger = BudgetLedger()
    ledger.reserve(A, "j1", 400)
    assert ledger.remaining(A1) == 300  # a1 names 500, a has 300 left
    with pytest.raises(BudgetExceeded):
        ledger.reserve(A1, "j2", 301)
    assert ledger.job("j2") is None  # a refused reservation leaves no trace
    ledger.reserve(A1, "j2", 300)
    assert ledger.spent(A1) == 0 and ledger.reserved(A1) == 300


def test_charge_above_reservation_is_refused() -> None:
    ledger = BudgetLedger()
    ledger.reserve(A, "j", 100)
    with pytest.raises(BudgetExceeded) as info:
        ledger.settle("j", 101)
    assert (info.value.needed_micros, info.value.remaining_micros) == (101, 100)
    assert ledger.job("j") is not None and ledger.job("j").state == "reserved"  # type: ignore[union-attr]
    ledger.settle("j", 100)


def test_misuse_is_a_value_error() -> None:
    ledger = BudgetLedger()
    with pytest.raises(ValueError, match="holds no reservation"):
        ledger.settle("j", 1)
    with pytest.raises(ValueError, match="holds no reservation"):
        ledger.release("j")
    with pytest.raises(ValueError, match="non-negative"):
        ledger.reserve(A, "j", -1)
    ledger.reserve(A, "j", 5)
    with pytest.raises(ValueError, match="already reserved"):
        ledger.reserve(A, "j", 5)
    with pytest.raises(ValueError, match="non-negative"):
        ledger.settle("j", -1)
    ledger.settle("j", 5)
    with pytest.raises(ValueError, match="already settled"):
        ledger.settle("j", 5)
    with pytest.raises(ValueError, match="already settled"):
        ledger.release("j")
    with pytest.raises(ValueError, match="already settled"):
        ledger.reserve(A, "j", 1)
    with pytest.raises(ValueError, match="must come from verify_chain"):
        ledger.reserve(_grant(("root", 2_000)), "k", 1)


def test_to_dict_reports_tokens_and_jobs() -> None:
    ledger = BudgetLedger()
    ledger.reserve(A, "j1", 300)
    ledger.settle("j1", 200)
    ledger.reserve(B, "j2", 50)
    report = ledger.to_dict()
    assert report["tokens"] == {
        "root": {
            "amount": 1000,
            "currency": "USD",
            "reserved": 50,
            "charged": 200,
            "remaining": 750,
        },
        "a": {"amount": 700, "currency": "USD", "reserved": 0, "charged": 200, "remaining": 500},
        "b": {"amount": 600, "currency": "USD", "reserved": 50, "charged": 0, "remaining": 550},
    }
    assert report["jobs"][1] == {
        "job_cid": "j2",
        "token_cid": "b",
        "root_cid": "root",
        "currency": "USD",
        "max_charge": 50,
        "reserved": 50,
        "charged": 0,
        "state": "reserved",
    }
    assert "BudgetLedger(tokens=3, jobs=2, open=1)" == repr(ledger)


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("reserve"),
            st.integers(0, 3),
            st.integers(0, 5),
            st.integers(0, 800),
        ),
        st.tuples(st.just("settle"), st.integers(0, 5), st.integers(0, 800)),
        st.tuples(st.just("release"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_never_overspent_under_any_interleaving(ops: list[tuple[Any, ...]]) -> None:
    """For every token, charged + reserved <= amount after every operation, failed or not, and
    the per-token totals equal the sums over the job records."""
    ledger = BudgetLedger()
    amounts = {"root": 1_000, "a": 700, "b": 600, "a1": 500}
    for op in ops:
        before = ledger.to_dict()
        try:
            if op[0] == "reserve":
                ledger.reserve(GRANTS[op[1]], f"j{op[2]}", op[3])
            elif op[0] == "settle":
                ledger.settle(f"j{op[1]}", op[2])
            else:
                ledger.release(f"j{op[1]}")
        except (BudgetExceeded, ValueError):
            assert ledger.to_dict() == before  # a refused operation changes nothing
        report = ledger.to_dict()
        for cid, acc in report["tokens"].items():
            assert acc["amount"] == amounts[cid]
            assert 0 <= acc["reserved"] and 0 <= acc["charged"]
            assert acc["charged"] + acc["reserved"] <= acc["amount"]
            under = [j for j in ledger.jobs() if _under(j, cid)]
            assert acc["reserved"] == sum(j.reserved for j in under)
            assert acc["charged"] == sum(j.charged for j in under)
        for grant in GRANTS:
            assert 0 <= ledger.remaining(grant) <= grant.amount


def _under(job: JobCharge, cid: str) -> bool:
    chain = next(g.chain_cids for g in GRANTS if g.leaf_cid == job.token_cid)
    return cid in chain
