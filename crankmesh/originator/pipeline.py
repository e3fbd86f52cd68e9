"""Pipelines: DAGs of content-addressed steps bought on the mesh (issue 17, seed 003).

::

    p = Pipeline("mail")
    p.step("extract", Job.python(EXTRACT))                       # result: a list
    p.step("classify", Job.call("email.classify.spam-v1", b""), each="extract")  # fan-out
    p.step("summarize", Job.python(SUMMARY), inputs=["classify"])                # fan-in
    plan = await p.plan(client)        # candidates per step, expected price and p95
    run = await p.run(client)          # verified mapping: step -> executor, receipt
    print(run.render("tree"), run.costs().to_dict())

Every step is scheduled through :meth:`Client.run` -- the same announce, bids,
selection, sealed assignment, failover and receipt verification as a single job, with
the step's own requirements, fallback chain, policy and SLO.  A step's inputs are the
verified results of earlier steps, named by their result CIDs in the run's records and
bound into the step's payload, which only the winning executor can open.

Checkpoints: every verified step is appended to a local run log (see
``_pipeline_log.py``) with its signed receipt and its result; ``run(resume=RUN_ID)``
re-verifies and skips what that run already finished; identical work (same step CID)
is paid once per run, and once across runs with ``reuse=True``.

Budget: ``Pipeline(budget=chain)`` pays every step from one budget token chain; the
client's ledger reserves each bid's price before assigning it, so the token is never
overspent, and the first step that does not fit halts the pipeline with
:class:`PipelineBudgetExceeded` naming what each step spent.

Local-failure rule (seed 003): a step that fails on the local executor for a resource
reason (``memory_limit``, ``sandbox_error``, ``killed``, or a reject naming a missing
profile or dependency) is retried on a compatible remote executor: the local executor is
excluded from that capability for the retry, and the record shows both attempts.

Resource handling: the caller owns the client; a run owns nothing else but its log
files.  Error handling: definition errors raise :class:`PipelineDefinitionError` before
anything runs; a step that ends without an ``ok`` receipt raises :class:`StepFailed`
(with the records of the steps that did finish); selection and budget errors of a step
propagate as :class:`StepFailed` wrapping them, except budget exhaustion, which raises
:class:`PipelineBudgetExceeded`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..capabilities import CapabilityOffer
from ..protocol.cid import cid_for_blob, cid_for_document
from ..protocol.encoding import canonical_encode
from ..protocol.errors import BudgetExceeded, CrankmeshError
from ..protocol.tokens import TokenGrant, verify_chain
from ._pipeline_dag import (
    PipelineDefinitionError,
    PipelineInputError,
    Step,
    bind_inputs,
    check_steps,
    fan_out_items,
    step_cid,
    step_value,
    topological_order,
)
from ._pipeline_log import RunLog, UnknownRun, new_run_id
from .client import Client
from .job import Job, JobResult

__all__ = [
    "Pipeline",
    "PipelineBudgetExceeded",
    "PipelineCosts",
    "PipelineDefinitionError",
    "PipelineInputError",
    "PipelineRun",
    "Plan",
    "PlanCandidate",
    "Step",
    "StepFailed",
    "StepPlan",
    "StepRecord",
    "UnknownRun",
]

#: Receipt statuses that mean "this machine lacked something", not "the code is wrong".
RESOURCE_STATUSES = frozenset({"memory_limit", "sandbox_error", "killed"})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ----------------------------------------------------------------------------- errors


class StepFailed(CrankmeshError):
    """A step ended without a verified ``ok`` receipt; ``records`` are the finished steps."""

    def __init__(self, step: str, reason: str, records: Sequence[StepRecord] = ()) -> None:
        self.step = step
        self.reason = reason
        self.records = tuple(records)
        super().__init__(f"pipeline step {step!r} failed: {reason}")


class PipelineBudgetExceeded(BudgetExceeded):
    """The pipeline's budget cannot pay for ``step``; ``spent_by_step`` is what each
    finished step cost (µ``currency``), ``records`` the finished steps."""

    def __init__(
        self,
        *,
        step: str,
        cause: BudgetExceeded,
        spent_by_step: dict[str, int],
        records: Sequence[StepRecord] = (),
    ) -> None:
        super().__init__(
            needed_micros=cause.needed_micros,
            remaining_micros=cause.remaining_micros,
            currency=cause.currency,
        )
        self.step = step
        self.spent_by_step = dict(spent_by_step)
        self.records = tuple(records)
        spent = ", ".join(f"{k} {v}" for k, v in spent_by_step.items()) or "nothing"
        total = sum(spent_by_step.values())
        self.args = (
            f"pipeline budget exceeded at step {step!r}: it needs up to {cause.needed_micros} "
            f"µ{cause.currency} but only {cause.remaining_micros} µ{cause.currency} remain; "
            f"spent per step (µ{cause.currency}): {spent}; total {total}",
        )


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlanCandidate:
    """One executor the directory says could (or could not) serve a step."""

    executor: str
    name: str | None
    accelerator: str
    compatible: bool
    price: int | None
    currency: str
    p95_us: int | None
    local: bool
    mismatches: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: 1-based rank under the step's policy among the compatible candidates of its
    #: accelerator (from the advertised price, p50/p95/p99 and load); None if incompatible.
    rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "mismatches": list(self.mismatches),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class StepPlan:
    """What the directory offers one step before it runs."""

    step: str
    capability: str
    inputs: tuple[str, ...]
    each: str | None
    policy: str
    accelerators: tuple[str, ...]
    candidates: tuple[PlanCandidate, ...]
    notes: tuple[str, ...] = ()

    @property
    def compatible(self) -> tuple[PlanCandidate, ...]:
        return tuple(c for c in self.candidates if c.compatible)

    @property
    def expected(self) -> PlanCandidate | None:
        """The best-ranked compatible candidate of the first accelerator that has one."""
        for acc in self.accelerators:
            ok = [c for c in self.compatible if c.accelerator == acc]
            if ok:
                return min(ok, key=lambda c: (c.rank or 0, c.price or 0))
        return None

    @property
    def mismatch(self) -> str | None:
        """Why no executor can serve the step, or None when one can."""
        if self.compatible:
            return None
        if not self.candidates:
            return f"no live executor offers {self.capability}"
        reasons = sorted({m for c in self.candidates for m in c.mismatches})
        return "; ".join(reasons) or "no compatible executor"

    def to_dict(self) -> dict[str, Any]:
        exp = self.expected
        return {
            "step": self.step,
            "capability": self.capability,
            "inputs": list(self.inputs),
            "each": self.each,
            "policy": self.policy,
            "accelerators": list(self.accelerators),
            "candidates": [c.to_dict() for c in self.candidates],
            "expected_executor": exp.executor if exp else None,
            "expected_price": exp.price if exp else None,
            "expected_p95_us": exp.p95_us if exp else None,
            "mismatch": self.mismatch,
            "notes": list(self.notes),
        }


def _rank_by_policy(
    client: Client, job: Job, cands: list[PlanCandidate], now: int
) -> list[PlanCandidate]:
    """Rank the compatible candidates of each accelerator as the client's selector would
    rank bids at their advertised terms; those its filters reject (price cap, SLO, ...)
    become incompatible with the filter's reason."""
    from .. import market

    policy = job.policy or client.config.policy
    terms = client._terms(job)
    out: list[PlanCandidate] = []
    for acc in dict.fromkeys(c.accelerator for c in cands):
        group = [c for c in cands if c.accelerator == acc]
        usable = [c for c in group if c.compatible and c.price is not None]
        by_id = {f"{acc}:{i}": c for i, c in enumerate(usable)}
        mcands = []
        for key, c in by_id.items():
            peer = client.directory.get(c.executor)
            adv = next(
                (a for a in peer.advert.capabilities if a.name == job.capability), None
            ) if peer is not None else None
            slo = adv.slo if adv is not None else None
            load = peer.advert.load if peer is not None else None
            mcands.append(
                market.Candidate(
                    bid_cid=key,
                    executor=c.executor,
                    price_micros=c.price or 0,
                    currency=c.currency,
                    p50_us=slo.p50_us if slo else None,
                    p95_us=slo.p95_us if slo else None,
                    p99_us=slo.p99_us if slo else None,
                    accuracy_ppm=slo.accuracy_ppm if slo else None,
                    running=load.running if load else 0,
                    queued=load.queued if load else 0,
                    capacity=max(1, load.capacity) if load else 1,
                    local=c.local,
                    expires_ms=now + 60_000,
                    reputation=client._reputation_score(c.executor, job.capability),
                )
            )
        ranking = market.select(mcands, terms, policy, now) if mcands else None
        ranks = {s.candidate.bid_cid: s.rank for s in ranking.eligible} if ranking else {}
        rejected = {r.candidate.bid_cid: r for r in ranking.rejected} if ranking else {}
        keyed = {id(c): k for k, c in by_id.items()}
        for c in group:
            ck = keyed.get(id(c))
            if ck is not None and ck in rejected:
                rej = rejected[ck]
                why = f"{rej.filter}: {rej.reason}"
                out.append(
                    dataclasses.replace(c, compatible=False, mismatches=(*c.mismatches, why))
                )
            else:
                out.append(dataclasses.replace(c, rank=ranks.get(ck) if ck else None))
    return out


