"""crankmesh: a decentralized pub/sub bidding mesh over NATS.

Signed, content-addressed jobs, SLO-aware bids from self-benchmarked executors,
and hash-chained receipts anyone can audit.  See README.md and rfcs/.
"""

from __future__ import annotations

from .node import Node, NodeConfig
from .originator import Client, ClientConfig, CostReport, Job, JobHandle, JobResult, SyncClient
from .originator.pipeline import Pipeline, PipelineBudgetExceeded, PipelineRun, StepFailed
from .protocol.errors import (
    BidsDeclined,
    BudgetExceeded,
    CapabilityMismatch,
    ClientStateError,
    CrankmeshError,
    ExecutorsExhausted,
    JobFailed,
    JobTimeout,
    NoBids,
    NoCapacity,
    NoEligibleBid,
    NoSuitableExecutor,
    ProtocolError,
    SelectionError,
    TransportError,
)
from .protocol.identity import Identity

__version__ = "0.1.0"

__all__ = [
    "BidsDeclined",
    "BudgetExceeded",
    "CapabilityMismatch",
    "Client",
    "ClientConfig",
    "ClientStateError",
    "CostReport",
    "CrankmeshError",
    "ExecutorsExhausted",
    "Identity",
    "Job",
    "JobFailed",
    "JobHandle",
    "JobResult",
    "JobTimeout",
    "NoBids",
    "NoCapacity",
    "NoEligibleBid",
    "NoSuitableExecutor",
    "Node",
    "NodeConfig",
    "Pipeline",
    "PipelineBudgetExceeded",
    "PipelineRun",
    "ProtocolError",
    "SelectionError",
    "StepFailed",
    "SyncClient",
    "TransportError",
    "__version__",
]
