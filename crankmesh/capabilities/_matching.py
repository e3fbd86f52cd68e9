"""Matching requirements against an offer, with an explanation for every miss.

:func:`match` never raises for a mismatch; it returns a :class:`MatchResult`:

* ``COMPATIBLE`` — every required and every preferred item is met;
* ``DEGRADED`` — every required item is met, some preferred ones are not (``warnings`` says
  what to expect, e.g. running on CPU);
* ``INCOMPATIBLE`` — at least one required item is not met.

Each :class:`Mismatch` names the capability and reads like
``"needs memory_gb ≥ 32, executor has 16"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from crankmesh.protocol.errors import CapabilityMismatch

from ._errors import CapabilitySpecError
from ._offers import CapabilityOffer, GpuOffer
from ._registry import CapabilityRegistry, default_registry
from ._requirements import (
    CpuRequirement,
    GpuRequirement,
    NetworkRequirement,
    Requirements,
    RequirementSet,
    StorageRequirement,
)
from ._taxonomy import CodecNeed, CodecSupport
from ._versions import SpecifierSet, Version
from ._wire import FrozenWire, fmt_gb, thaw


class MatchOutcome(StrEnum):
    COMPATIBLE = "compatible"
    DEGRADED = "degraded"
    INCOMPATIBLE = "incompatible"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One unmet need.  ``capability`` is a dotted key such as ``memory_gb``, ``gpu.type``,
    ``codecs.h264`` or ``frameworks.pytorch``; ``required`` is False for a preference."""

    capability: str
    required: bool
    message: str

    def __str__(self) -> str:
        return self.message if self.required else f"{self.message} (preferred)"


@dataclass(frozen=True, slots=True)
class MatchResult:
    """The verdict of :func:`match`, with every reason."""

    outcome: MatchOutcome
    mismatches: tuple[Mismatch, ...] = ()
    warnings: tuple[str, ...] = ()
    preferred_met: int = 0
    preferred_total: int = 0

    @property
    def ok(self) -> bool:
        """True when the executor can run the job (compatible or degraded)."""
        return self.outcome is not MatchOutcome.INCOMPATIBLE

    @property
    def required_mismatches(self) -> tuple[Mismatch, ...]:
        return tuple(m for m in self.mismatches if m.required)

    @property
    def preferred_mismatches(self) -> tuple[Mismatch, ...]:
        return tuple(m for m in self.mismatches if not m.required)

    def explain(self) -> str:
        """A multi-line, human-readable account of the verdict."""
        if self.outcome is MatchOutcome.INCOMPATIBLE:
            n = len(self.required_mismatches)
            head = f"incompatible: {n} required capabilit{'y' if n == 1 else 'ies'} not met"
        elif self.outcome is MatchOutcome.DEGRADED:
            missed = self.preferred_total - self.preferred_met
            head = (
                f"degraded: every requirement is met, {missed} of {self.preferred_total} "
                "preferences are not"
            )
        else:
            head = "compatible: every requirement is met"
            if self.preferred_total:
                head += f", and all {self.preferred_total} preferences"
        lines = [head]
        for m in self.mismatches:
            tag = "required" if m.required else "preferred"
            lines.append(f"  - [{tag}] {m.capability}: {m.message}")
        lines.extend(f"  ! {w}" for w in self.warnings)
        return "\n".join(lines)

    def raise_for_incompatible(self, executor: str = "the executor") -> None:
        """Raise :class:`CapabilityMismatch` listing the unmet needs, if incompatible."""
        if not self.ok:
            raise CapabilityMismatch(
                f"{executor} cannot serve the requirements",
                [m.message for m in self.required_mismatches],
            )


def mismatch_error(results: Mapping[str, MatchResult]) -> CapabilityMismatch:
    """The error for "no compatible executor": every executor with every reason.

    ``results`` maps an executor name or DID to its match result.
    """
    details = [
        f"{executor}: {m.message}"
        for executor, result in results.items()
        for m in result.required_mismatches
    ]
    if not results:
        return CapabilityMismatch("no executor is available to match the requirements")
    return CapabilityMismatch(
        f"none of the {len(results)} executors considered can serve the requirements", details
    )


