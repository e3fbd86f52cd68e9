"""Metrics and logging set-up.

Each :class:`Metrics` owns its own Prometheus ``CollectorRegistry`` so that
several nodes can live in one process (tests, the demo) without colliding.
Metric names follow the Prometheus conventions: a ``crankmesh_`` prefix, counters end in
``_total``, units in the name (``crankmesh_job_seconds``).  The registry also holds the
process, platform and GC collectors of ``prometheus_client`` (``process_resident_memory_bytes``,
``python_info``, ...).  RFC 0022 §7's three names (``job_bids_total``, ``assignments_total``,
``execution_start_total``) are exported as documented aliases, computed from the crankmesh
counters when scraped (no cost on the hot path).

Log lines carry their facts as fields (``status``, ``duration_ms``, ``receipt_cid``, ``peer``,
``capability``, ...) passed as ``extra=``; :func:`configure_logging` puts them in the JSON (or
console) output next to the ``event``.

The library never configures logging; :func:`configure_logging` is called by
the daemon and the CLI only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram
from prometheus_client.metrics_core import CounterMetricFamily, Metric

__all__ = [
    "METRIC_PREFIX",
    "RFC0022_ALIASES",
    "TRACE_HEADER",
    "Metrics",
    "configure_logging",
    "default_trace",
    "log_enabled",
    "trace_headers",
    "trace_of",
]

#: The namespace of every crankmesh metric.
METRIC_PREFIX = "crankmesh"

#: RFC 0022 §7 metric names (without ``_total``) and the crankmesh counter each one mirrors.
RFC0022_ALIASES: dict[str, str] = {
    "job_bids": "crankmesh_job_bids",
    "assignments": "crankmesh_assignments",
    "execution_start": "crankmesh_executions_started",
}

#: NATS header carrying a job's trace id from the originator to every node it touches.
TRACE_HEADER = "Crank-Trace"


def default_trace(job_cid: str) -> str:
    """A job's trace id when its originator chose none: the last 16 characters of
    the job CID (RFC 0001 §9.1).  Every node can compute it, so it needs no header."""
    return job_cid[-16:]


def trace_headers(trace: str, job_cid: str) -> dict[str, str] | None:
    """The NATS headers that carry ``trace``: none for the default trace id."""
    return None if not trace or trace == job_cid[-16:] else {TRACE_HEADER: trace}


def trace_of(msg: Any) -> str:
    """The trace id a NATS message carries (empty when none, or malformed)."""
    headers = getattr(msg, "headers", None)
    if not headers:
        return ""
    value = headers.get(TRACE_HEADER, "")
    return value if isinstance(value, str) and len(value) <= 64 and value.isalnum() else ""


_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class _MemoLabels:
    """``labels()`` memoised per label values: prometheus_client validates the
    values and takes a lock on every call, a cost paid several times per job."""

    _memo: dict[tuple[tuple[Any, ...], tuple[tuple[str, Any], ...]], Any]

    def labels(self, *values: Any, **kwargs: Any) -> Any:
        key = (values, tuple(kwargs.items()))
        try:
            return self._memo[key]
        except AttributeError:
            self._memo = {}
        except KeyError:
            pass
        child = super().labels(*values, **kwargs)  # type: ignore[misc]
        if len(self._memo) < 4096:  # label values are bounded tokens; stay bounded anyway
            self._memo[key] = child
        return child


class Counter(_MemoLabels, _Counter):
    pass


class Gauge(_MemoLabels, _Gauge):
    pass


class Histogram(_MemoLabels, _Histogram):
    pass


_NS = METRIC_PREFIX


class _Rfc0022Aliases:
    """Exports RFC 0022 §7's unprefixed counters as copies of crankmesh's own, at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._sources: dict[str, tuple[Counter, tuple[str, ...]]] = {
            "job_bids": (metrics.job_bids, ("capability",)),
            "assignments": (metrics.assignments, ("outcome",)),
            "execution_start": (metrics.execution_start, ("capability",)),
        }

    def describe(self) -> list[Metric]:
        return [
            CounterMetricFamily(alias, f"RFC 0022 alias of {RFC0022_ALIASES[alias]}_total")
            for alias in self._sources
        ]

    def collect(self) -> Iterator[Metric]:
        for alias, (counter, labels) in self._sources.items():
            family = CounterMetricFamily(
                alias, f"RFC 0022 alias of {RFC0022_ALIASES[alias]}_total", labels=labels
            )
            for metric in counter.collect():
                for sample in metric.samples:
                    if sample.name.endswith("_total"):
                        family.add_metric([sample.labels[n] for n in labels], sample.value)
            yield family