def _resource_failure(result: JobResult) -> str | None:
    """The resource reason a job failed for (what another machine may not lack), or None:
    a resource status, or a python.run job that could not import a module."""
    if result.ok:
        return None
    if result.status in RESOURCE_STATUSES:
        return f"{result.status}: {result.receipt.detail}".rstrip(": ")
    if result.receipt.status == "error" and "ModuleNotFoundError" in result.stderr:
        line = next(
            (x for x in result.stderr.splitlines() if "ModuleNotFoundError" in x), ""
        )
        return f"a missing dependency ({line.strip()})"
    return None


def _missing_profile(job: Job, hardware: Any) -> str | None:
    """Why an executor's advertised env profiles cannot run a python.run job, or None."""
    wanted = job.constraints.env_profile
    if job.capability != "python.run" or not wanted:
        return None
    try:
        profiles = CapabilityOffer.from_wire(hardware).env_profiles
    except Exception:
        return None  # an advert we cannot read does not rule the peer out
    if profiles and wanted not in profiles:
        return f"needs env profile {wanted}, executor has {', '.join(profiles)}"
    return None


@dataclass(frozen=True)
class Plan:
    pipeline: str
    steps: tuple[StepPlan, ...]

    @property
    def ok(self) -> bool:
        return all(s.mismatch is None for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "ok": self.ok,
            "steps": [s.to_dict() for s in self.steps],
        }

    def render(self, fmt: str = "tree") -> str:
        from ._pipeline_render import render_plan

        return render_plan(self, fmt)


