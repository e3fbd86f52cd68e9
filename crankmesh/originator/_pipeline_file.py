"""Pipeline files: a small declarative YAML format (parsed by PyYAML, validated by
pydantic) for the same pipelines the SDK builds.  See docs/pipelines.md.

::

    pipeline: mail-triage      # the name (required)
    version: 1                 # the format version (1, the default)
    policy: cost               # default selection policy of every step (optional)
    steps:
      - name: extract
        python: |              # a python.run step: its code ...
          result = args["mails"]
        args: {mails: ["..."]} # ... and its args (the step's inputs join as args["inputs"])
      - name: classify
        capability: email.classify.spam-v1   # any other capability; payload from its input
        each: extract          # fan out over extract's list
      - name: summarize
        python: "print(len(args['inputs']['classify']))"
        inputs: [classify]     # fan in

Error handling: every problem raises :class:`PipelineFileError` naming the file and,
per problem, where in it (``steps[2].each``) and what is wrong; nothing else escapes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..protocol.errors import CrankmeshError
from ._pipeline_dag import PipelineDefinitionError
from .job import Job
from .pipeline import Pipeline

__all__ = ["PipelineFileError", "load_pipeline", "parse_pipeline"]

_Accel = Literal["cpu", "gpu", "cuda", "rocm", "mps"]


class PipelineFileError(CrankmeshError, ValueError):
    """A pipeline file cannot be read, is not YAML, or does not describe a valid pipeline."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class StepSpec(BaseModel):
    """One step of a pipeline file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    python: str | None = None
    capability: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    payload: str = ""
    inputs: list[str] = Field(default_factory=list)
    each: str | None = None
    env_profile: str = "python-core"
    accelerator: _Accel | None = None
    fallback: list[_Accel] = Field(default_factory=list)
    timeout_sec: Annotated[float, Field(gt=0, le=86_400)] = 10.0
    memory_mb: Annotated[int, Field(ge=1)] | None = None
    max_output_bytes: Annotated[int, Field(ge=0)] = 1 << 20
    requirements: dict[str, Any] = Field(default_factory=dict)
    slo_p95_ms: Annotated[float, Field(gt=0)] | None = None
    slo_p99_ms: Annotated[float, Field(gt=0)] | None = None
    max_price: Annotated[int, Field(ge=0)] | None = None
    currency: str = "USD"
    policy: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> StepSpec:
        if (self.python is None) == (self.capability is None):
            raise ValueError("give exactly one of 'python' (code) or 'capability'")
        if self.capability is not None:
            python_only: list[str] = [
                k for k in ("args", "fallback", "memory_mb") if k in self.model_fields_set
            ]
            if self.accelerator is not None:
                python_only.append("accelerator")
            if python_only:
                raise ValueError(f"{', '.join(python_only)} apply to python steps only")
        elif "payload" in self.model_fields_set:
            raise ValueError("'payload' applies to capability steps; python steps use 'args'")
        return self

    def job(self, default_policy: str | None) -> Job:
        policy = self.policy or default_policy
        if self.python is not None:
            return Job.python(
                self.python,
                self.args,
                env_profile=self.env_profile,
                accelerator=self.accelerator or "cpu",
                timeout_sec=self.timeout_sec,
                max_output_bytes=self.max_output_bytes,
                memory_mb=self.memory_mb,
                requirements=self.requirements,
                slo_p95_ms=self.slo_p95_ms,
                slo_p99_ms=self.slo_p99_ms,
                max_price=self.max_price,
                currency=self.currency,
                policy=policy,
                fallback=tuple(self.fallback),
            )
        assert self.capability is not None
        return Job.call(
            self.capability,
            self.payload.encode("utf-8"),
            self.requirements,
            timeout_sec=self.timeout_sec,
            max_output_bytes=self.max_output_bytes,
            slo_p95_ms=self.slo_p95_ms,
            slo_p99_ms=self.slo_p99_ms,
            max_price=self.max_price,
            currency=self.currency,
            policy=policy,
        )


class PipelineSpec(BaseModel):
    """A whole pipeline file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: Annotated[str, Field(min_length=1, max_length=128)]
    version: Literal[1] = 1
    policy: str | None = None
    steps: Annotated[list[StepSpec], Field(min_length=1)]


def parse_pipeline(text: str, *, source: str = "<pipeline>", budget: Any = None) -> Pipeline:
    """A :class:`Pipeline` from YAML text; ``budget`` pays every step (a token chain)."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineFileError(source, [f"not valid YAML: {exc}".replace("\n", " ")]) from None
    if not isinstance(doc, dict):
        raise PipelineFileError(source, ["the file must be a YAML mapping with 'steps'"])
    try:
        spec = PipelineSpec.model_validate(doc)
    except ValidationError as exc:
        problems = [
            f"{_where(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        ]
        raise PipelineFileError(source, problems) from None
    pipeline = Pipeline(spec.pipeline, budget=budget)
    for i, step in enumerate(spec.steps):
        try:
            pipeline.step(step.name, step.job(spec.policy), inputs=step.inputs, each=step.each)
        except (PipelineDefinitionError, ValueError) as exc:
            raise PipelineFileError(source, [f"steps[{i}] ({step.name}): {exc}"]) from None
    return pipeline


def load_pipeline(path: str | os.PathLike[str], *, budget: Any = None) -> Pipeline:
    """Read and parse a pipeline file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineFileError(str(p), [f"cannot read it: {exc}"]) from None
    return parse_pipeline(text, source=str(p), budget=budget)


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