class Metrics:
    """The Prometheus metrics of one node (executor and originator sides)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, _cpu_seconds_total, ...
        PlatformCollector(registry=r)  # python_info
        GCCollector(registry=r)  # python_gc_* (where the interpreter has gc.get_stats)
        # executor side
        self.job_bids = Counter(
            "job_bids",
            "Bids published by this node's executor",
            ["capability"],
            namespace=_NS,
            registry=r,
        )
        self.announces_seen = Counter(
            "announces_seen",
            "Valid announcements received",
            ["capability"],
            namespace=_NS,
            registry=r,
        )
        self.bids_declined = Counter(
            "bids_declined",
            "Announcements this executor did not bid on",
            ["reason"],
            namespace=_NS,
            registry=r,
        )
        self.assignments = Counter(
            "assignments",
            "Assignments received for our bids, by outcome",
            ["outcome"],
            namespace=_NS,
            registry=r,
        )
        self.execution_start = Counter(
            "executions_started",
            "Jobs whose execution started",
            ["capability"],
            namespace=_NS,
            registry=r,
        )
        self.receipts = Counter(
            "receipts", "Receipts published, by status", ["status"], namespace=_NS, registry=r
        )
        self.rejections = Counter(
            "rejections",
            "Inbound messages dropped, by subject kind and reason",
            ["kind", "reason"],
            namespace=_NS,
            registry=r,
        )
        self.running = Gauge("jobs_running", "Jobs executing now", namespace=_NS, registry=r)
        self.reserved = Gauge(
            "slots_reserved", "Capacity reserved by outstanding bids", namespace=_NS, registry=r
        )
        self.execution_seconds = Histogram(
            "execution_seconds",
            "Job execution wall time",
            ["capability"],
            buckets=_LATENCY_BUCKETS,
            namespace=_NS,
            registry=r,
        )
        # originator side
        self.jobs_submitted = Counter(
            "jobs_submitted",
            "Jobs announced by this node's originator",
            ["capability"],
            namespace=_NS,
            registry=r,
        )
        self.jobs_completed = Counter(
            "jobs_completed",
            "Jobs that ended with a verified receipt, by status",
            ["status"],
            namespace=_NS,
            registry=r,
        )
        self.jobs_failed = Counter(
            "jobs_failed",
            "Jobs that ended without a usable receipt, by reason",
            ["reason"],
            namespace=_NS,
            registry=r,
        )
        self.assignments_sent = Counter(
            "assignments_sent",
            "Assignments published by this originator",
            namespace=_NS,
            registry=r,
        )
        self.reassignments = Counter(
            "reassignments",
            "Assignments retried on another executor, by cause",
            ["cause"],
            namespace=_NS,
            registry=r,
        )
        self.bid_window_seconds = Histogram(
            "bid_window_seconds",
            "Time from announce to bid-window close",
            buckets=_LATENCY_BUCKETS,
            namespace=_NS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "job_seconds",
            "End-to-end job latency seen by the originator",
            ["capability"],
            buckets=_LATENCY_BUCKETS,
            namespace=_NS,
            registry=r,
        )
        self.directory_size = Gauge(
            "directory_peers", "Live peers in the advert directory", namespace=_NS, registry=r
        )
        self.handed_back = Counter(
            "jobs_handed_back",
            "Accepted jobs fenced and handed back instead of delivered (RFC 0001 §10.7)",
            ["cause"],
            namespace=_NS,
            registry=r,
        )
        self.table_entries = Gauge(
            "table_entries",
            "Entries held in each bounded table or cache",
            ["table"],
            namespace=_NS,
            registry=r,
        )
        self.table_bytes = Gauge(
            "table_bytes",
            "Bytes held in each bounded table or cache",
            ["table"],
            namespace=_NS,
            registry=r,
        )

        r.register(_Rfc0022Aliases(self))
        self.misbehaviour = Counter(
            "executor_misbehaviour",
            "Executor misbehaviour this originator detected and priced in reputation, by kind",
            ["kind"],
            namespace=_NS,
            registry=r,
        )

    def reject(self, kind: str, reason: str) -> None:
        self.rejections.labels(kind=kind, reason=reason).inc()

    def rejection_count(self, kind: str | None = None, reason: str | None = None) -> float:
        """Sum of rejections matching the given labels (for tests and `top`)."""
        total = 0.0
        for metric in self.rejections.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                if kind is not None and sample.labels.get("kind") != kind:
                    continue
                if reason is not None and sample.labels.get("reason") != reason:
                    continue
                total += sample.value
        return total


def log_enabled(logger: logging.Logger, level: int = logging.DEBUG) -> bool:
    return logger.isEnabledFor(level)


def configure_logging(*, json: bool = False, level: str | int = "INFO") -> None:
    """Route stdlib logging through structlog: JSON lines or a console renderer."""
    import structlog

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),  # the fields of ``log.info(..., extra={...})``
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _identity(_: Any, __: str, event: Any) -> Any:
    return event
