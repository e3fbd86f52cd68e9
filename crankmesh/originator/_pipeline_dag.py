"""The pipeline DAG model: named steps, their inputs, and content addresses.  No I/O.

A step is a :class:`~crankmesh.originator.job.Job` template plus the names of earlier
steps whose results it consumes.  At run time each consumed result (verified against
the CID its receipt names) is bound into the step's payload -- ``args["inputs"]`` for
``python.run``, the payload itself for any other capability -- so the input travels
to the step's executor inside the sealed assignment, as every payload does, and the
step's own CID commits to it.

A step with ``each=NAME`` fans out: it runs once per element of step NAME's value
(a list), and its value is the list of the per-item values.  A step that takes a
fanned-out step as input fans in: it receives that list.

Step identity: a JobSpec's CID includes a nonce and a timestamp, so two runs of the
same work never share one.  The **step CID** is the CID (codec messagepack) of the
canonical map ``{"capability", "constraints", "payload": <payload CID>,
"requirements"}``: equal for identical work, so a run pays for identical work once,
and ``reuse`` finds it across runs.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from ..executor.handlers import decode_python_payload, encode_python_payload
from ..protocol.cid import cid_for_blob, cid_for_document
from ..protocol.encoding import canonical_encode
from ..protocol.errors import CrankmeshError
from .job import Job

__all__ = [
    "PipelineDefinitionError",
    "PipelineInputError",
    "Step",
    "bind_inputs",
    "check_steps",
    "step_cid",
    "step_value",
    "topological_order",
]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class PipelineDefinitionError(CrankmeshError, ValueError):
    """A pipeline is not a well-formed DAG (bad name, unknown input, a cycle, ...)."""


class PipelineInputError(CrankmeshError):
    """A step's input cannot be bound (e.g. ``each`` over a value that is not a list)."""

    def __init__(self, step: str, problem: str) -> None:
        self.step = step
        self.problem = problem
        super().__init__(f"step {step!r}: {problem}")


@dataclass(frozen=True, kw_only=True)
class Step:
    """One named step: a job template and the earlier steps it consumes."""

    name: str
    job: Job
    inputs: tuple[str, ...] = ()
    #: Fan out over this step's value (a list): one job per element.
    each: str | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        """Every step this one depends on (``each`` first, then ``inputs``)."""
        out = [self.each] if self.each else []
        out.extend(n for n in self.inputs if n != self.each)
        return tuple(out)


def check_steps(steps: Sequence[Step]) -> None:
    """Raise :class:`PipelineDefinitionError` unless ``steps`` form a well-formed DAG."""
    if not steps:
        raise PipelineDefinitionError("a pipeline needs at least one step")
    seen: set[str] = set()
    for step in steps:
        if not _NAME.match(step.name):
            raise PipelineDefinitionError(
                f"step name {step.name!r} must start with a letter and use only letters, "
                "digits, '_' and '-' (at most 64)"
            )
        if step.name in seen:
            raise PipelineDefinitionError(f"two steps are named {step.name!r}")
        seen.add(step.name)
    for step in steps:
        for src in step.sources:
            if src not in seen:
                raise PipelineDefinitionError(
                    f"step {step.name!r} takes input from {src!r}, which is no step"
                )
            if src == step.name:
                raise PipelineDefinitionError(f"step {step.name!r} takes its own result")
        if step.job.capability != "python.run":
            bound = 1 if step.each else len(step.inputs)
            if step.each and step.inputs and set(step.inputs) != {step.each}:
                bound = 2
            if bound > 1:
                raise PipelineDefinitionError(
                    f"step {step.name!r} ({step.job.capability}) takes its payload from one "
                    "input; only python.run steps combine several"
                )
    topological_order(steps)


def topological_order(steps: Sequence[Step]) -> list[Step]:
    """Steps in dependency order (declaration order among independent ones)."""
    by_name = {s.name: s for s in steps}
    done: set[str] = set()
    out: list[Step] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise PipelineDefinitionError(f"the steps form a cycle: {cycle}")
        visiting.append(name)
        for src in by_name[name].sources:
            if src in by_name:
                visit(src)
        visiting.pop()
        done.add(name)
        out.append(by_name[name])

    for s in steps:
        visit(s.name)
    return out


def step_cid(job: Job) -> str:
    """The content address of a step's work (see the module docstring)."""
    doc = {
        "capability": job.capability,
        "constraints": job.constraints.to_wire(),
        "payload": cid_for_blob(job.payload),
        "requirements": _plain(job.requirements),
    }
    return cid_for_document(canonical_encode(doc))


def _plain(value: Any) -> Any:
    """Requirements as canonical-encodable values (floats become their repr)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return repr(value)
    return value


def step_value(capability: str, output: bytes | None) -> Any:
    """What a step's result means to the steps that consume it.

    ``python.run``: the job's ``result`` global when it set one, else its stdout.
    Other capabilities: the output as text (UTF-8), or bytes when it is not text.
    """
    if output is None:
        return None
    if capability == "python.run":
        try:
            doc = msgpack.unpackb(output, raw=False)
        except Exception:
            return None
        if not isinstance(doc, dict):
            return None
        raw = doc.get("return")
        if raw is not None:
            try:
                return msgpack.unpackb(raw, raw=False)
            except Exception:
                return None
        out = doc.get("stdout", b"")
        return out.decode("utf-8", "replace") if isinstance(out, bytes) else ""
    try:
        return output.decode("utf-8")
    except UnicodeDecodeError:
        return output


def _as_payload(step: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise PipelineInputError(step, f"input cannot be sent as a payload: {exc}") from None


def bind_inputs(
    step: Step, values: Mapping[str, Any], item: Any = None, *, fanned: bool = False
) -> Job:
    """The concrete job of ``step`` (or of one fan-out item) with its inputs bound."""
    job = step.job
    if job.capability == "python.run":
        code, args = decode_python_payload(job.payload)
        args = dict(args)
        args["inputs"] = {name: values[name] for name in step.inputs if name in values}
        if fanned:
            args["item"] = item
        return dataclasses.replace(job, payload=encode_python_payload(code, args))
    if fanned:
        return dataclasses.replace(job, payload=_as_payload(step.name, item))
    if step.inputs:
        return dataclasses.replace(job, payload=_as_payload(step.name, values[step.inputs[0]]))
    return job


def fan_out_items(step: Step, value: Any) -> list[Any]:
    """The elements a fan-out step runs over; :class:`PipelineInputError` if no list."""
    if not isinstance(value, list | tuple):
        raise PipelineInputError(
            step.name, f"each={step.each!r} needs a list, got {type(value).__name__}"
        )
    return list(value)


def names(steps: Iterable[Step]) -> list[str]:
    return [s.name for s in steps]