# ----------------------------------------------------------------------------- run records


@dataclass(frozen=True)
class StepRecord:
    """The verified outcome of one step (or one fan-out item: ``key`` ``name[i]``)."""

    key: str
    step: str
    index: int | None
    capability: str
    step_cid: str
    job_cid: str
    executor: str
    attempts: tuple[str, ...]
    price: int
    currency: str
    latency_ms: float
    receipt_cid: str
    result_cid: str
    #: The result CIDs this step consumed, per input step.
    inputs: dict[str, list[str]]
    #: ``run`` (paid in this run), ``resumed`` (from the run being resumed), ``reused``
    #: (identical work of an earlier run), ``duplicate`` (identical work of this run).
    source: str
    warnings: tuple[str, ...] = ()

    @property
    def charged(self) -> int:
        """What this run paid for the record (0 unless ``source`` is ``run``)."""
        return self.price if self.source == "run" else 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attempts"] = list(self.attempts)
        d["warnings"] = list(self.warnings)
        return d


@dataclass(frozen=True)
class PipelineCosts:
    """Per-step and total cost of a run, and what remains of the budget token."""

    per_step: dict[str, dict[str, int]]
    total: dict[str, int]
    budget_remaining: int | None
    budget_currency: str | None
    units: tuple[StepRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_step": self.per_step,
            "total": self.total,
            "budget_remaining": self.budget_remaining,
            "budget_currency": self.budget_currency,
            "units": [
                {
                    "key": r.key,
                    "executor": r.executor,
                    "charged": r.charged,
                    "price": r.price,
                    "currency": r.currency,
                    "latency_ms": r.latency_ms,
                    "source": r.source,
                }
                for r in self.units
            ],
        }


