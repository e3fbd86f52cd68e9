from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from crankmesh.executor.benchmark import (
    BENCHMARK_SEED,
    CalibrationSettings,
    CostModel,
    LabelledCapability,
    PerformanceProfile,
    SelfBenchmark,
    calibrate,
    echo_job_factory,
    job_factory_for,
    measure_intake_us,
    payload_job_factory,
    python_run_job_factory,
    shortfalls,
)
from crankmesh.executor.handlers import (
    EchoCapability,
    Outcome,
    PythonRunCapability,
    decode_python_payload,
)
from crankmesh.protocol.cid import verify_blob
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.messages import BidSlo, JobSpec

pytestmark = pytest.mark.anyio


def ints_and_strings_only(x: object) -> bool:
    if isinstance(x, dict):
        return all(isinstance(k, str) and ints_and_strings_only(v) for k, v in x.items())
    if isinstance(x, list):
        return all(ints_and_strings_only(v) for v in x)
    return type(x) in (int, str)


class SleepyCapability:
    """Takes ``delay_s`` per job, and shares one "device": concurrent jobs queue up."""

    name = "test.sleepy"

    def __init__(self, delay_s: float = 0.002) -> None:
        self.delay_s = delay_s
        self.lock = anyio.Lock()

    def check(self, job: JobSpec) -> str | None:
        return None

    async def execute(self, job: JobSpec, payload: bytes) -> Outcome:
        async with self.lock:
            await anyio.sleep(self.delay_s)
        return Outcome("ok", payload, cpu_us=500)


class FlakyCapability:
    name = "test.flaky"

    def __init__(self) -> None:
        self.n = 0

    def check(self, job: JobSpec) -> str | None:
        return None

    async def execute(self, job: JobSpec, payload: bytes) -> Outcome:
        self.n += 1
        if self.n % 3 == 0:
            raise RuntimeError("boom")
        if self.n % 3 == 1:
            return Outcome("error", None, "bad day")
        return Outcome("ok", b"")


class GuessingCapability:
    """Labels everything 'yes': right on 3 of 4 labelled examples."""

    name = "test.guess"

    def check(self, job: JobSpec) -> str | None:
        return None

    async def execute(self, job: JobSpec, payload: bytes) -> Outcome:
        return Outcome("ok", b"yes")

    def labelled_set(self) -> Sequence[tuple[bytes, str]]:
        return [(b"a", "yes"), (b"b", "yes"), (b"c", "no"), (b"d", "yes")]

    def score(self, outputs: Sequence[bytes | None], labels: Sequence[str]) -> int:
        right = sum(
            o is not None and o.decode() == want for o, want in zip(outputs, labels, strict=True)
        )
        return right * 1_000_000 // len(labels)


async def test_synthetic_jobs_are_valid_and_content_addressed() -> None:
    job, payload = echo_job_factory(300)()
    assert len(payload) == 300 and job.payload_size == 300
    verify_blob(payload, job.payload)
    assert job.originator == Identity.from_seed(BENCHMARK_SEED).did
    assert JobSpec.model_validate(job.to_wire()) == job
    job2, payload2 = python_run_job_factory("print(1)", env_profile="python-core")()
    assert decode_python_payload(payload2) == ("print(1)", {})
    assert job2.capability == "python.run" and job2.constraints.env_profile == "python-core"
    assert job2.nonce != python_run_job_factory()()[0].nonce
    with pytest.raises(ValueError):
        payload_job_factory("echo", [])


