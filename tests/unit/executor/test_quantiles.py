from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crankmesh.executor.quantiles import StreamingQuantiles
from crankmesh.executor.stats import LatencyWindow


def exact(values: list[int], q: float) -> int:
    """Nearest-rank quantile, the definition StreamingQuantiles approximates."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s) - 1e-9) - 1)]


def within(estimate: int | None, truth: int, alpha: float = 0.01) -> bool:
    # alpha relative, plus one for rounding the representative value to an integer
    return estimate is not None and abs(estimate - truth) <= alpha * truth + 1


latencies = st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=400)


@settings(max_examples=150, deadline=None)
@given(latencies, st.sampled_from([0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]))
def test_quantiles_within_one_percent_of_exact(values: list[int], q: float) -> None:
    sq = StreamingQuantiles()
    sq.extend(values)
    assert sq.count == len(values)
    assert within(sq.quantile(q), exact(values, q))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10**7), min_size=1, max_size=200))
def test_min_max_and_extremes_are_exact(values: list[int]) -> None:
    sq = StreamingQuantiles()
    sq.extend(values)
    assert (sq.min, sq.max) == (min(values), max(values))
    assert sq.quantile(0) == min(values)
    assert sq.quantile(1) == max(values)


@pytest.mark.parametrize(
    "dist",
    [
        lambda r: int(r.lognormvariate(8, 1.0)),  # typical latencies: ~3 ms, long tail
        lambda r: int(r.expovariate(1 / 500)),
        lambda r: r.choice([100, 100, 100, 5000]),  # bimodal (cache hit / miss)
        lambda r: int(r.paretovariate(1.2) * 1000),  # heavy tail
    ],
)
def test_typical_latency_distributions(dist: object) -> None:
    rng = random.Random(7)
    values = [dist(rng) for _ in range(20_000)]  # type: ignore[operator]
    sq = StreamingQuantiles()
    sq.extend(values)
    for q in (0.5, 0.95, 0.99):
        assert within(sq.quantile(q), exact(values, q)), q


def test_memory_is_bounded_by_range_not_count() -> None:
    sq = StreamingQuantiles()
    rng = random.Random(1)
    sq.extend(rng.randint(1, 3_600_000_000) for _ in range(50_000))  # 1 µs .. 1 h
    assert len(sq.to_wire()["cur"]["buckets"]) // 2 < 1200


def test_collapsing_keeps_high_quantiles() -> None:
    sq = StreamingQuantiles(max_buckets=64)
    values = list(range(1, 100_000, 7))
    sq.extend(values)
    assert len(sq.to_wire()["cur"]["buckets"]) // 2 <= 64
    for q in (0.95, 0.99):
        assert within(sq.quantile(q), exact(values, q))


def test_empty_and_argument_errors() -> None:
    sq = StreamingQuantiles()
    assert sq.quantile(0.5) is None and sq.count == 0 and len(sq) == 0
    assert sq.min is None and sq.mean is None
    with pytest.raises(ValueError):
        sq.quantile(1.5)
    with pytest.raises(ValueError):
        sq.add(-1)
    for kwargs in ({"alpha": 0.0}, {"window": 0}, {"window_s": -1.0}, {"max_buckets": 2}):
        with pytest.raises(ValueError):
            StreamingQuantiles(**kwargs)


def test_zeros_have_their_own_bucket() -> None:
    sq = StreamingQuantiles()
    sq.extend([0] * 60 + [1000] * 40)
    assert sq.quantile(0.5) == 0
    assert within(sq.quantile(0.95), 1000)


def test_sample_window_forgets_old_behaviour() -> None:
    sq = StreamingQuantiles(window=100)
    sq.extend([1000] * 500)
    sq.extend([5000] * 250)  # the executor got slower
    assert sq.count <= 200
    assert within(sq.quantile(0.5), 5000)
    assert sq.total_added == 750


def test_time_window_rotates_and_expires() -> None:
    now = [0.0]
    sq = StreamingQuantiles(window_s=10.0, clock=lambda: now[0])
    sq.extend([100] * 10)
    now[0] = 11.0
    sq.extend([900] * 10)
    assert sq.count == 20  # previous window still visible
    now[0] = 22.0
    assert sq.count == 10 and within(sq.quantile(0.5), 900)  # first window dropped
    now[0] = 60.0
    assert sq.count == 0 and sq.quantile(0.5) is None  # idle for > 2 windows: all stale


def test_merge_equals_adding_everything() -> None:
    rng = random.Random(3)
    a_vals = [rng.randint(1, 10**6) for _ in range(1000)]
    b_vals = [rng.randint(1, 10**6) for _ in range(1000)]
    a, b, both = StreamingQuantiles(), StreamingQuantiles(), StreamingQuantiles()
    a.extend(a_vals)
    b.extend(b_vals)
    both.extend(a_vals + b_vals)
    a.merge(b)
    assert a.to_wire()["cur"] == both.to_wire()["cur"]
    with pytest.raises(ValueError):
        a.merge(StreamingQuantiles(alpha=0.02))


@settings(max_examples=40, deadline=None)
@given(latencies, st.sampled_from([None, 50]))
def test_wire_roundtrip_is_ints_only(values: list[int], window: int | None) -> None:
    sq = StreamingQuantiles(window=window)
    sq.extend(values)
    wire = sq.to_wire()

    def ints_only(x: object) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, str) and ints_only(v) for k, v in x.items())
        if isinstance(x, list):
            return all(ints_only(v) for v in x)
        return type(x) is int

    assert ints_only(wire)
    back = StreamingQuantiles.from_wire(wire)
    assert back.to_wire() == wire
    for q in (0.5, 0.95, 0.99):
        assert back.quantile(q) == sq.quantile(q)


def test_from_wire_rejects_garbage() -> None:
    good = StreamingQuantiles()
    good.extend([1, 2, 3])
    wire = good.to_wire()
    for bad in (
        {**wire, "v": 2},
        {**wire, "alpha_ppm": 1.5},
        {**wire, "cur": {**wire["cur"], "count": 99}},
        {**wire, "cur": {**wire["cur"], "buckets": [1]}},
        {**wire, "cur": "nope"},
    ):
        with pytest.raises(ValueError):
            StreamingQuantiles.from_wire(bad)


def test_drop_in_for_latency_window() -> None:
    values = [random.Random(5).randint(100, 10_000) for _ in range(300)]
    lw, sq = LatencyWindow(), StreamingQuantiles()
    for v in values:
        lw.add(v)
        sq.add(v)
    assert len(lw) == len(sq) and lw.count == sq.count
    for q in (0.5, 0.95, 0.99):
        exact_q = lw.quantile(q)
        assert exact_q is not None and within(sq.quantile(q), exact_q)