@dataclass
class PipelineRun:
    """A finished run: every step's verified record, and the values they produced."""

    pipeline: str
    pipeline_cid: str
    run_id: str
    records: list[StepRecord]
    values: dict[str, Any]
    budget_remaining: int | None = None
    budget_currency: str | None = None
    step_order: tuple[str, ...] = ()
    edges: tuple[tuple[str, str], ...] = ()
    #: Advertised names of the executors, where the directory knew them.
    executor_names: dict[str, str] = field(default_factory=dict)

    def record(self, key: str) -> StepRecord:
        for r in self.records:
            if r.key == key:
                return r
        raise KeyError(key)

    def value(self, step: str) -> Any:
        return self.values[step]

    def costs(self) -> PipelineCosts:
        per_step: dict[str, dict[str, int]] = {}
        total: dict[str, int] = {}
        for r in self.records:
            per = per_step.setdefault(r.step, {})
            per[r.currency] = per.get(r.currency, 0) + r.charged
            total[r.currency] = total.get(r.currency, 0) + r.charged
        return PipelineCosts(
            per_step, total, self.budget_remaining, self.budget_currency, tuple(self.records)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "pipeline_cid": self.pipeline_cid,
            "run_id": self.run_id,
            "steps": [r.to_dict() for r in self.records],
            "costs": self.costs().to_dict(),
        }

    def render(self, fmt: str = "tree") -> str:
        from ._pipeline_render import render_run

        return render_run(self, fmt)


# ----------------------------------------------------------------------------- pipeline