async def test_calibrate_echo_quickly() -> None:
    start = time.monotonic()
    prof = await calibrate(EchoCapability(), job_factory=echo_job_factory(), runs=20)
    assert time.monotonic() - start < 2
    assert prof.capability == "echo"
    assert prof.samples >= 20 and prof.failed == 0
    p50, p95, p99 = prof.p50_us, prof.p95_us, prof.p99_us
    assert p50 is not None and p95 is not None and p99 is not None
    assert p50 <= p95 <= p99
    assert set(prof.load_sensitivity) == {1, 2, 4} == set(prof.throughput_by_concurrency)
    assert prof.throughput_mjps is not None and prof.throughput_mjps > 1_000_000  # > 1000/s
    assert prof.accuracy_ppm is None
    assert prof.success_ppm == 1_000_000
    slo = prof.to_bid_slo()
    assert BidSlo.model_validate(slo.to_wire()) == slo
    assert (slo.p50_us, slo.p95_us, slo.p99_us, slo.samples) == (p50, p95, p99, prof.samples)
    assert ints_and_strings_only(prof.to_wire())
    assert prof.to_wire()["load_p50_us"].keys() == {"1", "2", "4"}


async def test_load_sensitivity_shows_queueing() -> None:
    # 20 ms jobs: large enough that scheduling noise on a busy 2-core box cannot hide
    # the queueing effect measured below.
    prof = await calibrate(
        SleepyCapability(0.02),
        job_factory=payload_job_factory("test.sleepy", [b"x"]),
        runs=8,
        warmup=1,
        concurrency=(1, 4),
        min_level_s=0,
    )
    assert set(prof.load_sensitivity) == {1, 4}
    # One shared device: at concurrency 4 a job waits for the ones ahead of it.
    assert prof.load_sensitivity[4] > 1.8 * prof.load_sensitivity[1]
    # ...and throughput does not grow with concurrency.
    t1, t4 = prof.throughput_by_concurrency[1], prof.throughput_by_concurrency[4]
    assert t4 < 1.8 * t1
    assert prof.throughput_mjps is not None and prof.throughput_mjps < 60_000  # < 60 jobs/s
    assert prof.cpu_us_per_job == 500  # metered by the handler


async def test_failures_are_counted_not_raised() -> None:
    prof = await calibrate(
        FlakyCapability(),
        job_factory=payload_job_factory("test.flaky", [b""]),
        runs=9,
        warmup=0,
        concurrency=(1,),
        min_level_s=0,
    )
    assert (prof.ok, prof.failed) == (3, 6)
    assert prof.samples == 3
    assert prof.success_ppm is not None and 300_000 <= prof.success_ppm <= 340_000


async def test_a_handler_that_never_succeeds_gives_an_empty_slo() -> None:
    class Broken(FlakyCapability):
        async def execute(self, job: JobSpec, payload: bytes) -> Outcome:
            raise RuntimeError("always")

    prof = await calibrate(
        Broken(), job_factory=payload_job_factory("test.flaky", [b""]), runs=3, min_level_s=0
    )
    assert prof.samples == 0 and prof.load_sensitivity == {}
    assert prof.to_bid_slo() == BidSlo()


async def test_accuracy_of_labelled_capabilities() -> None:
    handler = GuessingCapability()
    assert isinstance(handler, LabelledCapability)
    assert not isinstance(EchoCapability(), LabelledCapability)
    factory = job_factory_for(handler)
    assert factory is not None
    prof = await calibrate(handler, job_factory=factory, runs=5, min_level_s=0)
    assert prof.accuracy_ppm == 750_000
    assert prof.to_bid_slo().accuracy_ppm == 750_000


async def test_time_budget_stops_early() -> None:
    start = time.monotonic()
    prof = await calibrate(
        SleepyCapability(0.05),
        job_factory=payload_job_factory("test.sleepy", [b"x"]),
        runs=100,
        warmup=0,
        time_budget_s=0.3,
        min_level_s=0,
    )
    assert time.monotonic() - start < 1.5
    assert 1 <= prof.samples < 100


def test_settings_are_validated() -> None:
    for kwargs in (
        {"runs": 0},
        {"warmup": -1},
        {"concurrency": ()},
        {"concurrency": (0,)},
        {"time_budget_s": 0},
        {"min_level_s": 20},
    ):
        with pytest.raises(ValueError):
            CalibrationSettings(**kwargs)


