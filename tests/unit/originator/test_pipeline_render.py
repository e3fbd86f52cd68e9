"""Plans and runs rendered as tree, Mermaid, DOT and JSON -- each checked by a parser."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import warnings

import pytest

from crankmesh.originator.pipeline import (
    PipelineRun,
    Plan,
    PlanCandidate,
    StepPlan,
    StepRecord,
)

DID_A = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
DID_B = "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH"

_ID = r"[A-Za-z][A-Za-z0-9_]*"
_LABEL = r'"[^"]*"'
_MERMAID_LINE = [
    re.compile(rf"^\s*({_ID})\[{_LABEL}\]$"),
    re.compile(rf"^\s*({_ID})\({_LABEL}\)$"),
    re.compile(rf"^\s*({_ID}) --> ({_ID})$"),
    re.compile(rf"^\s*({_ID}) (?:-\.->|==>)\|{_LABEL}\| ({_ID})$"),
]


def parse_mermaid(text: str) -> tuple[set[str], list[tuple[str, str]], list[str]]:
    """A strict parser of the flowchart subset crankmesh emits: every line must be a
    node definition or an edge; edges may only join defined nodes."""
    lines = text.strip().splitlines()
    assert lines[0] == "flowchart LR"
    nodes: set[str] = set()
    edges: list[tuple[str, str]] = []
    labels: list[str] = []
    for line in lines[1:]:
        found = [(i, m) for i, rx in enumerate(_MERMAID_LINE) if (m := rx.match(line))]
        assert found, f"not a Mermaid node or edge: {line!r}"
        i, m = found[0]
        labels.extend(re.findall(r'"([^"]*)"', line))
        if i < 2:
            assert m.group(1) not in nodes, f"node {m.group(1)} defined twice"
            nodes.add(m.group(1))
        else:
            assert m.group(1) in nodes and m.group(2) in nodes, line
            edges.append((m.group(1), m.group(2)))
    return nodes, edges, labels


def check_dot(text: str) -> None:
    pydot = pytest.importorskip("pydot", reason="pydot (dev extra) is not installed")
    with warnings.catch_warnings():  # pydot 4 calls pyparsing's deprecated camelCase names
        warnings.simplefilter("ignore", DeprecationWarning)
        graphs = pydot.graph_from_dot_data(text)
    assert graphs and len(graphs) == 1
    if shutil.which("dot"):
        proc = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def sample_plan() -> Plan:
    def cand(did: str, name: str, ok: bool = True) -> PlanCandidate:
        return PlanCandidate(
            executor=did, name=name, accelerator="cpu", compatible=ok, price=1000,
            currency="USD", p95_us=1500, local=False,
            mismatches=() if ok else ('memory_gb: needs 32, has 16 "big"',),
        )

    return Plan(
        "mail",
        (
            StepPlan("extract", "python.run", (), None, "cost", ("cpu",),
                     (cand(DID_A, "a"), cand(DID_B, "b", ok=False))),
            StepPlan("classify", "email.classify.spam-v1", (), "extract", "cost", ("cpu",),
                     (cand(DID_B, "b"),)),
            StepPlan("nobody", "x.y", ("classify",), None, "cost", ("gpu", "cpu"), ()),
        ),
    )


def sample_run() -> PipelineRun:
    def rec(key: str, step: str, i: int | None, did: str) -> StepRecord:
        return StepRecord(
            key=key, step=step, index=i, capability="python.run", step_cid="bstep",
            job_cid="bjob" + key, executor=did, attempts=(), price=1000, currency="USD",
            latency_ms=3.5, receipt_cid="brec" + key, result_cid="bres", inputs={},
            source="run",
        )

    return PipelineRun(
        pipeline='mail "x"',
        pipeline_cid="bpipe",
        run_id="r1",
        records=[rec("extract", "extract", None, DID_A), rec("classify[0]", "classify", 0, DID_B),
                 rec("classify[1]", "classify", 1, DID_A)],
        values={},
        step_order=("extract", "classify"),
        edges=(("extract", "classify"),),
    )


def test_plan_mermaid_is_well_formed_and_names_every_step_and_executor() -> None:
    text = sample_plan().render("mermaid")
    nodes, edges, labels = parse_mermaid(text)
    assert {"s_extract", "s_classify", "s_nobody"} <= nodes
    assert ("s_extract", "s_classify") in edges and ("s_classify", "s_nobody") in edges
    joined = " ".join(labels)
    assert DID_A in joined and DID_B in joined


def test_plan_dot_parses_and_names_every_step_and_executor() -> None:
    text = sample_plan().render("dot")
    check_dot(text)
    for name in ("step:extract", "step:classify", "step:nobody", f"executor:{DID_A}"):
        assert f'"{name}"' in text


def test_plan_tree_and_json_show_candidates_prices_and_the_mismatch() -> None:
    plan = sample_plan()
    tree = plan.render("tree")
    assert "MISMATCH: no live executor offers x.y" in tree
    assert "expected 1000 µUSD, p95 1.5 ms on a" in tree
    assert "needs 32, has 16" in tree
    doc = json.loads(plan.render("json"))
    assert doc["ok"] is False
    assert [s["step"] for s in doc["steps"]] == ["extract", "classify", "nobody"]
    assert doc["steps"][0]["expected_executor"] == DID_A


def test_run_renders_mapping_in_every_format() -> None:
    run = sample_run()
    nodes, edges, labels = parse_mermaid(run.render("mermaid"))
    assert {"s_extract", "s_classify", "e0", "e1"} <= nodes
    assert len(edges) == 1 + 3  # the data edge, and one "ran on" edge per unit
    check_dot(run.render("dot"))
    tree = run.render("tree")
    assert "classify[1] -> " + DID_A in tree and "receipt brecclassify[0]" in tree
    doc = json.loads(run.render("json"))
    assert doc["costs"]["total"] == {"USD": 3000}


def test_step_names_with_dashes_get_distinct_mermaid_ids() -> None:
    run = sample_run()
    run.records = [dataclasses.replace(r, step="a-b") for r in run.records[:1]] + [
        dataclasses.replace(r, step="a_b") for r in run.records[1:]
    ]
    run.step_order = ("a-b", "a_b")
    run.edges = (("a-b", "a_b"),)
    nodes, edges, _ = parse_mermaid(run.render("mermaid"))
    assert {"s_a_b", "s_a_b_1"} <= nodes and ("s_a_b", "s_a_b_1") in edges
    check_dot(run.render("dot"))


def test_unknown_format_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="use one of tree, mermaid, dot, json"):
        sample_plan().render("svg")