class Pipeline:
    """A DAG of named steps built from :class:`Job` templates (see module docstring)."""

    def __init__(self, name: str = "pipeline", *, budget: Any = None) -> None:
        self.name = name
        self._steps: list[Step] = []
        self._budget: tuple[bytes, ...] = ()
        if budget is not None:
            self._budget = Job.call("echo", b"").with_budget(budget).budget

    @classmethod
    def from_file(cls, path: Any, *, budget: Any = None) -> Pipeline:
        """A pipeline from a YAML pipeline file (docs/pipelines.md); raises
        :class:`~crankmesh.originator._pipeline_file.PipelineFileError` on any problem."""
        from ._pipeline_file import load_pipeline

        return load_pipeline(path, budget=budget)

    @classmethod
    def from_yaml(cls, text: str, *, budget: Any = None) -> Pipeline:
        """A pipeline from the text of a YAML pipeline file."""
        from ._pipeline_file import parse_pipeline

        return parse_pipeline(text, budget=budget)

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(self._steps)

    @property
    def budget(self) -> tuple[bytes, ...]:
        return self._budget

    def step(
        self,
        name: str,
        job: Job,
        *,
        inputs: Iterable[str] = (),
        each: str | None = None,
    ) -> Pipeline:
        """Add a step (returns the pipeline, for chaining).

        ``inputs``: earlier steps whose values this step consumes.  ``each``: fan out
        over that step's value (a list), one job per element.
        """
        if isinstance(inputs, str):
            inputs = (inputs,)
        step = Step(name=name, job=job, inputs=tuple(inputs), each=each)
        check_steps([*self._steps, step])
        self._steps.append(step)
        return self

    @property
    def cid(self) -> str:
        """The pipeline's content address: its name, edges and step templates."""
        doc = {
            "name": self.name,
            "steps": [
                {
                    "each": s.each or "",
                    "inputs": list(s.inputs),
                    "name": s.name,
                    "template": step_cid(s.job),
                }
                for s in self._steps
            ],
        }
        return cid_for_document(canonical_encode(doc))

    def edges(self) -> list[tuple[str, str]]:
        return [(src, s.name) for s in self._steps for src in s.sources]

    # ------------------------------------------------------------------ plan

    async def plan(self, client: Client, *, wait_s: float = 0.0) -> Plan:
        """Match every step against the client's directory (no job is sent).

        ``wait_s``: first wait up to this long for a peer offering each capability.
        """
        check_steps(self._steps)
        if wait_s > 0:
            for cap in dict.fromkeys(s.job.capability for s in self._steps):
                await client.wait_for_peers(cap, 1, wait_s=wait_s, settle_s=0.1)
        return Plan(self.name, tuple(self._plan_step(client, s) for s in self._steps))

    def _plan_step(self, client: Client, step: Step) -> StepPlan:
        job = step.job
        primary = job.constraints.accelerator or "cpu"
        accelerators = (primary, *job.fallback)
        cands: list[PlanCandidate] = []
        now = _now_ms()
        for acc in accelerators:
            variant = dataclasses.replace(
                job, constraints=job.constraints.model_copy(update={"accelerator": acc})
            )
            spec = client._build_spec(variant, now)
            peers, results = client._match_peers(spec)
            for peer in peers:
                res = results.get(peer.did)
                cap = next(
                    (c for c in peer.advert.capabilities if c.name == job.capability), None
                )
                mismatches = [str(m) for m in res.mismatches] if res else []
                profile_missing = _missing_profile(job, peer.advert.hardware)
                if profile_missing:
                    mismatches.append(profile_missing)
                cands.append(
                    PlanCandidate(
                        executor=peer.did,
                        name=peer.advert.name,
                        accelerator=acc,
                        compatible=(res is None or res.ok) and not profile_missing,
                        price=cap.price if cap else None,
                        currency=cap.currency if cap else job.currency,
                        p95_us=cap.slo.p95_us if cap and cap.slo else None,
                        local=peer.did == client.local_executor,
                        mismatches=tuple(mismatches),
                        warnings=tuple(res.warnings) if res else (),
                    )
                )
        cands = _rank_by_policy(client, job, cands, now)
        notes: list[str] = []
        local = [c for c in cands if c.local and c.compatible]
        remote = [c for c in cands if not c.local and c.compatible]
        if local and remote:
            notes.append(
                "local executor preferred when equal; on a resource failure there "
                f"(memory, missing profile or dependency) retried on one of {len(remote)} "
                "compatible remote executor(s)"
            )
        if len(accelerators) > 1:
            notes.append("fallback chain: " + " -> ".join(accelerators))
        return StepPlan(
            step=step.name,
            capability=job.capability,
            inputs=step.inputs,
            each=step.each,
            policy=str(job.policy or client.config.policy),
            accelerators=tuple(accelerators),
            candidates=tuple(cands),
            notes=tuple(notes),
        )

    # ------------------------------------------------------------------ run

    async def run(
        self,
        client: Client,
        *,
        run_id: str | None = None,
        resume: str | None = None,
        reuse: bool = False,
        state_dir: Any = None,
        concurrency: int = 8,
    ) -> PipelineRun:
        """Run every step in dependency order (independent ones concurrently).

        ``resume``: the id of an earlier run whose verified steps are skipped (its log is
        continued).  ``reuse``: also take verified results of identical work from any
        earlier run instead of paying again.  ``state_dir``: where the run log lives.
        """
        check_steps(self._steps)
        if resume is not None and run_id is not None and resume != run_id:
            raise ValueError("give run_id or resume, not two different ids")
        rid = resume or run_id or new_run_id()
        runlog = RunLog(state_dir, rid)
        previous: dict[str, dict[str, Any]] = {}
        if resume is not None:
            if not runlog.exists():
                raise UnknownRun(resume, runlog.state_dir)
            previous = runlog.steps()
        runlog.start(
            {
                "pipeline": self.name,
                "pipeline_cid": self.cid,
                "originator": client.identity.did,
                "resumed": resume is not None,
                "steps": [s.name for s in self._steps],
            }
        )
        execution = _Execution(self, client, runlog, previous, reuse, concurrency)
        await execution.run()
        remaining, currency = execution.budget_remaining()
        names: dict[str, str] = {}
        for rec in execution.records:
            peer = client.directory.get(rec.executor)
            if peer is not None and peer.advert.name:
                names[rec.executor] = peer.advert.name
        return PipelineRun(
            pipeline=self.name,
            pipeline_cid=self.cid,
            run_id=rid,
            records=execution.sorted_records(),
            values=execution.values,
            budget_remaining=remaining,
            budget_currency=currency,
            step_order=tuple(s.name for s in topological_order(self._steps)),
            edges=tuple(self.edges()),
            executor_names=names,
        )


