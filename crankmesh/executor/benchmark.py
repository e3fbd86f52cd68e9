"""Self-benchmarking: each executor measures what it can promise (seed 000 §3).

A :class:`PerformanceProfile` per capability holds latency quantiles (a decaying
:class:`~crankmesh.executor.quantiles.StreamingQuantiles`), throughput, load sensitivity
(p50 at concurrency 1, 2, 4, ...), accuracy for ML capabilities, the success rate, CPU/GPU
time per job and the unit cost derived from it.  :func:`calibrate` fills one by running a
handler's ``execute`` directly (no NATS) on synthetic jobs; :meth:`PerformanceProfile.record`
keeps it current from real executions, so the profile follows drift.  Bids and adverts quote
:meth:`PerformanceProfile.to_bid_slo`.

What is promised is *service time*: assignment received → result ready.  A real job's
sample covers all of it; a synthetic one covers only ``execute``, so calibration adds the
executor's intake work per assignment -- decode, signature check, opening the payload box,
checking the payload CID -- measured by :func:`measure_intake_us`.  Without it a
microsecond capability (``echo``) would promise a p95 a hundred times below what its real
jobs take.

:class:`SelfBenchmark` holds the profiles of all of a node's handlers: calibrate them at
start (:meth:`SelfBenchmark.calibrate_all`), then ``record`` every execution and ask
``slo_for`` / ``unit_cost`` when bidding.  :func:`shortfalls` compares what was advertised
with what was measured (seed 003, "Capability benchmarking": warn if below advertised).

Units: latencies and CPU time in µs, throughput in milli-jobs per second, accuracy and
success rate in ppm, prices in integer micro-units of ``currency``.  Wire forms are
integers, strings and maps only.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import anyio

from ..protocol.cid import cid_for_blob, cid_for_document, verify_blob
from ..protocol.envelope import check_fresh, signing_input
from ..protocol.identity import Identity, open_sealed, seal, verify_signature
from ..protocol.messages import Assignment, BidSlo, Constraints, JobSpec, decode_message
from .handlers import CapabilityHandler, Outcome, encode_python_payload
from .quantiles import StreamingQuantiles

__all__ = [
    "CalibrationSettings",
    "CostModel",
    "JobFactory",
    "LabelledCapability",
    "PerformanceProfile",
    "SelfBenchmark",
    "calibrate",
    "default_job_factories",
    "echo_job_factory",
    "job_factory_for",
    "matmul_job_factory",
    "payload_job_factory",
    "python_run_job_factory",
    "shortfalls",
    "synthetic_job",
]

log = logging.getLogger("crankmesh.executor.benchmark")

#: ``job_factory()`` -> ``(JobSpec, payload)``: one synthetic job to run.
JobFactory = Callable[[], tuple[JobSpec, bytes]]

#: Seed of the fixed identity that "originates" synthetic benchmark jobs.
BENCHMARK_SEED: Final = b"crankmesh/self-benchmark/v1".ljust(32, b"\x00")
_GPU_ACCELERATORS: Final = frozenset({"gpu", "cuda", "rocm", "mps"})
#: A calibration level repeats its jobs at most this many times to fill ``min_level_s``.
_MAX_REPEAT: Final = 100


@runtime_checkable
class LabelledCapability(Protocol):
    """A handler that can be scored: a held-out labelled set and a scoring function."""

    def labelled_set(self) -> Sequence[tuple[bytes, str]]:
        """``(payload, expected label)`` pairs not used for training."""
        ...

    def score(self, outputs: Sequence[bytes | None], labels: Sequence[str]) -> int:
        """Accuracy in ppm of ``outputs`` (``None`` for a failed job) against ``labels``."""
        ...


# --------------------------------------------------------------------------- cost


@dataclass(frozen=True, kw_only=True)
class CostModel:
    """How this executor prices a job from the resources it measured the job to use.

    ``unit_cost = max(min_price_micros, ceil(cpu_s * price_per_cpu_second_micros +
    gpu_s * price_per_gpu_second_micros))``.  Defaults are about USD 0.18 per CPU hour and
    USD 3.60 per GPU hour.
    """

    price_per_cpu_second_micros: int = 50
    price_per_gpu_second_micros: int = 1_000
    min_price_micros: int = 1
    currency: str = "USD"

    def __post_init__(self) -> None:
        for name in (
            "price_per_cpu_second_micros",
            "price_per_gpu_second_micros",
            "min_price_micros",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    def unit_cost(self, cpu_us: int, gpu_us: int = 0) -> int:
        """Price of one job that used ``cpu_us`` of CPU and ``gpu_us`` of GPU time."""
        micro = (
            cpu_us * self.price_per_cpu_second_micros + gpu_us * self.price_per_gpu_second_micros
        )
        return max(self.min_price_micros, -(-micro // 1_000_000))


# --------------------------------------------------------------------------- profile


class _RunningMean:
    """Mean of the first ``n`` values, then an exponentially weighted mean (follows drift)."""

    __slots__ = ("n", "value", "weight")

    def __init__(self, weight: float = 1 / 32) -> None:
        self.n = 0
        self.value = 0.0
        self.weight = weight

    def add(self, x: float) -> None:
        self.n += 1
        self.value += (x - self.value) * max(1 / self.n, self.weight)

    def get(self) -> int | None:
        return round(self.value) if self.n else None


def _exact_p50(values: Sequence[int]) -> int | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(0.5 * len(s)) - 1)]


class PerformanceProfile:
    """What one capability delivers on this executor, kept current (see module docstring).

    ``window`` / ``window_s`` are the decay of the latency quantiles (between one and two
    windows of the most recent successful executions are summarised); ``slots`` is how many
    jobs the executor runs at once, used for throughput before calibration measured it.
    """

    def __init__(
        self,
        capability: str,
        *,
        cost: CostModel | None = None,
        window: int | None = 512,
        window_s: float | None = None,
        slots: int = 1,
    ) -> None:
        self.capability = capability
        self.cost = cost or CostModel()
        self.slots = max(1, slots)
        self.latency = StreamingQuantiles(window=window, window_s=window_s)
        #: concurrency -> p50 latency (µs) measured at that concurrency.
        self.load_sensitivity: dict[int, int] = {}
        #: concurrency -> throughput (milli-jobs/s) measured at that concurrency.
        self.throughput_by_concurrency: dict[int, int] = {}
        self.accuracy_ppm: int | None = None
        self.ok = 0
        self.failed = 0
        self.calibrated_ms: int | None = None
        self._calibrated_p50: int | None = None
        self._recent_success = _RunningMean(weight=1 / 64)
        self._cpu_us = _RunningMean()
        self._gpu_us = _RunningMean()

    def __repr__(self) -> str:
        return (
            f"PerformanceProfile({self.capability!r}, p50={self.p50_us}, p95={self.p95_us},"
            f" p99={self.p99_us}, throughput_mjps={self.throughput_mjps},"
            f" accuracy_ppm={self.accuracy_ppm}, samples={self.samples})"
        )

    # ------------------------------------------------------------------ updates

    def record(self, wall_us: int, cpu_us: int = 0, ok: bool = True, *, gpu_us: int = 0) -> None:
        """Account one execution (real or synthetic).

        Only successful executions feed the latency quantiles (a failed job's latency says
        nothing about a good one's).  ``cpu_us`` / ``gpu_us`` of 0 mean "not metered" and
        leave the per-job cost estimate as it was.
        """
        if ok:
            self.ok += 1
            self.latency.add(max(0, wall_us))
        else:
            self.failed += 1
        self._recent_success.add(1.0 if ok else 0.0)
        if cpu_us > 0:
            self._cpu_us.add(cpu_us)
        if gpu_us > 0:
            self._gpu_us.add(gpu_us)

    # ------------------------------------------------------------------ queries

    @property
    def samples(self) -> int:
        """Successful executions the latency quantiles currently summarise."""
        return self.latency.count

    @property
    def p50_us(self) -> int | None:
        return self.latency.quantile(0.5)

    @property
    def p95_us(self) -> int | None:
        return self.latency.quantile(0.95)

    @property
    def p99_us(self) -> int | None:
        return self.latency.quantile(0.99)

    @property
    def throughput_mjps(self) -> int | None:
        """Jobs per second (× 1000) this executor can complete.

        The best throughput calibration measured, scaled by how the p50 latency has moved
        since (a capability that got twice as slow completes half as many jobs); before any
        calibration, ``slots / p50``.
        """
        p50 = self.p50_us
        if self.throughput_by_concurrency:
            best = max(self.throughput_by_concurrency.values())
            if p50 and self._calibrated_p50:
                return best * self._calibrated_p50 // p50
            return best
        if p50:
            return 1_000_000_000 * self.slots // max(p50, 1)
        return None

    @property
    def success_ppm(self) -> int | None:
        """Share of recent executions that succeeded (exponentially weighted), in ppm."""
        n = self._recent_success.n
        return None if n == 0 else round(self._recent_success.value * 1_000_000)

    @property
    def cpu_us_per_job(self) -> int | None:
        return self._cpu_us.get()

    @property
    def gpu_us_per_job(self) -> int | None:
        return self._gpu_us.get()

    @property
    def unit_cost(self) -> int | None:
        """Price per job (micro-units of ``cost.currency``); ``None`` before any metering."""
        cpu, gpu = self.cpu_us_per_job, self.gpu_us_per_job
        if cpu is None and gpu is None:
            return None
        return self.cost.unit_cost(cpu or 0, gpu or 0)

    def to_bid_slo(self) -> BidSlo:
        """The self-measured SLO a bid or advert quotes (all ``None`` before any sample)."""
        if not self.samples:
            return BidSlo(accuracy_ppm=self.accuracy_ppm)
        return BidSlo(
            p50_us=self.p50_us,
            p95_us=self.p95_us,
            p99_us=self.p99_us,
            throughput_mjps=self.throughput_mjps,
            accuracy_ppm=self.accuracy_ppm,
            samples=self.samples,
        )

    def to_wire(self) -> dict[str, Any]:
        """Summary for adverts, logs and the CLI: integers and strings only, ``None`` left out."""
        fields: dict[str, Any] = {
            "capability": self.capability,
            "samples": self.samples,
            "ok": self.ok,
            "failed": self.failed,
            "p50_us": self.p50_us,
            "p95_us": self.p95_us,
            "p99_us": self.p99_us,
            "throughput_mjps": self.throughput_mjps,
            "accuracy_ppm": self.accuracy_ppm,
            "success_ppm": self.success_ppm,
            "cpu_us_per_job": self.cpu_us_per_job,
            "gpu_us_per_job": self.gpu_us_per_job,
            "unit_cost": self.unit_cost,
            "currency": self.cost.currency,
            "calibrated_ms": self.calibrated_ms,
        }
        if self.load_sensitivity:
            fields["load_p50_us"] = {str(c): v for c, v in sorted(self.load_sensitivity.items())}
        if self.throughput_by_concurrency:
            fields["load_throughput_mjps"] = {
                str(c): v for c, v in sorted(self.throughput_by_concurrency.items())
            }
        return {k: v for k, v in fields.items() if v is not None}


def shortfalls(advertised: BidSlo, measured: BidSlo, *, tolerance_ppm: int = 100_000) -> list[str]:
    """Where ``measured`` is worse than ``advertised`` by more than ``tolerance_ppm``.

    Latencies worse means higher; throughput and accuracy worse means lower.  Fields either
    side leaves out are not compared.  Empty when the measurement keeps the promise.
    """
    out: list[str] = []
    slack = 1_000_000 + tolerance_ppm
    for name in ("p50_us", "p95_us", "p99_us"):
        a, m = getattr(advertised, name), getattr(measured, name)
        if a is not None and m is not None and m * 1_000_000 > a * slack:
            out.append(f"{name} measured {m} > advertised {a}")
    for name in ("throughput_mjps", "accuracy_ppm"):
        a, m = getattr(advertised, name), getattr(measured, name)
        if a is not None and m is not None and m * slack < a * 1_000_000:
            out.append(f"{name} measured {m} < advertised {a}")
    return out


# --------------------------------------------------------------------------- synthetic jobs

_identity: Identity | None = None


def _benchmark_identity() -> Identity:
    global _identity
    if _identity is None:
        _identity = Identity.from_seed(BENCHMARK_SEED)
    return _identity


def synthetic_job(
    capability: str, payload: bytes, *, constraints: Constraints | None = None
) -> tuple[JobSpec, bytes]:
    """A valid :class:`JobSpec` for ``payload``, "originated" by the fixed benchmark identity."""
    c = constraints or Constraints()
    now = time.time_ns() // 1_000_000
    job = JobSpec(
        capability=capability,
        originator=_benchmark_identity().did,
        created=now,
        nonce=os.urandom(16),
        payload=cid_for_blob(payload),
        payload_size=len(payload),
        deadline=now + c.timeout_ms + 60_000,
        constraints=c,
    )
    return job, payload


def payload_job_factory(
    capability: str, payloads: Sequence[bytes], *, constraints: Constraints | None = None
) -> JobFactory:
    """Jobs for ``capability`` cycling through ``payloads``."""
    if not payloads:
        raise ValueError("at least one payload is needed")
    items = tuple(payloads)
    i = 0

    def make() -> tuple[JobSpec, bytes]:
        nonlocal i
        payload = items[i % len(items)]
        i += 1
        return synthetic_job(capability, payload, constraints=constraints)

    return make


def echo_job_factory(size: int = 256) -> JobFactory:
    """``echo`` jobs with a ``size``-byte payload."""
    return payload_job_factory("echo", [bytes(range(256)) * (size // 256) + bytes(size % 256)])


def python_run_job_factory(
    code: str = "print(42)",
    *,
    env_profile: str | None = None,
    accelerator: str | None = None,
    timeout_ms: int = 10_000,
) -> JobFactory:
    """``python.run`` jobs running ``code`` (default ``print(42)``)."""
    constraints = Constraints.model_validate(
        {
            "timeout_ms": timeout_ms,
            **({"env_profile": env_profile} if env_profile else {}),
            **({"accelerator": accelerator} if accelerator else {}),
        }
    )
    return payload_job_factory("python.run", [encode_python_payload(code)], constraints=constraints)


def matmul_job_factory(n: int = 64, *, accelerator: str | None = None) -> JobFactory:
    """``tensor.matmul`` jobs multiplying two ``n``×``n`` float32 matrices."""
    import struct

    from .ml_capabilities import encode_matmul_payload, encode_matrix

    data = struct.pack(f"<{n * n}f", *((i % 7) / 7.0 for i in range(n * n)))
    payload = encode_matmul_payload(encode_matrix(n, n, data), encode_matrix(n, n, data))
    constraints = Constraints.model_validate({"accelerator": accelerator} if accelerator else {})
    return payload_job_factory("tensor.matmul", [payload], constraints=constraints)


def default_job_factories() -> dict[str, JobFactory]:
    """Factories for the built-in capabilities: ``echo``, ``python.run``, ``tensor.matmul``.

    ``email.classify.spam-v1`` (and any :class:`LabelledCapability`) gets one from its
    labelled set through :func:`job_factory_for`.
    """
    return {name: make() for name, make in _DEFAULT_FACTORIES.items()}


_DEFAULT_FACTORIES: Final[dict[str, Callable[[], JobFactory]]] = {
    "echo": echo_job_factory,
    "python.run": python_run_job_factory,
    "tensor.matmul": matmul_job_factory,
}


def job_factory_for(
    handler: CapabilityHandler, factories: Mapping[str, JobFactory] | None = None
) -> JobFactory | None:
    """The factory for ``handler``: from ``factories``, the defaults, or its labelled set."""
    if factories is not None and handler.name in factories:
        return factories[handler.name]
    make = _DEFAULT_FACTORIES.get(handler.name)
    if make is not None:
        return make()
    if isinstance(handler, LabelledCapability):
        items = handler.labelled_set()
        if items:
            return payload_job_factory(handler.name, [p for p, _ in items])
    return None


# --------------------------------------------------------------------------- calibration


def measure_intake_us(
    identity: Identity | None = None, *, samples: int = 15, payload_size: int = 64
) -> int:
    """Median µs of the work an executor does on each assignment before the job runs
    (what ``Executor._on_assignment`` does for a valid one): decode and validate it,
    check its signature, check freshness, open the payload box, check the payload CID.

    Measured on real assignments from a throwaway originator to ``identity`` (a throwaway
    one by default), each with fresh bytes, so no verification cache answers for it; the
    box key for the originator is derived on a first, unmeasured round, as it is for an
    originator whose jobs the executor has seen before.  Takes a few milliseconds.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    executor = identity or Identity.generate()
    originator = Identity.generate()
    payload = bytes(payload_size)
    payload_cid = cid_for_blob(payload)
    job_cid = cid_for_document(b"crankmesh/self-benchmark/intake")
    times: list[int] = []
    for _ in range(samples + 1):
        now = time.time_ns() // 1_000_000
        raw = (
            Assignment.build(
                signer=originator.did,
                ts=now,
                exp=now + 60_000,
                job=job_cid,
                bid=job_cid,
                executor=executor.did,
                attempt=1,
                nonce=os.urandom(16),
                payload=seal(payload, executor.did, sender=originator),
                deadline=now + 60_000,
            )
            .sign(originator)
            .raw
        )
        start = time.perf_counter_ns()
        env, asg = decode_message(raw, Assignment)
        verify_signature(env.signer, signing_input(env.type, env.body_bytes), env.signature)
        check_fresh(env, time.time_ns() // 1_000_000, max_age_ms=60_000)
        verify_blob(open_sealed(asg.payload, executor, sender_did=asg.signer), payload_cid)
        times.append((time.perf_counter_ns() - start) // 1000)
    return _exact_p50(times[1:]) or 0


@dataclass(frozen=True, kw_only=True)
class CalibrationSettings:
    """How hard :func:`calibrate` works: ``runs`` jobs per concurrency level (each level
    lasting at least ``min_level_s``) after ``warmup`` unmeasured ones, stopping early (with
    what it has) after ``time_budget_s``."""

    runs: int = 30
    concurrency: tuple[int, ...] = (1, 2, 4)
    warmup: int = 3
    time_budget_s: float = 10.0
    min_level_s: float = 0.02

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise ValueError(f"runs must be >= 1, got {self.runs}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not self.concurrency or any(c < 1 or c > 256 for c in self.concurrency):
            raise ValueError(f"concurrency levels must be in 1..256, got {self.concurrency}")
        if not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be positive, got {self.time_budget_s}")
        if not 0 <= self.min_level_s <= self.time_budget_s:
            raise ValueError(f"min_level_s must be in [0, time_budget_s], got {self.min_level_s}")


@dataclass(slots=True)
class _Sample:
    wall_us: int
    cpu_us: int
    gpu_us: int
    outcome: Outcome


async def _run_one(handler: CapabilityHandler, job: JobSpec, payload: bytes) -> _Sample:
    cpu0 = time.process_time_ns()
    start = time.perf_counter_ns()
    try:
        outcome = await handler.execute(job, payload)
    except Exception as exc:  # a crashing handler is a failed job, as in the executor
        outcome = Outcome("error", None, f"{type(exc).__name__}: {exc}"[:1000])
    wall_us = (time.perf_counter_ns() - start) // 1000
    # Handlers that meter themselves (the sandbox) say so; for in-process ones the process
    # CPU time is the best measure (only meaningful when jobs run one at a time).
    cpu_us = outcome.cpu_us or (time.process_time_ns() - cpu0) // 1000
    gpu_us = wall_us if job.constraints.accelerator in _GPU_ACCELERATORS else 0
    return _Sample(wall_us, cpu_us, gpu_us, outcome)


async def _run_level(
    handler: CapabilityHandler,
    jobs: Sequence[tuple[JobSpec, bytes]],
    concurrency: int,
    deadline: float,
    min_duration_s: float,
) -> tuple[list[_Sample], int]:
    """Run ``jobs`` ``concurrency`` at a time; ``(samples, elapsed µs)``.

    Fast handlers (µs per job) keep cycling through ``jobs`` until ``min_duration_s`` has
    passed (at most ``_MAX_REPEAT`` times over), so throughput is not measured on a
    millisecond of noise.
    """
    samples: list[_Sample] = []
    limit = len(jobs) * _MAX_REPEAT
    next_index = 0
    t0 = time.monotonic()
    min_until = t0 + min_duration_s

    def more() -> bool:
        now = time.monotonic()
        if now >= deadline or next_index >= limit:
            return False
        return next_index < len(jobs) or now < min_until

    async def worker() -> None:
        nonlocal next_index
        while more():
            job, payload = jobs[next_index % len(jobs)]
            next_index += 1
            samples.append(await _run_one(handler, job, payload))

    start = time.perf_counter_ns()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return samples, max(1, (time.perf_counter_ns() - start) // 1000)


async def calibrate(
    handler: CapabilityHandler,
    *,
    job_factory: JobFactory,
    runs: int = 30,
    concurrency: Iterable[int] = (1, 2, 4),
    warmup: int = 3,
    time_budget_s: float = 10.0,
    min_level_s: float = 0.02,
    profile: PerformanceProfile | None = None,
    cost: CostModel | None = None,
    intake_us: int = 0,
) -> PerformanceProfile:
    """Measure ``handler`` by running its ``execute`` directly on jobs from ``job_factory``.

    After ``warmup`` unmeasured jobs it runs ``runs`` jobs at concurrency 1 (their
    latencies, CPU and GPU time go into the profile's quantiles and cost), then ``runs``
    jobs at each other level of ``concurrency``, recording p50 and throughput per level.
    A level lasts at least ``min_level_s`` (fast handlers repeat their jobs, up to 100
    times over), so microsecond handlers get a throughput worth quoting.
    For a :class:`LabelledCapability` it then runs the labelled set and records the
    accuracy.  Stops starting jobs after ``time_budget_s`` and keeps what it measured.

    ``intake_us`` (see :func:`measure_intake_us`) is the executor's own work on each
    assignment before ``execute`` runs: it is added to every latency recorded, and a level
    cannot complete jobs faster than that work, done one at a time, allows.

    Error handling: a job that fails or raises is counted as failed, never raised; a
    handler that never succeeds gives a profile without latencies.
    """
    if intake_us < 0:
        raise ValueError(f"intake_us must be >= 0, got {intake_us}")
    settings = CalibrationSettings(
        runs=runs,
        concurrency=tuple(concurrency),
        warmup=warmup,
        time_budget_s=time_budget_s,
        min_level_s=min_level_s,
    )
    prof = profile or PerformanceProfile(handler.name, cost=cost)
    deadline = time.monotonic() + settings.time_budget_s
    for _ in range(settings.warmup):
        if time.monotonic() >= deadline:
            break
        await _run_one(handler, *job_factory())

    for level in sorted(set(settings.concurrency) | {1}):
        jobs = [job_factory() for _ in range(settings.runs)]
        samples, elapsed_us = await _run_level(handler, jobs, level, deadline, settings.min_level_s)
        good = [s for s in samples if s.outcome.status == "ok"]
        if level == 1:
            for s in samples:
                prof.record(
                    s.wall_us + intake_us, s.cpu_us, s.outcome.status == "ok", gpu_us=s.gpu_us
                )
            prof._calibrated_p50 = prof.p50_us
        p50 = _exact_p50([s.wall_us for s in good])
        if p50 is not None:
            prof.load_sensitivity[level] = p50 + intake_us
            # The intake work runs on the event loop, one assignment at a time.
            busy_us = max(elapsed_us, len(good) * intake_us)
            prof.throughput_by_concurrency[level] = len(good) * 1_000_000_000 // busy_us
        if samples and not good:
            log.warning(
                "calibrating %s: all %d jobs failed at concurrency %d (first: %s %s)",
                handler.name,
                len(samples),
                level,
                samples[0].outcome.status,
                samples[0].outcome.detail,
            )

    if isinstance(handler, LabelledCapability) and time.monotonic() < deadline:
        items = handler.labelled_set()
        if items:
            outputs: list[bytes | None] = []
            for payload, _ in items:
                job, _ = synthetic_job(handler.name, payload)
                s = await _run_one(handler, job, payload)
                outputs.append(s.outcome.result if s.outcome.status == "ok" else None)
            prof.accuracy_ppm = handler.score(outputs, [label for _, label in items])
    prof.calibrated_ms = time.time_ns() // 1_000_000
    return prof


# --------------------------------------------------------------------------- all handlers


class SelfBenchmark:
    """The performance profiles of all of a node's capabilities.

    ``cost`` prices every capability unless ``costs`` names one for it; ``window`` /
    ``window_s`` / ``slots`` configure new profiles (see :class:`PerformanceProfile`).

    Usage in a node::

        bench = SelfBenchmark(slots=config.max_concurrency)
        await bench.calibrate_all(handlers)          # at start, before advertising
        ...
        bench.record(job.capability, wall_us, outcome.cpu_us, outcome.status == "ok")
        slo = bench.slo_for(job.capability)          # into the bid
    """

    def __init__(
        self,
        *,
        cost: CostModel | None = None,
        costs: Mapping[str, CostModel] | None = None,
        window: int | None = 512,
        window_s: float | None = None,
        slots: int = 1,
    ) -> None:
        self.cost = cost or CostModel()
        self.costs = dict(costs or {})
        self.window = window
        self.window_s = window_s
        self.slots = slots
        self.profiles: dict[str, PerformanceProfile] = {}

    def profile_for(self, name: str) -> PerformanceProfile:
        """The profile of capability ``name`` (an empty one is created on first use)."""
        prof = self.profiles.get(name)
        if prof is None:
            prof = self.profiles[name] = PerformanceProfile(
                name,
                cost=self.costs.get(name, self.cost),
                window=self.window,
                window_s=self.window_s,
                slots=self.slots,
            )
        return prof

    def record(
        self, name: str, wall_us: int, cpu_us: int = 0, ok: bool = True, *, gpu_us: int = 0
    ) -> None:
        """Account one real execution of capability ``name``."""
        self.profile_for(name).record(wall_us, cpu_us, ok, gpu_us=gpu_us)

    def slo_for(self, name: str) -> BidSlo:
        prof = self.profiles.get(name)
        return BidSlo() if prof is None else prof.to_bid_slo()

    def unit_cost(self, name: str) -> int | None:
        prof = self.profiles.get(name)
        return None if prof is None else prof.unit_cost

    async def calibrate_all(
        self,
        handlers: Iterable[CapabilityHandler],
        *,
        job_factories: Mapping[str, JobFactory] | None = None,
        runs: int = 30,
        concurrency: Iterable[int] = (1, 2, 4),
        warmup: int = 3,
        time_budget_s: float = 10.0,
        min_level_s: float = 0.02,
        intake_us: int | None = None,
    ) -> dict[str, PerformanceProfile]:
        """Calibrate each handler in turn (one at a time, so they do not disturb each other).

        Handlers without a job factory (see :func:`job_factory_for`) are skipped with a log
        line; their profiles fill from real executions only.  ``time_budget_s`` is per
        handler.  ``intake_us`` is the executor's work per assignment (see
        :func:`calibrate`); ``None`` measures it (:func:`measure_intake_us`).  Returns the
        profiles calibrated.
        """
        levels = tuple(concurrency)
        done: dict[str, PerformanceProfile] = {}
        for handler in handlers:
            factory = job_factory_for(handler, job_factories)
            if factory is None:
                log.info(
                    "no synthetic jobs for %s; it will be profiled from real jobs", handler.name
                )
                continue
            if intake_us is None:
                intake_us = measure_intake_us()
            done[handler.name] = await calibrate(
                handler,
                job_factory=factory,
                runs=runs,
                concurrency=levels,
                warmup=warmup,
                time_budget_s=time_budget_s,
                min_level_s=min_level_s,
                profile=self.profile_for(handler.name),
                intake_us=intake_us,
            )
        return done

    def to_wire(self) -> dict[str, Any]:
        """``{capability: profile summary}`` (see :meth:`PerformanceProfile.to_wire`)."""
        return {name: prof.to_wire() for name, prof in sorted(self.profiles.items())}
