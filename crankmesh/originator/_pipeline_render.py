"""Pipeline plans and runs as a terminal tree, Mermaid, Graphviz DOT and JSON.  No I/O.

Mermaid (``flowchart LR``): one node per step (``s_<name>``, ``-`` as ``_``), one per
executor (``e<i>``, a rounded node labelled with its name and full DID), solid arrows
for data (step -> step), dotted arrows for candidates in a plan (``-.->``) and thick
arrows for what ran where in a run (``==>``, labelled with price and attempts).
DOT: the same graph as a ``digraph`` with quoted ids (``"step:<name>"``,
``"executor:<did>"``).  Labels escape what each syntax reserves.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import PipelineRun, Plan

__all__ = ["FORMATS", "render_plan", "render_run"]

FORMATS = ("tree", "mermaid", "dot", "json")


def _short(did: str) -> str:
    return did if len(did) <= 24 else f"{did[:14]}…{did[-6:]}"


def _us_ms(us: int | None) -> str:
    return "?" if us is None else f"{us / 1000:.1f} ms"


def _mermaid_text(text: str) -> str:
    return (
        text.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("\n", "<br/>")
    )


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------- plan


def render_plan(plan: Plan, fmt: str) -> str:
    _check(fmt)
    if fmt == "json":
        return json.dumps(plan.to_dict(), indent=2, sort_keys=True)
    executors: dict[str, str | None] = {}
    for s in plan.steps:
        for c in s.candidates:
            executors.setdefault(c.executor, c.name)
    if fmt == "tree":
        lines = [f"plan: {plan.pipeline} ({'ok' if plan.ok else 'MISMATCH'})"]
        for i, s in enumerate(plan.steps):
            last = i == len(plan.steps) - 1
            head, pad = ("└── ", "    ") if last else ("├── ", "│   ")
            src = ""
            if s.each:
                src += f" each {s.each}"
            if s.inputs:
                src += f" <- {', '.join(s.inputs)}"
            exp = s.expected
            expected = (
                f"expected {exp.price} µ{exp.currency}, p95 {_us_ms(exp.p95_us)} on "
                f"{exp.name or _short(exp.executor)}"
                if exp
                else f"MISMATCH: {s.mismatch}"
            )
            lines.append(f"{head}{s.step} [{s.capability}, policy {s.policy}]{src}: {expected}")
            for j, c in enumerate(s.candidates):
                mark = (f"✓ #{c.rank}" if c.rank else "✓") if c.compatible else "✗"
                why = "" if c.compatible else f" — {'; '.join(c.mismatches) or 'incompatible'}"
                local = " (local)" if c.local else ""
                lines.append(
                    f"{pad}{'└── ' if j == len(s.candidates) - 1 and not s.notes else '├── '}"
                    f"{mark} {c.accelerator}: {c.name or '-'} {c.executor}{local} "
                    f"{c.price} µ{c.currency} p95 {_us_ms(c.p95_us)}{why}"
                )
            for j, note in enumerate(s.notes):
                lines.append(f"{pad}{'└── ' if j == len(s.notes) - 1 else '├── '}note: {note}")
        return "\n".join(lines)
    edges = [(src, s.step) for s in plan.steps for src in ([s.each] if s.each else []) + [
        n for n in s.inputs if n != s.each
    ]]
    links = [
        (s.step, c.executor, f"{c.accelerator} {c.price} µ{c.currency}" if c.compatible
         else "incompatible")
        for s in plan.steps
        for c in s.candidates
    ]
    labels = {
        s.step: f"{s.step}\n{s.capability}" + (f"\neach {s.each}" if s.each else "")
        for s in plan.steps
    }
    return _graph(fmt, plan.pipeline, labels, executors, edges, links, run=False)


# ----------------------------------------------------------------------------- run


def render_run(run: PipelineRun, fmt: str) -> str:
    _check(fmt)
    if fmt == "json":
        return json.dumps(run.to_dict(), indent=2, sort_keys=True)
    by_step: dict[str, list[Any]] = {}
    for r in run.records:
        by_step.setdefault(r.step, []).append(r)
    if fmt == "tree":
        costs = run.costs()
        total = ", ".join(f"{v} µ{k}" for k, v in costs.total.items()) or "0"
        lines = [f"run {run.run_id}: {run.pipeline} — total {total}"]
        if run.budget_remaining is not None:
            lines[0] += f", budget left {run.budget_remaining} µ{run.budget_currency}"
        steps = list(by_step)
        for i, name in enumerate(steps):
            last = i == len(steps) - 1
            head, pad = ("└── ", "    ") if last else ("├── ", "│   ")
            recs = by_step[name]
            lines.append(f"{head}{name} [{recs[0].capability}]")
            for j, r in enumerate(recs):
                branch = "└── " if j == len(recs) - 1 else "├── "
                ename = run.executor_names.get(r.executor)
                who = f"{ename} {r.executor}" if ename else r.executor
                lines.append(
                    f"{pad}{branch}{r.key} -> {who} ({r.source}) {r.price} µ{r.currency} "
                    f"{r.latency_ms:.1f} ms, attempts {len(r.attempts) + 1}, "
                    f"receipt {r.receipt_cid}"
                )
                for note in r.attempts:
                    lines.append(f"{pad}{'    ' if j == len(recs) - 1 else '│   '}  · {note}")
        return "\n".join(lines)
    executors: dict[str, str | None] = {
        r.executor: run.executor_names.get(r.executor) for r in run.records
    }
    labels = {
        name: f"{name}\n{recs[0].capability}" + (f"\n{len(recs)} items" if recs[0].index is not
                                                  None else "")
        for name, recs in by_step.items()
    }
    for name in run.step_order:
        labels.setdefault(name, name)
    links = [
        (r.step, r.executor, f"{r.key}: {r.price} µ{r.currency}, {len(r.attempts) + 1} attempt(s)")
        for r in run.records
    ]
    return _graph(fmt, run.pipeline, labels, executors, list(run.edges), links, run=True)


# ----------------------------------------------------------------------------- graphs


def _mermaid_step_ids(names: dict[str, str]) -> dict[str, str]:
    """``s_<name>`` with ``-`` as ``_`` (Mermaid ids are word characters); a clash gets
    the step's position appended."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for i, name in enumerate(names):
        ident = "s_" + name.replace("-", "_")
        if ident in used:
            ident = f"{ident}_{i}"
        used.add(ident)
        out[name] = ident
    return out