class _Halted(Exception):
    """Internal: a unit not started because the run halted on another step's failure."""


@dataclass
class _Paid:
    """Identical work within one run: the first unit pays, the others wait for it."""

    done: anyio.Event = field(default_factory=anyio.Event)
    record: StepRecord | None = None
    output: bytes | None = None


class _Execution:
    """One run of a pipeline (internal): the per-step tasks and what they produced."""

    def __init__(
        self,
        pipeline: Pipeline,
        client: Client,
        runlog: RunLog,
        previous: dict[str, dict[str, Any]],
        reuse: bool,
        concurrency: int,
    ) -> None:
        self.pipeline = pipeline
        self.client = client
        self.runlog = runlog
        self.previous = previous
        self.reuse = reuse
        self.limit = anyio.Semaphore(max(1, concurrency))
        self.values: dict[str, Any] = {}
        self.result_cids: dict[str, list[str]] = {}
        self.records: list[StepRecord] = []
        self.done = {s.name: anyio.Event() for s in pipeline.steps}
        self.paid: dict[str, _Paid] = {}
        self.failure: tuple[Step, Exception] | None = None
        self.grant: TokenGrant | None = None

    def sorted_records(self) -> list[StepRecord]:
        order = {s.name: i for i, s in enumerate(topological_order(self.pipeline.steps))}
        return sorted(self.records, key=lambda r: (order[r.step], r.index or 0))

    def budget_remaining(self) -> tuple[int | None, str | None]:
        chain = self.pipeline.budget
        if not chain:
            return None, None
        if self.grant is None:
            try:
                self.grant = verify_chain(
                    chain,
                    now_ms=_now_ms(),
                    capability=self.pipeline.steps[0].job.capability,
                    holder=self.client.identity.did,
                )
            except CrankmeshError:
                return None, None
        return self.client.budgets.remaining(self.grant), self.grant.currency

    def spent_by_step(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.sorted_records():
            out[r.step] = out.get(r.step, 0) + r.charged
        return out

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for step in topological_order(self.pipeline.steps):
                tg.start_soon(self._guarded, step)
        if self.failure is not None:
            step, exc = self.failure
            # Built now, so that steps that were already assigned when the run halted
            # (they finish: their price was reserved) are in the per-step figures.
            raise self._translate(step, exc)

    def _fail(self, step: Step, exc: Exception) -> None:
        """The first failure halts the run: no further unit starts; units already
        assigned finish and are recorded (their executors are working and will charge)."""
        if isinstance(exc, _Halted):
            return
        if self.failure is None:
            self.failure = (step, exc)
        for event in self.done.values():
            event.set()  # wake the steps waiting on inputs: they see the halt and stop

    async def _guarded(self, step: Step) -> None:
        try:
            await self._step(step)
        except Exception as exc:
            self._fail(step, exc)

    def _translate(self, step: Step, exc: Exception) -> BaseException:
        if isinstance(exc, PipelineBudgetExceeded | StepFailed | PipelineInputError):
            return exc
        if isinstance(exc, BudgetExceeded):
            return PipelineBudgetExceeded(
                step=step.name,
                cause=exc,
                spent_by_step=self.spent_by_step(),
                records=self.sorted_records(),
            )
        if isinstance(exc, CrankmeshError):
            return StepFailed(step.name, str(exc), self.sorted_records())
        return exc

    async def _step(self, step: Step) -> None:
        for src in step.sources:
            await self.done[src].wait()
        if self.failure is not None:
            return
        values = {name: self.values[name] for name in step.inputs}
        if step.each is None:
            inputs = {n: list(self.result_cids[n]) for n in step.sources}
            value, cid = await self._unit(step, step.name, None, values, None, False, inputs)
            self.values[step.name] = value
            self.result_cids[step.name] = [cid]
        else:
            items = fan_out_items(step, self.values[step.each])
            out: list[Any] = [None] * len(items)
            cids: list[str] = [""] * len(items)
            src_cids = self.result_cids[step.each]

            async def one(i: int, item: Any) -> None:
                inputs = {n: list(self.result_cids[n]) for n in step.inputs if n != step.each}
                # The item came out of the source step's result (of item i when it fanned out).
                src = src_cids[i] if len(src_cids) == len(items) else src_cids[0]
                inputs[step.each or ""] = [src]
                try:
                    out[i], cids[i] = await self._unit(
                        step, f"{step.name}[{i}]", i, values, item, True, inputs
                    )
                except Exception as exc:
                    self._fail(step, exc)

            async with anyio.create_task_group() as tg:
                for i, item in enumerate(items):
                    tg.start_soon(one, i, item)
            if self.failure is not None:
                return  # halted: this step is not done
            self.values[step.name] = out
            self.result_cids[step.name] = cids
        self.done[step.name].set()

    async def _unit(
        self,
        step: Step,
        key: str,
        index: int | None,
        values: dict[str, Any],
        item: Any,
        fanned: bool,
        inputs: dict[str, list[str]],
    ) -> tuple[Any, str]:
        job = bind_inputs(step, values, item, fanned=fanned)
        if self.pipeline.budget:
            job = dataclasses.replace(job, budget=self.pipeline.budget)
        scid = step_cid(job)
        cap = job.capability

        # 1. Resuming: the run being resumed verified this unit already.
        prev = self.previous.get(key)
        if prev is not None and prev.get("step_cid") == scid:
            stored = self.runlog.verified(
                prev.get("job_cid"), str(prev.get("receipt_cid")), str(prev.get("result_cid"))
            )
            if stored is not None:
                rec = self._record_from(prev, key, step, index, scid, inputs, "resumed")
                self.records.append(rec)
                return step_value(cap, stored.output), stored.result_cid

        # 2. Identical work in this run: pay once.
        paid = self.paid.get(scid)
        if paid is not None:
            await paid.done.wait()
            if paid.record is not None and paid.output is not None:
                rec = dataclasses.replace(
                    paid.record, key=key, step=step.name, index=index, inputs=inputs,
                    source="duplicate",
                )
                self.records.append(rec)
                self._log(rec, paid.output, b"")
                return step_value(cap, paid.output), rec.result_cid
        paid = self.paid[scid] = _Paid()
        try:
            # 3. Identical work of an earlier run (reuse), re-verified.
            if self.reuse:
                found = self.runlog.reusable(scid)
                if found is not None:
                    doc, stored = found
                    rec = StepRecord(
                        key=key, step=step.name, index=index, capability=cap, step_cid=scid,
                        job_cid=stored.receipt.job, executor=stored.receipt.signer,
                        attempts=(), price=stored.receipt.charge,
                        currency=stored.receipt.currency, latency_ms=0.0,
                        receipt_cid=stored.receipt_cid, result_cid=stored.result_cid,
                        inputs=inputs, source="reused",
                    )
                    self.records.append(rec)
                    self._log(rec, stored.output, stored.receipt_raw)
                    paid.record, paid.output = rec, stored.output
                    return step_value(cap, stored.output), stored.result_cid
            # 4. Buy it on the mesh (unless the run has halted meanwhile).
            async with self.limit:
                if self.failure is not None:
                    raise _Halted()
                result, notes = await self._buy(step, job)
            assert result.output is not None
            rec = StepRecord(
                key=key, step=step.name, index=index, capability=cap, step_cid=scid,
                job_cid=result.job_cid, executor=result.executor,
                attempts=tuple(notes) + tuple(
                    str(a) for a in result.attempts
                ),
                price=result.price, currency=result.currency,
                latency_ms=round(result.latency_ms, 3), receipt_cid=result.receipt_cid,
                result_cid=str(result.receipt.result), inputs=inputs, source="run",
                warnings=result.warnings,
            )
            self.records.append(rec)
            self._log(rec, result.output, result.receipt_raw)
            paid.record, paid.output = rec, result.output
            return step_value(cap, result.output), rec.result_cid
        finally:
            paid.done.set()

    async def _buy(self, step: Step, job: Job) -> tuple[JobResult, list[str]]:
        """Run the job; apply the local-failure rule; anything but ``ok`` is StepFailed."""
        client = self.client
        notes: list[str] = []
        result = await client.run(job)
        local = client.local_executor
        resource = _resource_failure(result)
        if resource is not None and local is not None and result.executor == local:
            reason = f"local executor failed with {resource}"
            notes.append(f"{reason}; retried on a remote executor")
            client.exclude(local, job.capability, reason, for_ms=600_000)
            try:
                result = await client.run(job)
            finally:
                client.readmit(local, job.capability)
        if not result.ok:
            raise StepFailed(
                step.name,
                f"{result.status} on {result.executor}: {result.receipt.detail or ''}".rstrip(
                    ": "
                ),
                self.sorted_records(),
            )
        if result.output is None or cid_for_blob(result.output) != result.receipt.result:
            raise StepFailed(step.name, "the result does not match its receipt's CID")
        return result, notes

    def _record_from(
        self,
        doc: dict[str, Any],
        key: str,
        step: Step,
        index: int | None,
        scid: str,
        inputs: dict[str, list[str]],
        source: str,
    ) -> StepRecord:
        return StepRecord(
            key=key, step=step.name, index=index, capability=step.job.capability,
            step_cid=scid, job_cid=str(doc.get("job_cid")), executor=str(doc.get("executor")),
            attempts=tuple(doc.get("attempts") or ()), price=int(doc.get("price") or 0),
            currency=str(doc.get("currency") or "USD"),
            latency_ms=float(doc.get("latency_ms") or 0.0),
            receipt_cid=str(doc.get("receipt_cid")), result_cid=str(doc.get("result_cid")),
            inputs=inputs, source=source,
        )

    def _log(self, rec: StepRecord, output: bytes, receipt_raw: bytes) -> None:
        entry = rec.to_dict()
        if not receipt_raw:  # a duplicate: its blobs are those of the unit that paid
            receipt_raw = self.runlog.blob(rec.receipt_cid) or b""
        if receipt_raw:
            self.runlog.record_step(
                entry, receipt_raw=receipt_raw, output=output, step_cid=rec.step_cid
            )
