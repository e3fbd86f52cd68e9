"""Originator side: the SDK client, job builders and results."""

from __future__ import annotations

from .client import Client, ClientConfig, CostEntry, CostReport, JobEvent, JobHandle
from .job import Job, JobResult
from .pipeline import Pipeline, PipelineBudgetExceeded, PipelineRun, Plan, StepFailed
from .sync import SyncClient

__all__ = [
    "Client",
    "ClientConfig",
    "CostEntry",
    "CostReport",
    "Job",
    "JobEvent",
    "JobHandle",
    "JobResult",
    "Pipeline",
    "PipelineBudgetExceeded",
    "PipelineRun",
    "Plan",
    "StepFailed",
    "SyncClient",
]
