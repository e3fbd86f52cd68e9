"""Metric names the Prometheus way, RFC 0022 aliases, and log facts as fields."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from crankmesh.observability import RFC0022_ALIASES, Metrics, configure_logging


def _families(metrics: Metrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    text = generate_latest(metrics.registry).decode()
    return {
        f.name: [(s.name, s.labels, s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def test_every_crankmesh_metric_is_prefixed_and_counters_end_in_total() -> None:
    metrics = Metrics()
    own = [
        m
        for m in vars(metrics).values()
        if hasattr(m, "_name") and hasattr(m, "_type")  # the prometheus_client metrics
    ]
    assert len(own) >= 18  # every one of them, however many, is checked below
    for metric in own:
        assert metric._name.startswith("crankmesh_"), metric._name
    names = set(_families(metrics))
    assert {"process_resident_memory_bytes", "process_cpu_seconds", "python_info"} <= names
    unprefixed = {n for n in names if not n.startswith(("crankmesh_", "process_", "python_"))}
    assert unprefixed == set(RFC0022_ALIASES)


def test_rfc0022_aliases_follow_the_crankmesh_counters() -> None:
    metrics = Metrics()
    metrics.job_bids.labels(capability="echo").inc(2)
    metrics.assignments.labels(outcome="accepted").inc()
    metrics.assignments.labels(outcome="stale").inc(4)
    metrics.execution_start.labels(capability="python.run").inc(3)
    fams = _families(metrics)
    for alias, source in RFC0022_ALIASES.items():
        ours = {(tuple(lab.items()), v) for n, lab, v in fams[source] if n.endswith("_total")}
        theirs = {(tuple(lab.items()), v) for n, lab, v in fams[alias]}
        assert ours == theirs and ours, alias
    assert ("job_bids_total", {"capability": "echo"}, 2.0) in fams["job_bids"]
    assert ("assignments_total", {"outcome": "stale"}, 4.0) in fams["assignments"]


def test_two_nodes_in_one_process_have_separate_registries() -> None:
    a, b = Metrics(), Metrics()
    a.job_bids.labels(capability="echo").inc()
    assert _families(b)["crankmesh_job_bids"] == []


@pytest.fixture
def captured_json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    try:
        configure_logging(json=True, level="INFO")
        yield out
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        structlog.reset_defaults()


def test_json_logs_carry_extra_fields_beside_the_event(captured_json_logs: io.StringIO) -> None:
    logging.getLogger("crankmesh.executor").info(
        "job finished",
        extra={"status": "ok", "duration_ms": 1.5, "receipt_cid": "bafyx", "peer": "did:key:z"},
    )
    line = json.loads(captured_json_logs.getvalue().strip().splitlines()[-1])
    assert line["event"] == "job finished"
    assert (line["status"], line["duration_ms"], line["receipt_cid"], line["peer"]) == (
        "ok",
        1.5,
        "bafyx",
        "did:key:z",
    )
    assert line["logger"] == "crankmesh.executor" and line["level"] == "info"