# --------------------------------------------------------------------------- match

_Miss = tuple[str, str]  # (capability, message)
_Check = tuple[str, Callable[[], list[_Miss]]]  # (item name, check)


def match(
    requirements: Requirements,
    offer: CapabilityOffer,
    *,
    registry: CapabilityRegistry | None = None,
) -> MatchResult:
    """Match a job's requirements against an executor's offer.

    Custom capability types are looked up in ``registry`` (default: :data:`default_registry`);
    a custom requirement this node cannot evaluate counts as unmet, with a message saying so.
    """
    reg = default_registry if registry is None else registry
    mismatches: list[Mismatch] = []
    for _, check in _checks(requirements.required, offer, reg):
        mismatches.extend(Mismatch(cap, True, msg) for cap, msg in check())
    warnings: list[str] = []
    pref_checks = _checks(requirements.preferred, offer, reg)
    met = 0
    for item, check in pref_checks:
        misses = check()
        if not misses:
            met += 1
            continue
        mismatches.extend(Mismatch(cap, False, msg) for cap, msg in misses)
        warnings.append(_warning(item, misses, offer))
    if any(m.required for m in mismatches):
        outcome = MatchOutcome.INCOMPATIBLE
    elif mismatches:
        outcome = MatchOutcome.DEGRADED
    else:
        outcome = MatchOutcome.COMPATIBLE
    return MatchResult(outcome, tuple(mismatches), tuple(warnings), met, len(pref_checks))


def _warning(item: str, misses: list[_Miss], offer: CapabilityOffer) -> str:
    if item == "gpu" and not offer.free_gpus:
        return "preferred gpu not available: running on CPU, expect degraded performance"
    reasons = "; ".join(msg for _, msg in misses)
    return f"preferred {item} not available ({reasons}): expect degraded performance"


def _checks(req: RequirementSet, offer: CapabilityOffer, reg: CapabilityRegistry) -> list[_Check]:
    """One (item, check) per requirement item, in a stable order."""
    checks: list[_Check] = []
    gpu, cpu, storage, network = req.gpu, req.cpu, req.storage, req.network
    if gpu is not None:
        checks.append(("gpu", lambda: _check_gpu(gpu, offer.gpus)))
    if cpu is not None:
        checks.append(("cpu", lambda: _check_cpu(cpu, offer)))
    if (memory := req.memory_mb) is not None:
        checks.append(("memory", lambda: _check_memory(memory, offer.memory_mb)))
    if storage is not None:
        checks.append(("storage", lambda: _check_storage(storage, offer)))
    if network is not None:
        checks.append(("network", lambda: _check_network(network, offer)))
    if req.regions:
        checks.append(("region", lambda: _check_region(req.regions, offer.network.region)))
    for codec, need in req.codecs.items():
        checks.append((f"codec {codec}", _bind(_check_codec, codec, need, offer.codecs)))
    for name, spec in req.frameworks.items():
        checks.append((name, _bind(_check_framework, name, spec, offer.frameworks)))
    if (isolation := req.isolation) is not None and isolation > offer.isolation:
        msg = f"needs isolation ≥ {isolation.token}, executor has {offer.isolation.token}"
        checks.append(("isolation", lambda: [("isolation", msg)]))
    elif isolation is not None:
        checks.append(("isolation", list))
    if (profile := req.env_profile) is not None:
        checks.append(("env_profile", lambda: _check_profile(profile, offer.env_profiles)))
    for name, value in req.extensions.items():
        checks.append((name, _bind(_check_extension, name, value, offer, reg)))
    return checks


def _bind(fn: Callable[..., list[_Miss]], *args: object) -> Callable[[], list[_Miss]]:
    return lambda: fn(*args)


# --------------------------------------------------------------------------- gpu


