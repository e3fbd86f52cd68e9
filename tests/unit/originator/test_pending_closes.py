"""Close notices waiting for the next Announce of their capability (RFC 0001 §8.3)."""

from __future__ import annotations

import pytest

from crankmesh.originator.closes import PendingCloses


def test_an_announce_takes_its_own_capabilitys_notices_oldest_first() -> None:
    p = PendingCloses(linger_s=0.05, limit=64)
    p.add("echo", "a", "w", "b1", now=1.0)
    p.add("python.run", "x", None, None, now=1.0)
    p.add("echo", "b", "w", "b2", now=1.01)
    assert p.take("echo") == ["a", "b"]
    assert p.take("echo") is None
    assert len(p) == 1 and p.take("python.run") == ["x"] and len(p) == 0


def test_one_announce_carries_at_most_the_limit() -> None:
    p = PendingCloses(linger_s=1.0, limit=3)
    for i in range(7):
        p.add("echo", f"j{i}", None, None, now=float(i))
    assert p.take("echo") == ["j0", "j1", "j2"]
    assert p.take("echo") == ["j3", "j4", "j5"]
    assert p.take("echo") == ["j6"]


def test_notices_left_waiting_past_the_linger_are_due_in_order() -> None:
    p = PendingCloses(linger_s=0.05, limit=64)
    p.add("echo", "a", "w", "bid-a", now=1.00)
    p.add("echo", "b", None, None, now=1.02)
    p.add("other", "c", None, None, now=1.01)
    assert p.next_due() == pytest.approx(1.05)
    assert p.due(1.049) == []
    due = p.due(1.065)
    assert [(n.job_cid, n.winner, n.bid_cid) for n in due] == [
        ("a", "w", "bid-a"),
        ("c", None, None),
    ]
    assert p.next_due() == pytest.approx(1.07)
    assert [n.job_cid for n in p.due(2.0)] == ["b"]
    assert p.next_due() is None and len(p) == 0


def test_a_job_closed_twice_keeps_one_notice() -> None:
    p = PendingCloses(linger_s=0.05, limit=64)
    p.add("echo", "a", None, None, now=1.0)
    p.add("echo", "a", "w", "b", now=2.0)
    assert len(p) == 1
    assert p.due(1.9) == []  # the newer notice counts
    assert [n.winner for n in p.due(2.1)] == ["w"]


def test_notices_an_announce_failed_to_carry_are_due_at_once_and_first() -> None:
    p = PendingCloses(linger_s=10.0, limit=64)
    p.add("echo", "new", None, None, now=5.0)
    p.put_back("echo", ["a", "b"], now=6.0)
    assert p.next_due() == 6.0
    assert [n.job_cid for n in p.due(6.0)] == ["a", "b"]
    assert p.take("echo") == ["new"]


def test_drain_hands_out_everything() -> None:
    p = PendingCloses(linger_s=10.0, limit=64)
    p.add("echo", "a", None, None, now=1.0)
    p.add("other", "b", None, None, now=1.0)
    assert sorted(n.job_cid for n in p.drain()) == ["a", "b"]
    assert len(p) == 0 and p.next_due() is None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PendingCloses(linger_s=-1, limit=4)
    with pytest.raises(ValueError):
        PendingCloses(linger_s=0.1, limit=0)
