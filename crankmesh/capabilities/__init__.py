"""Capability-based scheduling, the pure part: taxonomy, offers, requirements, matching.

No I/O.  Executors describe what they have as a :class:`CapabilityOffer`; jobs say what they
need as :class:`Requirements`; :func:`match` compares the two and explains every miss.  Both
models read the human shapes of seed 003 (``{"gpu": {"type": "cuda", "min_memory_gb": 8}}``)
and travel in a canonical, float-free wire form (``to_wire()`` / ``from_wire()``).  Custom
capability types plug in through a :class:`CapabilityRegistry`.

Errors: malformed input raises :class:`CapabilitySpecError` (a :class:`ValueError`);
:meth:`MatchResult.raise_for_incompatible` and :func:`mismatch_error` give
:class:`~crankmesh.protocol.errors.CapabilityMismatch`.
"""

from __future__ import annotations

from ._errors import CapabilitySpecError
from ._matching import MatchOutcome, MatchResult, Mismatch, match, mismatch_error
from ._offers import CapabilityOffer, CpuOffer, GpuOffer, NetworkOffer, StorageOffer
from ._registry import (
    CapabilityMatcher,
    CapabilityRegistry,
    default_registry,
    register_capability_type,
)
from ._requirements import (
    CpuRequirement,
    GpuRequirement,
    NetworkRequirement,
    Requirements,
    RequirementSet,
    StorageRequirement,
)
from ._taxonomy import (
    STANDARD_TYPES,
    CodecNeed,
    CodecSupport,
    ComputeCapability,
    GpuType,
    IsolationLevel,
    StorageType,
)
from ._versions import Specifier, SpecifierSet, Version
from ._wire import WireValue

__all__ = [
    "CapabilityMatcher",
    "CapabilityOffer",
    "CapabilityRegistry",
    "CapabilitySpecError",
    "CodecNeed",
    "CodecSupport",
    "ComputeCapability",
    "CpuOffer",
    "CpuRequirement",
    "GpuOffer",
    "GpuRequirement",
    "GpuType",
    "IsolationLevel",
    "MatchOutcome",
    "MatchResult",
    "Mismatch",
    "NetworkOffer",
    "NetworkRequirement",
    "RequirementSet",
    "Requirements",
    "STANDARD_TYPES",
    "Specifier",
    "SpecifierSet",
    "StorageOffer",
    "StorageRequirement",
    "StorageType",
    "Version",
    "WireValue",
    "default_registry",
    "match",
    "mismatch_error",
    "register_capability_type",
]
