"""The per-executor overhead estimate and the service time judged with it (RFC 0002 §6)."""

from __future__ import annotations

import random

import pytest

from crankmesh.market import OverheadEstimator, PromiseKeeping, service_time_us


def test_service_time_is_the_worse_of_meter_and_observed_less_overhead() -> None:
    assert service_time_us(3000, 200, 2900) == 200  # the meter stands
    assert service_time_us(9000, 200, 2900) == 6100  # observed beyond the usual overhead
    assert service_time_us(9000, 200, None) == 200  # no estimate: the meter only
    assert service_time_us(100, -5, 500) == 0


def test_estimate_is_the_nearest_rank_p95_of_the_recent_samples() -> None:
    est = OverheadEstimator(window=20)
    assert est.estimate("a") is None
    for i in range(1, 21):
        est.add("a", observed_us=1000 * i + 50, metered_us=50)
    assert est.estimate("a") == 19_000  # ceil(0.95 × 20) = 19th of 1000..20000
    est.add("a", observed_us=10**6, metered_us=0)  # the oldest (1000) leaves the window
    assert est.estimate("a") == 20_000
    assert est.typical("a") == 11_000 and est.typical("b") is None
    assert est.estimate("b") is None
    est.forget("a")
    assert est.estimate("a") is None


def test_window_and_quantile_are_used() -> None:
    small = OverheadEstimator(window=2, quantile=0.5)
    for v in (100, 200, 300):
        small.add("x", v, 0)
    assert small.estimate("x") == 200  # window [200, 300], median (lower) 200
    top = OverheadEstimator(window=10, quantile=1.0)
    for v in (100, 900, 300):
        top.add("x", v, 0)
    assert top.estimate("x") == 900
    with pytest.raises(ValueError):
        OverheadEstimator(window=0)
    with pytest.raises(ValueError):
        OverheadEstimator(quantile=0.0)


def test_honest_quick_executor_passes_and_a_ten_times_liar_fails() -> None:
    """Overhead (network + protocol) of ~3 ms with jitter, 30-100 µs of service promised at
    p95 110 µs: ≥ 90 % kept; a 10 × under-promiser fails nearly every job."""
    rng = random.Random(7)
    est = OverheadEstimator()
    met_honest = met_liar = 0
    for _ in range(400):
        net = int(rng.lognormvariate(8.0, 0.25))  # ~3 ms
        svc = rng.randint(30, 100)
        o = est.add("honest", net + svc, svc)
        met_honest += service_time_us(net + svc, svc, o) <= 110
        svc_l = rng.randint(1000, 1500)  # promises 110 µs, serves 10 × more
        o = est.add("liar", net + svc_l, svc_l)
        met_liar += service_time_us(net + svc_l, svc_l, o) <= 110
    assert met_honest / 400 >= 0.9
    assert met_liar == 0


def test_promise_keeping_excludes_below_the_threshold_then_starts_over() -> None:
    keeping = PromiseKeeping(window=20, min_jobs=10, threshold=0.5)
    assert not any(keeping.record("liar", False) for _ in range(9))  # too few to judge
    assert keeping.record("liar", False)  # the 10th missed promise: exclude
    assert keeping.kept("liar") is None  # starts over after the verdict
    assert not any(keeping.record("liar", False) for _ in range(9))
    # an honest executor keeping ~95 % is never excluded
    assert not any(keeping.record("honest", i % 20 != 0) for i in range(1000))
    assert keeping.kept("honest") == 0.95
    # exactly at the threshold is not below it
    half = PromiseKeeping(window=10, min_jobs=10, threshold=0.5)
    assert not any(half.record("x", i % 2 == 0) for i in range(10))
    with pytest.raises(ValueError):
        PromiseKeeping(window=5, min_jobs=6)
    with pytest.raises(ValueError):
        PromiseKeeping(threshold=1.5)
