"""Pipeline files: YAML parsed with PyYAML, validated with pydantic; every field is used."""

from __future__ import annotations

import pytest

from crankmesh import Pipeline
from crankmesh.executor.handlers import decode_python_payload
from crankmesh.originator._pipeline_file import PipelineFileError, load_pipeline, parse_pipeline

FULL = """
pipeline: full
policy: latency
steps:
  - name: a
    python: "result = args['n']"
    args: {n: 3}
    env_profile: python-ml
    accelerator: cuda
    fallback: [cpu]
    timeout_sec: 7.5
    memory_mb: 256
    max_output_bytes: 4096
    requirements: {memory_gb: 2}
    slo_p95_ms: 40
    slo_p99_ms: 90
    max_price: 5000
    currency: EUR
  - name: b
    capability: email.classify.spam-v1
    payload: "hello"
    policy: cost
    timeout_sec: 2
  - name: c
    capability: echo
    each: a
"""


def test_every_field_reaches_the_job() -> None:
    p = parse_pipeline(FULL)
    assert p.name == "full" and [s.name for s in p.steps] == ["a", "b", "c"]
    a, b, c = (s.job for s in p.steps)
    code, args = decode_python_payload(a.payload)
    assert code == "result = args['n']" and args == {"n": 3}
    k = a.constraints
    assert (k.env_profile, k.accelerator, k.timeout_ms, k.memory_mb, k.max_output_bytes) == (
        "python-ml", "cuda", 7500, 256, 4096
    )
    assert a.fallback == ("cpu",) and a.requirements == {"memory_gb": 2}
    assert a.slo is not None and (a.slo.p95_us, a.slo.p99_us) == (40_000, 90_000)
    assert (a.max_price, a.currency, a.policy) == (5000, "EUR", "latency")  # file default
    assert b.capability == "email.classify.spam-v1" and b.payload == b"hello"
    assert b.policy == "cost" and b.constraints.timeout_ms == 2000
    assert p.steps[2].each == "a" and c.capability == "echo"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("steps: []", "pipeline: Field required"),
        ("pipeline: x\nsteps: []", "steps: List should have at least 1 item"),
        ("pipeline: x\nsteps:\n  - name: a\n", "exactly one of 'python' (code) or"),
        ("pipeline: x\nsteps:\n  - {name: a, python: p, capability: echo}", "exactly one of"),
        ("pipeline: x\nsteps:\n  - {name: a, capability: echo, args: {k: 1}}", "python steps only"),
        ("pipeline: x\nsteps:\n  - {name: a, python: p, payload: x}", "'payload' applies"),
        ("pipeline: x\nsteps:\n  - {name: a, python: p, colour: red}", "steps[0].colour"),
        ("pipeline: x\nsteps:\n  - {name: a, python: p, timeout_sec: -1}", "timeout_sec"),
        ("pipeline: x\nversion: 2\nsteps:\n  - {name: a, python: p}", "version"),
        ("pipeline: x\nsteps:\n  - {name: a, python: p, inputs: [zz]}", "'zz', which is no step"),
        ("pipeline: x\nsteps:\n  - {name: a, python: p, accelerator: tpu}", "accelerator"),
        ("[1, 2]", "must be a YAML mapping"),
        ("pipeline: [unclosed", "not valid YAML"),
    ],
)
def test_problems_are_one_clear_error_naming_where(text: str, problem: str) -> None:
    with pytest.raises(PipelineFileError) as info:
        parse_pipeline(text, source="f.yaml")
    assert str(info.value).startswith("f.yaml: ")
    assert problem in str(info.value)


def test_load_reads_files_and_reports_unreadable_ones(tmp_path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("pipeline: x\nsteps:\n  - {name: a, python: 'print(1)'}\n")
    assert load_pipeline(f).name == "x"
    assert Pipeline.from_file(f).cid == Pipeline.from_yaml(f.read_text()).cid
    with pytest.raises(PipelineFileError, match="cannot read it"):
        load_pipeline(tmp_path / "nope.yaml")


def test_the_shipped_example_file_parses() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[3] / "examples" / "mail_pipeline.yaml"
    p = load_pipeline(example)
    assert [s.name for s in p.steps] == ["extract", "classify", "score", "summarize"]
    score = p.steps[2].job
    assert score.constraints.env_profile == "python-ml"
    assert score.constraints.accelerator == "cuda" and score.fallback == ("cpu",)
