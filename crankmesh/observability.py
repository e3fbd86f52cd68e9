"""Metrics and logging set-up.

Each :class:`Metrics` owns its own Prometheus ``CollectorRegistry`` so that
several nodes can live in one process (tests, the demo) without colliding.
Metric names follow RFC 0022 §7 (``job_bids_total``, ``assignments_total``,
``execution_start_total``) plus crankmesh's own.

The library never configures logging; :func:`configure_logging` is called by
the daemon and the CLI only.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram

__all__ = [
    "TRACE_HEADER",
    "Metrics",
    "configure_logging",
    "default_trace",
    "log_enabled",
    "trace_headers",
    "trace_of",
]

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


class Metrics:
    """The Prometheus metrics of one node (executor and originator sides)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # executor side
        self.job_bids = Counter(
            "job_bids", "Bids published by this node's executor", ["capability"], registry=r
        )
        self.announces_seen = Counter(
            "announces_seen", "Valid announcements received", ["capability"], registry=r
        )
        self.bids_declined = Counter(
            "bids_declined", "Announcements this executor did not bid on", ["reason"], registry=r
        )
        self.assignments = Counter(
            "assignments",
            "Assignments received for our bids, by outcome",
            ["outcome"],
            registry=r,
        )
        self.execution_start = Counter(
            "execution_start", "Jobs whose execution started", ["capability"], registry=r
        )
        self.receipts = Counter("receipts", "Receipts published, by status", ["status"], registry=r)
        self.rejections = Counter(
            "rejections",
            "Inbound messages dropped, by subject kind and reason",
            ["kind", "reason"],
            registry=r,
        )
        self.running = Gauge("jobs_running", "Jobs executing now", registry=r)
        self.reserved = Gauge("slots_reserved", "Capacity reserved by outstanding bids", registry=r)
        self.execution_seconds = Histogram(
            "execution_seconds",
            "Job execution wall time",
            ["capability"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # originator side
        self.jobs_submitted = Counter(
            "jobs_submitted",
            "Jobs announced by this node's originator",
            ["capability"],
            registry=r,
        )
        self.jobs_completed = Counter(
            "jobs_completed",
            "Jobs that ended with a verified receipt, by status",
            ["status"],
            registry=r,
        )
        self.jobs_failed = Counter(
            "jobs_failed",
            "Jobs that ended without a usable receipt, by reason",
            ["reason"],
            registry=r,
        )
        self.assignments_sent = Counter(
            "assignments_sent", "Assignments published by this originator", registry=r
        )
        self.reassignments = Counter(
            "reassignments",
            "Assignments retried on another executor, by cause",
            ["cause"],
            registry=r,
        )
        self.bid_window_seconds = Histogram(
            "bid_window_seconds",
            "Time from announce to bid-window close",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "job_seconds",
            "End-to-end job latency seen by the originator",
            ["capability"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.directory_size = Gauge(
            "directory_peers", "Live peers in the advert directory", registry=r
        )
        self.handed_back = Counter(
            "jobs_handed_back",
            "Accepted jobs fenced and handed back instead of delivered (RFC 0001 §10.7)",
            ["cause"],
            registry=r,
        )
        self.table_entries = Gauge(
            "table_entries", "Entries held in each bounded table or cache", ["table"], registry=r
        )
        self.table_bytes = Gauge(
            "table_bytes", "Bytes held in each bounded table or cache", ["table"], registry=r
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