def _graph(
    fmt: str,
    title: str,
    step_labels: dict[str, str],
    executors: dict[str, str | None],
    edges: list[tuple[str, str]],
    links: list[tuple[str, str, str]],
    *,
    run: bool,
) -> str:
    ex_ids = {did: f"e{i}" for i, did in enumerate(executors)}
    if fmt == "mermaid":
        sid = _mermaid_step_ids(step_labels)
        out = ["flowchart LR"]
        for name, label in step_labels.items():
            out.append(f'    {sid[name]}["{_mermaid_text(label)}"]')
        for did, ename in executors.items():
            label = f"{ename}\n{did}" if ename else did
            out.append(f'    {ex_ids[did]}("{_mermaid_text(label)}")')
        for a, b in edges:
            out.append(f"    {sid[a]} --> {sid[b]}")
        arrow = "==>" if run else "-.->"
        for step, did, label in links:
            out.append(f'    {sid[step]} {arrow}|"{_mermaid_text(label)}"| {ex_ids[did]}')
        return "\n".join(out) + "\n"
    # dot
    out = [f'digraph "{_dot_text(title)}" {{', "    rankdir=LR;"]
    for name, label in step_labels.items():
        out.append(f'    "step:{_dot_text(name)}" [shape=box, label="{_dot_text(label)}"];')
    for did, ename in executors.items():
        label = f"{ename}\n{did}" if ename else did
        out.append(
            f'    "executor:{_dot_text(did)}" [shape=ellipse, label="{_dot_text(label)}"];'
        )
    for a, b in edges:
        out.append(f'    "step:{_dot_text(a)}" -> "step:{_dot_text(b)}";')
    style = "bold" if run else "dashed"
    for step, did, label in links:
        out.append(
            f'    "step:{_dot_text(step)}" -> "executor:{_dot_text(did)}" '
            f'[style={style}, label="{_dot_text(label)}"];'
        )
    out.append("}")
    return "\n".join(out) + "\n"