def test_cost_model() -> None:
    cost = CostModel(price_per_cpu_second_micros=100, price_per_gpu_second_micros=2000)
    assert cost.unit_cost(0) == 1  # the minimum
    assert cost.unit_cost(1_000_000) == 100
    assert cost.unit_cost(1, 0) == 1  # rounds up
    assert cost.unit_cost(500_000, 250_000) == 50 + 500
    assert CostModel(min_price_micros=30).unit_cost(10) == 30
    with pytest.raises(ValueError):
        CostModel(price_per_cpu_second_micros=-1)


def test_record_follows_drift_and_prices_from_metering() -> None:
    prof = PerformanceProfile("x", window=100, cost=CostModel(price_per_cpu_second_micros=1000))
    assert prof.to_bid_slo() == BidSlo() and prof.unit_cost is None
    for _ in range(300):
        prof.record(1000, 2000, True)
    assert prof.p50_us is not None and abs(prof.p50_us - 1000) <= 10
    assert prof.unit_cost == 2  # 2 ms CPU at 1000 µ/s
    assert prof.throughput_mjps == 1_000_000  # one slot, 1 ms per job
    for _ in range(300):
        prof.record(4000, 0, True)  # slower now; cpu not metered: cost estimate stays
    assert prof.p50_us is not None and abs(prof.p50_us - 4000) <= 40
    assert prof.unit_cost == 2
    prof.record(10, 0, False)
    assert prof.failed == 1 and prof.success_ppm is not None and prof.success_ppm < 1_000_000


def test_calibrated_throughput_scales_with_latency_drift() -> None:
    prof = PerformanceProfile("x", window=50)
    for _ in range(50):
        prof.record(1000, 0, True)
    prof.throughput_by_concurrency = {1: 900_000, 2: 1_800_000}
    prof._calibrated_p50 = prof.p50_us
    assert prof.throughput_mjps == 1_800_000
    for _ in range(100):
        prof.record(2000, 0, True)
    tput = prof.throughput_mjps
    assert tput is not None and abs(tput - 900_000) < 20_000


def test_shortfalls() -> None:
    promised = BidSlo(p95_us=1000, throughput_mjps=100_000, accuracy_ppm=950_000)
    assert shortfalls(promised, BidSlo(p95_us=1050, throughput_mjps=95_000)) == []
    assert shortfalls(promised, BidSlo(p95_us=2000, accuracy_ppm=800_000)) == [
        "p95_us measured 2000 > advertised 1000",
        "accuracy_ppm measured 800000 < advertised 950000",
    ]


async def test_self_benchmark_profiles_all_handlers() -> None:
    bench = SelfBenchmark(costs={"echo": CostModel(min_price_micros=7)}, slots=2)
    profiles = await bench.calibrate_all(
        [EchoCapability(), GuessingCapability(), FlakyCapability()],
        runs=5,
        min_level_s=0,
        job_factories={"test.flaky": payload_job_factory("test.flaky", [b""])},
    )
    assert set(profiles) == {"echo", "test.guess", "test.flaky"}
    assert bench.profile_for("echo") is profiles["echo"]
    assert bench.unit_cost("echo") == 7
    assert bench.slo_for("test.guess").accuracy_ppm == 750_000
    assert bench.slo_for("unknown") == BidSlo() and bench.unit_cost("unknown") is None
    before = bench.profile_for("echo").ok
    bench.record("echo", 5, 0, True)
    assert bench.profile_for("echo").ok == before + 1
    bench.record("new.capability", 100, 50, True)  # real executions of anything count
    assert bench.slo_for("new.capability").samples == 1
    wire = bench.to_wire()
    assert list(wire) == sorted(wire) and ints_and_strings_only(wire)