def _gpu_failures(req: GpuRequirement, gpu: GpuOffer) -> list[_Miss]:
    out: list[_Miss] = []
    if req.type is not None and gpu.type is not req.type:
        out.append(("gpu.type", f"needs gpu type {req.type.value}, executor has {gpu.label}"))
    if req.model is not None and req.model.lower() not in gpu.model.lower():
        have = repr(gpu.model) if gpu.model else "an unnamed model"
        msg = f"needs gpu model {req.model!r}, executor has {have} ({gpu.label})"
        out.append(("gpu.model", msg))
    if req.min_memory_mb is not None:
        avail = gpu.available_memory_mb
        if avail is None or avail < req.min_memory_mb:
            if avail is None:
                have = "unknown memory"
            elif gpu.free_memory_mb is not None and gpu.memory_mb != gpu.free_memory_mb:
                have = f"{fmt_gb(avail)} free of {fmt_gb(gpu.memory_mb or avail)}"
            else:
                have = fmt_gb(avail)
            out.append(
                (
                    "gpu.memory_gb",
                    f"needs gpu memory_gb ≥ {fmt_gb(req.min_memory_mb)}, "
                    f"executor has {have} ({gpu.label})",
                )
            )
    if req.min_compute_capability is not None:
        cc = gpu.compute_capability
        if cc is None or cc < req.min_compute_capability:
            out.append(
                (
                    "gpu.compute_capability",
                    f"needs gpu compute_capability ≥ {req.min_compute_capability}, "
                    f"executor has {cc if cc is not None else 'unknown'} ({gpu.label})",
                )
            )
    return out


def _check_gpu(req: GpuRequirement, gpus: tuple[GpuOffer, ...]) -> list[_Miss]:
    """Any ``req.count`` free GPUs that each meet every constraint."""
    if not gpus:
        return [("gpu", f"needs {req.describe()}, executor has none")]
    failures = {g.index: _gpu_failures(req, g) for g in gpus}
    fits = [g for g in gpus if not failures[g.index] and not g.busy]
    if len(fits) >= req.count:
        return []
    busy_fits = [g for g in gpus if not failures[g.index] and g.busy]
    if fits or busy_fits:
        if req.count == 1:
            which = ", ".join(g.label for g in busy_fits)
            return [("gpu", f"needs {req.describe()}, executor's matching GPU is busy ({which})")]
        return [
            (
                "gpu.count",
                f"needs {req.describe()}, executor has {len(fits)} free"
                + (f" and {len(busy_fits)} busy" if busy_fits else ""),
            )
        ]
    free = [g for g in gpus if not g.busy] or list(gpus)
    nearest = min(
        free, key=lambda g: (len(failures[g.index]), -(g.available_memory_mb or 0), g.index)
    )
    return failures[nearest.index]


# --------------------------------------------------------------------------- the rest


def _check_cpu(req: CpuRequirement, offer: CapabilityOffer) -> list[_Miss]:
    out: list[_Miss] = []
    cores, need = offer.cpu.cores, req.min_cores
    if need is not None and (cores is None or cores < need):
        have = "unknown" if cores is None else str(cores)
        out.append(("cpu.cores", f"needs cpu cores ≥ {need}, executor has {have}"))
    if req.arch is not None and offer.cpu.arch != req.arch:
        have = offer.cpu.arch or "unknown"
        out.append(("cpu.arch", f"needs cpu arch {req.arch}, executor has {have}"))
    missing = [x for x in req.features if x not in offer.cpu.features]
    if missing:
        out.append(
            ("cpu.features", f"needs cpu features {', '.join(missing)}, executor lacks them")
        )
    return out


def _check_memory(need_mb: int, have_mb: int | None) -> list[_Miss]:
    if have_mb is not None and have_mb >= need_mb:
        return []
    have = "unknown" if have_mb is None else fmt_gb(have_mb)
    return [("memory_gb", f"needs memory_gb ≥ {fmt_gb(need_mb)}, executor has {have}")]


