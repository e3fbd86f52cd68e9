from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crankmesh.market import UNKNOWN_REPUTATION, LocalReputation, reputation_score


def test_unknown_executor_gets_the_prior() -> None:
    assert reputation_score() == pytest.approx(2 / 3)
    assert LocalReputation().score == UNKNOWN_REPUTATION == pytest.approx(2 / 3)


def test_good_history_raises_bad_history_lowers() -> None:
    assert reputation_score(successes=10, slo_met=10) == pytest.approx(22 / 23)
    assert reputation_score(failures=10) == pytest.approx(2 / 13)
    # a slow success is neutral-ish, better than a failure, worse than an on-time success
    slow = reputation_score(successes=1, slo_missed=1)
    assert reputation_score(failures=1) < slow < reputation_score(successes=1, slo_met=1)


def test_equivocation_bans() -> None:
    rep = LocalReputation(successes=1000, slo_met=1000).record_equivocation()
    assert rep.banned
    assert rep.score == 0.0
    assert not LocalReputation().banned


def test_record() -> None:
    rep = LocalReputation()
    rep = rep.record(success=True, slo_met=True)
    rep = rep.record(success=True, slo_met=False)
    rep = rep.record(success=False)
    rep = rep.record(success=True)
    assert rep == LocalReputation(successes=3, failures=1, slo_met=1, slo_missed=1)
    assert rep.score == pytest.approx((2 + 4) / (3 + 4 + 2))


def test_negative_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        reputation_score(failures=-1)
    with pytest.raises(ValueError, match="negative"):
        LocalReputation(successes=-1)


@given(
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_score_is_a_probability_and_monotone(s: int, f: int, met: int, missed: int) -> None:
    score = reputation_score(successes=s, failures=f, slo_met=met, slo_missed=missed)
    assert 0.0 < score < 1.0
    assert reputation_score(successes=s + 1, failures=f, slo_met=met, slo_missed=missed) > score
    assert reputation_score(successes=s, failures=f + 1, slo_met=met, slo_missed=missed) < score