def test_intake_is_measured_on_real_assignments_each_verified(monkeypatch) -> None:
    from crankmesh.executor import benchmark

    calls = {"verify": 0, "open": 0}
    real_verify, real_open = benchmark.verify_signature, benchmark.open_sealed

    def verify(*args: Any) -> None:
        calls["verify"] += 1
        real_verify(*args)

    def open_box(*args: Any, **kwargs: Any) -> bytes:
        calls["open"] += 1
        return real_open(*args, **kwargs)

    monkeypatch.setattr(benchmark, "verify_signature", verify)
    monkeypatch.setattr(benchmark, "open_sealed", open_box)
    intake = measure_intake_us(Identity.generate(), samples=4)
    assert intake > 0
    # One unmeasured round, then one per sample: every signature really checked (no
    # verification cache), every box really opened.
    assert calls == {"verify": 5, "open": 5}
    with pytest.raises(ValueError):
        measure_intake_us(samples=0)


async def test_calibration_adds_the_intake_to_what_it_promises() -> None:
    # Echo runs in microseconds; a real echo job also costs the executor its work on
    # the assignment, and the promise must say so (it is service time).
    intake = 10_000
    prof = await calibrate(
        EchoCapability(), job_factory=echo_job_factory(), runs=5, min_level_s=0, intake_us=intake
    )
    assert prof.p50_us is not None and prof.p50_us >= intake
    assert all(p50 >= intake for p50 in prof.load_sensitivity.values())
    # The intake work is serial: no level completes more than 1 / intake jobs per second.
    assert all(t <= 1_000_000_000 // intake for t in prof.throughput_by_concurrency.values())
    with pytest.raises(ValueError):
        await calibrate(EchoCapability(), job_factory=echo_job_factory(), intake_us=-1)


async def test_calibrate_all_measures_the_intake_once(monkeypatch) -> None:
    from crankmesh.executor import benchmark

    measured: list[int] = []

    def fake_intake(*args: Any, **kwargs: Any) -> int:
        measured.append(1)
        return 5_000

    monkeypatch.setattr(benchmark, "measure_intake_us", fake_intake)
    bench = SelfBenchmark()
    await bench.calibrate_all([EchoCapability(), GuessingCapability()], runs=3, min_level_s=0)
    assert len(measured) == 1
    assert (bench.slo_for("echo").p50_us or 0) >= 5_000
    bench = SelfBenchmark()
    await bench.calibrate_all([EchoCapability()], runs=3, min_level_s=0, intake_us=0)
    assert len(measured) == 1  # given, not measured
    assert (bench.slo_for("echo").p50_us or 0) < 5_000


async def test_handlers_without_job_factory_are_skipped() -> None:
    bench = SelfBenchmark()
    assert job_factory_for(SleepyCapability()) is None
    assert await bench.calibrate_all([SleepyCapability()]) == {}


async def test_calibrate_python_run_in_the_sandbox() -> None:
    from crankmesh.executor.sandbox import Sandbox, SandboxError

    try:
        sandbox_cm: Any = Sandbox(profiles=("python-core",), max_concurrency=2)
        sandbox = await sandbox_cm.__aenter__()
    except SandboxError as exc:  # pragma: no cover - depends on the host
        pytest.skip(f"sandbox unavailable: {exc}")
    try:
        start = time.monotonic()
        prof = await calibrate(
            PythonRunCapability(sandbox),
            job_factory=python_run_job_factory(),
            runs=10,
            warmup=2,
            concurrency=(1, 2),
            min_level_s=0,
        )
        assert time.monotonic() - start < 5
    finally:
        await sandbox_cm.__aexit__(None, None, None)
    assert prof.failed == 0 and prof.samples == 10
    assert prof.p50_us is not None and 100 < prof.p50_us < 2_000_000
    assert prof.cpu_us_per_job is not None and prof.cpu_us_per_job > 0  # sandbox rusage
    assert prof.unit_cost is not None and prof.unit_cost >= 1