def _check_storage(req: StorageRequirement, offer: CapabilityOffer) -> list[_Miss]:
    out: list[_Miss] = []
    free, need = offer.storage.free_mb, req.min_free_mb
    if need is not None and (free is None or free < need):
        have = "unknown" if free is None else fmt_gb(free)
        msg = f"needs storage free_gb ≥ {fmt_gb(need)}, executor has {have}"
        out.append(("storage.free_gb", msg))
    stype = offer.storage.type
    if req.min_type is not None and (stype is None or stype < req.min_type):
        have = "unknown" if stype is None else stype.token
        out.append(
            ("storage.type", f"needs storage type ≥ {req.min_type.token}, executor has {have}")
        )
    return out


def _check_network(req: NetworkRequirement, offer: CapabilityOffer) -> list[_Miss]:
    out: list[_Miss] = []
    bw = offer.network.bandwidth_mbps
    if req.min_bandwidth_mbps is not None and (bw is None or bw < req.min_bandwidth_mbps):
        have = "unknown" if bw is None else str(bw)
        out.append(
            (
                "network.bandwidth_mbps",
                f"needs network bandwidth_mbps ≥ {req.min_bandwidth_mbps}, executor has {have}",
            )
        )
    if req.egress is True and not offer.network.egress:
        out.append(("network.egress", "needs network egress, executor does not allow it"))
    if req.egress is False and offer.network.egress:
        out.append(("network.egress", "needs network egress blocked, executor allows it"))
    return out


def _check_region(regions: tuple[str, ...], have: str | None) -> list[_Miss]:
    if have is not None and any(have == r or have.startswith(r + "-") for r in regions):
        return []
    where = f"is in {have}" if have is not None else "does not advertise a region"
    return [("region", f"needs region {' or '.join(regions)}, executor {where}")]


def _check_codec(codec: str, need: CodecNeed, have: Mapping[str, CodecSupport]) -> list[_Miss]:
    support = have.get(codec)
    if support is None:
        suffix = " (hardware)" if need is CodecNeed.HARDWARE else ""
        return [(f"codecs.{codec}", f"needs codec {codec}{suffix}, executor does not support it")]
    if need is CodecNeed.HARDWARE and support is not CodecSupport.HARDWARE:
        return [(f"codecs.{codec}", f"needs codec {codec} (hardware), executor has software only")]
    return []


def _check_framework(name: str, spec: SpecifierSet, have: Mapping[str, str]) -> list[_Miss]:
    cap = f"frameworks.{name}"
    wanted = f"{name} {spec}" if spec else name
    installed = have.get(name)
    if installed is None:
        return [(cap, f"needs {wanted}, executor does not have {name}")]
    if not spec:
        return []
    try:
        version = Version.parse(installed)
    except CapabilitySpecError:
        return [(cap, f"needs {wanted}, executor has {installed!r}, which is not a version")]
    if spec.contains(version):
        return []
    return [(cap, f"needs {wanted}, executor has {installed}")]


def _check_profile(profile: str, have: Iterable[str]) -> list[_Miss]:
    profiles = tuple(have)
    if profile in profiles:
        return []
    listed = ", ".join(profiles) if profiles else "none"
    return [("env_profile", f"needs env_profile {profile}, executor has {listed}")]


def _check_extension(
    name: str, value: FrozenWire, offer: CapabilityOffer, reg: CapabilityRegistry
) -> list[_Miss]:
    matcher = reg.get(name)
    if matcher is None:
        return [(name, f"needs {name}, a capability type this node has no matcher for")]
    if name not in offer.extensions:
        return [(name, f"needs {name}, executor does not advertise it")]
    try:
        requirement = matcher.parse_requirement(thaw(value))
    except (ValueError, TypeError) as exc:
        return [(name, f"needs {name}, but the requirement is invalid: {exc}")]
    try:
        have = matcher.parse_offer(thaw(offer.extensions[name]))
    except (ValueError, TypeError) as exc:
        return [(name, f"needs {name}, but the executor's {name} offer is invalid: {exc}")]
    return [(name, str(msg)) for msg in matcher.match(requirement, have)]
