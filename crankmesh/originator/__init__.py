"""Originator side: the SDK client, job builders and results."""

from __future__ import annotations

from .client import Client, ClientConfig
from .job import Job, JobResult

__all__ = ["Client", "ClientConfig", "Job", "JobResult"]
