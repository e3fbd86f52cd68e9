"""The conduct book: misbehaviour counted per executor, exclusion past a threshold."""

from __future__ import annotations

from crankmesh.observability import Metrics
from crankmesh.originator.conduct import MISBEHAVIOUR_KINDS, ConductBook, failure_kind


def _metric(m: Metrics, kind: str) -> float:
    for metric in m.misbehaviour.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("kind") == kind:
                return sample.value
    return 0.0


def test_failure_kinds_name_the_executors_own_faults_only() -> None:
    assert failure_kind("no_receipt: none within 5000 ms + 2000 ms grace") == "no_delivery"
    assert failure_kind("rejected: no_capacity queue full") == "rejected_assignment"
    assert failure_kind("bad_accept: the answer is no valid Accept") == "invalid_delivery"
    assert failure_kind("no_accept: no reply within 2000 ms") is None
    assert failure_kind("unreachable: no responders on its assignment subject") is None
    assert failure_kind("executor_gone: its adverts stopped") is None
    assert set(MISBEHAVIOUR_KINDS) >= {"overcharge", "canary_wrong", "under_promising"}


def test_broken_commitments_exclude_within_four_assignments_and_are_counted() -> None:
    m = Metrics()
    book = ConductBook(m)
    reasons = [book.commitment("grief", "echo", "rejected_assignment") for _ in range(4)]
    assert reasons[:3] == [None] * 3
    assert reasons[3] is not None and "4 rejected_assignment" in reasons[3]
    assert book.counts("grief") == {"rejected_assignment": 4}
    assert book.notes("grief") == ("4 × rejected_assignment",)
    assert _metric(m, "rejected_assignment") == 4
    # one overcharging receipt is signed proof: excluded at once
    assert "overcharge" in (book.commitment("cheat", "echo", "overcharge") or "")
    # an honest executor that rejects now and then (a race for its last slot) is never out
    assert not any(
        book.commitment("honest", "echo", "rejected_assignment" if i % 10 == 0 else None)
        for i in range(500)
    )


def test_missed_promises_count_and_a_large_shortfall_excludes() -> None:
    m = Metrics()
    book = ConductBook(m)
    out = [book.promise("liar", "python.run", 10_000, 1_000) for _ in range(10)]  # 10 × over
    assert out[:9] == [None] * 9 and out[-1] is not None and "3 ×" in out[-1]
    assert book.counts("liar") == {"slo_missed": 10, "under_promising": 1}
    assert _metric(m, "under_promising") == 1
    # a busy honest executor, 2 × over its promise every time: priced, never excluded
    assert not any(book.promise("busy", "echo", 2_000, 1_000) for _ in range(100))
    assert book.counts("busy") == {"slo_missed": 100}
    assert not any(
        book.promise("honest", "echo", 900 if i % 20 else 1_100, 1_000) for i in range(400)
    )
