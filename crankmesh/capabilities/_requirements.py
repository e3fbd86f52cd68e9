"""What a job needs: requirements, each required (the default) or only preferred.

Human input (:meth:`Requirements.parse`) accepts the seed's shapes as written::

    {"gpu": {"type": "cuda", "min_memory_gb": 8}}
    {"cpu": {"cores": 4}, "memory_gb": 16}
    {"codecs": ["h264", "vp9"], "hardware_accel": true}
    {"gpu": {"required": false, "preferred": true}}
    {"frameworks": {"pytorch": ">=2.1,<3"}, "isolation": "strict"}

Preferred items go either inline (``"required": false`` inside a ``gpu``/``cpu``/``storage``/
``network`` map) or under a ``"preferred"`` map of the same shape, which works for every key::

    {"memory_gb": 16, "preferred": {"memory_gb": 64, "region": "eu-west"}}

The wire form is canonical: integer MiB, no floats, no shorthands; preferred items always sit
under ``"preferred"``.  Every capability type is listed in the module docstring of
:mod:`crankmesh.capabilities._taxonomy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ._common import build, check_extension, extension_name, freeze_extensions, setattr_frozen
from ._errors import CapabilitySpecError
from ._registry import CapabilityRegistry, default_registry
from ._taxonomy import (
    CodecNeed,
    ComputeCapability,
    GpuType,
    IsolationLevel,
    StorageType,
    arch_name,
    codec_name,
    framework_name,
    plain_name,
    profile_name,
)
from ._versions import SpecifierSet
from ._wire import (
    Fields,
    FrozenMap,
    FrozenWire,
    WireValue,
    as_bool,
    as_int,
    as_list,
    as_size_mb,
    as_str,
    fmt_gb,
    freeze,
    join,
    kind,
    thaw,
    unknown_key,
)


def _opt_int(value: int | None, name: str, minimum: int = 0) -> int | None:
    return None if value is None else as_int(value, name, strict=True, minimum=minimum)


@dataclass(frozen=True, slots=True)
class GpuRequirement:
    """A GPU the job needs: all fields optional; an empty one means "any GPU".

    ``model`` is a case-insensitive substring of the advertised model (``"4090"``);
    ``count`` distinct free GPUs must each satisfy every constraint.
    """

    type: GpuType | None = None
    model: str | None = None
    min_memory_mb: int | None = None
    min_compute_capability: ComputeCapability | None = None
    count: int = 1

    def __post_init__(self) -> None:
        if self.type is not None:
            setattr_frozen(self, "type", GpuType.parse(self.type))
        if self.model is not None:
            setattr_frozen(self, "model", as_str(self.model, "model"))
        _opt_int(self.min_memory_mb, "min_memory_mb")
        if self.min_compute_capability is not None:
            setattr_frozen(
                self,
                "min_compute_capability",
                ComputeCapability.parse(self.min_compute_capability, "min_compute_capability"),
            )
        as_int(self.count, "count", strict=True, minimum=1)

    def describe(self) -> str:
        """``"gpu type cuda with memory_gb ≥ 8 and compute_capability ≥ 8.0"``."""
        head = "gpu" if self.count == 1 else f"{self.count} × gpu"
        if self.type is not None:
            head += f" type {self.type.value}"
        parts = []
        if self.model is not None:
            parts.append(f"model {self.model!r}")
        if self.min_memory_mb is not None:
            parts.append(f"memory_gb ≥ {fmt_gb(self.min_memory_mb)}")
        if self.min_compute_capability is not None:
            parts.append(f"compute_capability ≥ {self.min_compute_capability}")
        if parts:
            return f"{head} with {' and '.join(parts)}"
        return "a gpu" if head == "gpu" else head

    def to_wire(self) -> dict[str, WireValue]:
        out: dict[str, WireValue] = {}
        if self.type is not None:
            out["type"] = self.type.value
        if self.model is not None:
            out["model"] = self.model
        if self.min_memory_mb is not None:
            out["min_memory_mb"] = self.min_memory_mb
        if self.min_compute_capability is not None:
            out["min_compute_capability"] = str(self.min_compute_capability)
        if self.count != 1:
            out["count"] = self.count
        return out


@dataclass(frozen=True, slots=True)
class CpuRequirement:
    """Minimum logical cores, an architecture, and CPU features that must all be present."""

    min_cores: int | None = None
    arch: str | None = None
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _opt_int(self.min_cores, "cores")
        if self.arch is not None:
            setattr_frozen(self, "arch", arch_name(self.arch, "arch"))
        feats = {
            plain_name(x, f"features[{i}]", "cpu feature") for i, x in enumerate(self.features)
        }
        setattr_frozen(self, "features", tuple(sorted(feats)))

    def to_wire(self) -> dict[str, WireValue]:
        out: dict[str, WireValue] = {}
        if self.min_cores is not None:
            out["cores"] = self.min_cores
        if self.arch is not None:
            out["arch"] = self.arch
        if self.features:
            out["features"] = list(self.features)
        return out


@dataclass(frozen=True, slots=True)
class StorageRequirement:
    """Minimum free storage, and the slowest acceptable medium (``hdd < ssd < nvme``)."""

    min_free_mb: int | None = None
    min_type: StorageType | None = None

    def __post_init__(self) -> None:
        _opt_int(self.min_free_mb, "min_free_mb")
        if self.min_type is not None and not isinstance(self.min_type, StorageType):
            setattr_frozen(self, "min_type", StorageType.parse(self.min_type))

    def to_wire(self) -> dict[str, WireValue]:
        out: dict[str, WireValue] = {}
        if self.min_free_mb is not None:
            out["min_free_mb"] = self.min_free_mb
        if self.min_type is not None:
            out["type"] = self.min_type.token
        return out


@dataclass(frozen=True, slots=True)
class NetworkRequirement:
    """Minimum bandwidth; ``egress`` True needs network access, False needs it blocked."""

    min_bandwidth_mbps: int | None = None
    egress: bool | None = None

    def __post_init__(self) -> None:
        _opt_int(self.min_bandwidth_mbps, "min_bandwidth_mbps")
        if self.egress is not None:
            as_bool(self.egress, "egress")

    def to_wire(self) -> dict[str, WireValue]:
        out: dict[str, WireValue] = {}
        if self.min_bandwidth_mbps is not None:
            out["min_bandwidth_mbps"] = self.min_bandwidth_mbps
        if self.egress is not None:
            out["egress"] = self.egress
        return out


def _frozen_codec_needs(value: Mapping[str, object]) -> FrozenMap[CodecNeed]:
    out: dict[str, CodecNeed] = {}
    for raw, need in value.items():
        name = codec_name(raw, "codecs")
        if name in out:
            raise CapabilitySpecError(join("codecs", name), "listed twice (under an alias?)")
        out[name] = CodecNeed.parse(need, join("codecs", name))
    return FrozenMap(out)


def _frozen_specs(value: Mapping[str, object]) -> FrozenMap[SpecifierSet]:
    out: dict[str, SpecifierSet] = {}
    for raw, spec in value.items():
        name = framework_name(raw, "frameworks")
        path = join("frameworks", name)
        if name in out:
            raise CapabilitySpecError(path, "listed twice (under an alias?)")
        if isinstance(spec, SpecifierSet):
            out[name] = spec
            continue
        try:
            out[name] = SpecifierSet.parse(spec)  # type: ignore[arg-type]  # checked inside
        except CapabilitySpecError as exc:
            raise CapabilitySpecError(path, exc.problem) from None
    return FrozenMap(out)


@dataclass(frozen=True, slots=True)
class RequirementSet:
    """One section of requirements (the required one, or the preferred one).

    ``regions`` is any-of, matched as a prefix (``"eu"`` matches ``"eu-west-1"``);
    ``codecs`` maps a codec to :class:`CodecNeed`; ``frameworks`` maps a normalised name to a
    version constraint (empty: any version); ``extensions`` holds custom types.
    """

    gpu: GpuRequirement | None = None
    cpu: CpuRequirement | None = None
    memory_mb: int | None = None
    storage: StorageRequirement | None = None
    network: NetworkRequirement | None = None
    regions: tuple[str, ...] = ()
    codecs: Mapping[str, CodecNeed] = field(default_factory=FrozenMap)
    frameworks: Mapping[str, SpecifierSet] = field(default_factory=FrozenMap)
    isolation: IsolationLevel | None = None
    env_profile: str | None = None
    extensions: Mapping[str, FrozenWire] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        for name, cls in (
            ("gpu", GpuRequirement),
            ("cpu", CpuRequirement),
            ("storage", StorageRequirement),
            ("network", NetworkRequirement),
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise CapabilitySpecError(name, f"expected a {cls.__name__}, got {kind(value)}")
        _opt_int(self.memory_mb, "memory_mb")
        regions = {plain_name(r, f"region[{i}]", "region") for i, r in enumerate(self.regions)}
        setattr_frozen(self, "regions", tuple(sorted(regions)))
        setattr_frozen(self, "codecs", _frozen_codec_needs(self.codecs))
        setattr_frozen(self, "frameworks", _frozen_specs(self.frameworks))
        if self.isolation is not None and not isinstance(self.isolation, IsolationLevel):
            setattr_frozen(self, "isolation", IsolationLevel.parse(self.isolation))
        if self.env_profile is not None:
            setattr_frozen(self, "env_profile", profile_name(self.env_profile, "env_profile"))
        if not isinstance(self.extensions, FrozenMap):
            setattr_frozen(self, "extensions", freeze_extensions(self.extensions, "extensions"))

    def __bool__(self) -> bool:
        return bool(self.to_wire())

    def to_wire(self) -> dict[str, WireValue]:
        out: dict[str, WireValue] = {}
        for name in ("gpu", "cpu", "storage", "network"):
            part = getattr(self, name)
            if part is not None:
                out[name] = part.to_wire()
        if self.memory_mb is not None:
            out["memory_mb"] = self.memory_mb
        if self.regions:
            out["region"] = list(self.regions)
        if self.codecs:
            out["codecs"] = {k: v.value for k, v in self.codecs.items()}
        if self.frameworks:
            out["frameworks"] = {k: str(v) for k, v in self.frameworks.items()}
        if self.isolation is not None:
            out["isolation"] = self.isolation.token
        if self.env_profile is not None:
            out["env_profile"] = self.env_profile
        if self.extensions:
            out["extensions"] = {k: thaw(v) for k, v in self.extensions.items()}
        return out


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a job needs (``required``) and what would make it run better (``preferred``).

    An empty ``Requirements()`` is satisfied by every executor.
    """

    required: RequirementSet = RequirementSet()
    preferred: RequirementSet = RequirementSet()

    def __post_init__(self) -> None:
        for name in ("required", "preferred"):
            if not isinstance(getattr(self, name), RequirementSet):
                raise CapabilitySpecError(name, "expected a RequirementSet")

    @classmethod
    def parse(
        cls, data: Mapping[str, object], *, registry: CapabilityRegistry | None = None
    ) -> Requirements:
        """Read requirements as people write them (GB sizes, lists, shorthands).

        An unknown key is an error naming it, unless it is a custom type registered in
        ``registry`` (default: :data:`default_registry`), whose matcher then validates it.
        """
        return _parse_requirements(
            data, strict=False, registry=default_registry if registry is None else registry
        )

    @classmethod
    def from_wire(cls, data: Mapping[str, object]) -> Requirements:
        """Read the canonical wire form.  Custom types under ``extensions`` are accepted
        whatever their name, so that an executor can decode a job and explain why it cannot
        serve it."""
        return _parse_requirements(data, strict=True, registry=None)

    def to_wire(self) -> dict[str, WireValue]:
        out = self.required.to_wire()
        preferred = self.preferred.to_wire()
        if preferred:
            out["preferred"] = preferred
        return out

    def __bool__(self) -> bool:
        return bool(self.required) or bool(self.preferred)


# --------------------------------------------------------------------------- parsing

_WIRE_KEYS: Final = frozenset(
    {
        "gpu",
        "cpu",
        "memory_mb",
        "storage",
        "network",
        "region",
        "codecs",
        "frameworks",
        "isolation",
        "env_profile",
        "extensions",
    }
)
_MEMORY_HUMAN: Final = ("memory_gb", "memory_mb", "min_memory_gb", "min_memory_mb")
_HUMAN_KEYS: Final = _WIRE_KEYS | {*_MEMORY_HUMAN, "hardware_accel"}


class _Sections:
    """Collects fields for the required and the preferred section, refusing duplicates."""

    def __init__(self) -> None:
        self.parts: dict[bool, dict[str, object]] = {True: {}, False: {}}
        self.extensions: dict[bool, dict[str, FrozenWire]] = {True: {}, False: {}}

    def put(self, required: bool, name: str, value: object, path: str) -> None:
        if name in self.parts[required]:
            raise CapabilitySpecError(
                path,
                "given twice as a preference (inline 'required: false' and under "
                "'preferred'); give it once",
            )
        self.parts[required][name] = value

    def put_extension(self, required: bool, name: str, value: FrozenWire, path: str) -> None:
        if name in self.extensions[required]:
            raise CapabilitySpecError(path, "given twice; give each custom capability once")
        self.extensions[required][name] = value

    def build(self, required: bool) -> RequirementSet:
        kwargs = dict(self.parts[required])
        kwargs["extensions"] = FrozenMap(self.extensions[required])
        path = "requirements" if required else "requirements.preferred"
        return build(path, RequirementSet, **kwargs)


def _parse_requirements(
    data: object, *, strict: bool, registry: CapabilityRegistry | None
) -> Requirements:
    root = Fields(data, "requirements", "requirements")
    sections = _Sections()
    preferred = root.pop("preferred")
    _parse_section(root, True, sections, strict=strict, registry=registry)
    if preferred is not None:
        inner = Fields(preferred, root.at("preferred"), "preferred requirements")
        _parse_section(inner, False, sections, strict=strict, registry=registry)
    return Requirements(required=sections.build(True), preferred=sections.build(False))


def _necessity(f: Fields, section_required: bool, *, strict: bool) -> bool:
    """Whether an item is required, from its inline ``required``/``preferred`` flags."""
    if strict:
        return section_required
    raw_req, raw_pref = f.pop("required"), f.pop("preferred")
    req = None if raw_req is None else as_bool(raw_req, f.at("required"))
    pref = None if raw_pref is None else as_bool(raw_pref, f.at("preferred"))
    if not section_required:
        if req is True or pref is False:
            raise CapabilitySpecError(
                f.path, "this is under 'preferred'; move it out to make it required"
            )
        return False
    if req is False and pref is False:
        raise CapabilitySpecError(
            f.path, "required: false and preferred: false asks for nothing; remove the key"
        )
    if req is None:
        return pref is not True
    return req


def _parse_section(
    f: Fields,
    section_required: bool,
    out: _Sections,
    *,
    strict: bool,
    registry: CapabilityRegistry | None,
) -> None:
    if (gpu := f.pop("gpu")) is not None:
        req_gpu, required = _parse_gpu(gpu, f.at("gpu"), section_required, strict=strict)
        out.put(required, "gpu", req_gpu, f.at("gpu"))
    if (cpu := f.pop("cpu")) is not None:
        req_cpu, required = _parse_cpu(cpu, f.at("cpu"), section_required, strict=strict)
        out.put(required, "cpu", req_cpu, f.at("cpu"))
    mem = f.pop_one("memory_mb") if strict else f.pop_one(*_MEMORY_HUMAN)
    if mem is not None:
        mb = as_size_mb(mem[0], mem[1], f.at(mem[0]), strict=strict)
        out.put(section_required, "memory_mb", mb, f.at(mem[0]))
    if (storage := f.pop("storage")) is not None:
        req_st, required = _parse_storage(storage, f.at("storage"), section_required, strict=strict)
        out.put(required, "storage", req_st, f.at("storage"))
    if (network := f.pop("network")) is not None:
        req_net, required = _parse_network(
            network, f.at("network"), section_required, strict=strict
        )
        out.put(required, "network", req_net, f.at("network"))
    if (region := f.pop("region")) is not None:
        items = as_list(region, f.at("region"), strict=strict, allow_scalar=True)
        regions = tuple(
            plain_name(r, join(f.at("region"), i), "region") for i, r in enumerate(items)
        )
        out.put(section_required, "regions", regions, f.at("region"))
    hw = None if strict else f.pop("hardware_accel")
    if (codecs := f.pop("codecs")) is not None:
        needs = _parse_codecs(codecs, hw, f.path, strict=strict)
        out.put(section_required, "codecs", needs, f.at("codecs"))
    elif hw is not None:
        raise CapabilitySpecError(
            f.at("hardware_accel"), "applies to 'codecs'; list the codecs that need it"
        )
    if (frameworks := f.pop("frameworks")) is not None:
        specs = _parse_frameworks(frameworks, f.path, strict=strict)
        out.put(section_required, "frameworks", specs, f.at("frameworks"))
    if (isolation := f.pop("isolation")) is not None:
        level = IsolationLevel.parse(isolation, f.at("isolation"))
        out.put(section_required, "isolation", level, f.at("isolation"))
    if (profile := f.pop("env_profile")) is not None:
        name = profile_name(profile, f.at("env_profile"))
        out.put(section_required, "env_profile", name, f.at("env_profile"))

    if (ext := f.pop("extensions")) is not None:
        if not isinstance(ext, Mapping):
            raise CapabilitySpecError(f.at("extensions"), f"expected a mapping, got {kind(ext)}")
        for key, value in freeze_extensions(ext, f.at("extensions")).items():
            out.put_extension(section_required, key, value, join(f.at("extensions"), key))
    for key in f.remaining():
        if not strict and registry is not None and key in registry:
            name = extension_name(key, f.at(key))
            out.put_extension(section_required, name, freeze(f.pop(key), f.at(key)), f.at(key))
            continue
        if key == "preferred":
            raise CapabilitySpecError(f.at(key), "'preferred' cannot be nested")
        known = _WIRE_KEYS if strict else _HUMAN_KEYS | set(registry or ())
        if section_required:
            known = known | {"preferred"}
        raise unknown_key(f.path, key, known, "requirement")
    if not strict:
        for key, value in out.extensions[section_required].items():
            check_extension(registry, key, value, f.at(key), side="requirement")


# --------------------------------------------------------------------------- items


def _parse_gpu(
    value: object, path: str, section_required: bool, *, strict: bool
) -> tuple[GpuRequirement, bool]:
    if not strict:
        if value is True:
            return GpuRequirement(), section_required
        if isinstance(value, str):
            return GpuRequirement(type=GpuType.parse(value, path)), section_required
        if value is False:
            raise CapabilitySpecError(
                path, "false is not a requirement; leave 'gpu' out if the job needs no GPU"
            )
    f = Fields(value, path, "gpu requirements")
    required = _necessity(f, section_required, strict=strict)
    kwargs: dict[str, object] = {}
    if (gtype := f.pop("type")) is not None:
        kwargs["type"] = GpuType.parse(gtype, f.at("type"))
    if (model := f.pop("model")) is not None:
        kwargs["model"] = as_str(model, f.at("model"))
    mem_keys: tuple[str, ...] = ("min_memory_mb",)
    if not strict:
        mem_keys = ("min_memory_gb", "min_memory_mb", "memory_gb", "memory_mb")
    if (mem := f.pop_one(*mem_keys)) is not None:
        kwargs["min_memory_mb"] = as_size_mb(mem[0], mem[1], f.at(mem[0]), strict=strict)
    cc_keys: tuple[str, ...] = ("min_compute_capability",)
    if not strict:
        cc_keys = ("min_compute_capability", "compute_capability")
    if (cc := f.pop_one(*cc_keys)) is not None:
        kwargs["min_compute_capability"] = ComputeCapability.parse(
            cc[1], f.at(cc[0]), strict=strict
        )
    if (count := f.pop("count")) is not None:
        kwargs["count"] = as_int(count, f.at("count"), strict=strict, minimum=1)
    known: tuple[str, ...] = ("type", "model", "min_memory_mb", "min_compute_capability", "count")
    if not strict:
        known = (*known, *mem_keys, *cc_keys, "required", "preferred")
    f.finish(known, "gpu")
    return build(path, GpuRequirement, **kwargs), required


def _parse_cpu(
    value: object, path: str, section_required: bool, *, strict: bool
) -> tuple[CpuRequirement, bool]:
    if not strict and isinstance(value, int) and not isinstance(value, bool):
        return CpuRequirement(min_cores=as_int(value, path, strict=False)), section_required
    f = Fields(value, path, "cpu requirements")
    required = _necessity(f, section_required, strict=strict)
    kwargs: dict[str, object] = {}
    if (cores := f.pop_one("cores") if strict else f.pop_one("cores", "min_cores")) is not None:
        kwargs["min_cores"] = as_int(cores[1], f.at(cores[0]), strict=strict)
    if (arch := f.pop("arch")) is not None:
        kwargs["arch"] = arch_name(arch, f.at("arch"))
    if (features := f.pop("features")) is not None:
        kwargs["features"] = tuple(
            as_list(features, f.at("features"), strict=strict, allow_scalar=True)
        )
    known = ("cores", "arch", "features")
    f.finish(known if strict else (*known, "min_cores", "required", "preferred"), "cpu")
    return build(path, CpuRequirement, **kwargs), required


def _parse_storage(
    value: object, path: str, section_required: bool, *, strict: bool
) -> tuple[StorageRequirement, bool]:
    f = Fields(value, path, "storage requirements")
    required = _necessity(f, section_required, strict=strict)
    kwargs: dict[str, object] = {}
    keys = ("min_free_mb",) if strict else ("min_free_gb", "min_free_mb", "free_gb", "free_mb")
    if (size := f.pop_one(*keys)) is not None:
        kwargs["min_free_mb"] = as_size_mb(size[0], size[1], f.at(size[0]), strict=strict)
    if (stype := f.pop("type")) is not None:
        kwargs["min_type"] = StorageType.parse(stype, f.at("type"))
    f.finish((*keys, "type") if strict else (*keys, "type", "required", "preferred"), "storage")
    return build(path, StorageRequirement, **kwargs), required


def _parse_network(
    value: object, path: str, section_required: bool, *, strict: bool
) -> tuple[NetworkRequirement, bool]:
    f = Fields(value, path, "network requirements")
    required = _necessity(f, section_required, strict=strict)
    kwargs: dict[str, object] = {}
    keys = ("min_bandwidth_mbps",) if strict else ("min_bandwidth_mbps", "bandwidth_mbps")
    if (bw := f.pop_one(*keys)) is not None:
        kwargs["min_bandwidth_mbps"] = as_int(bw[1], f.at(bw[0]), strict=strict)
    if (egress := f.pop("egress")) is not None:
        kwargs["egress"] = as_bool(egress, f.at("egress"))
    f.finish((*keys, "egress") if strict else (*keys, "egress", "required", "preferred"), "network")
    return build(path, NetworkRequirement, **kwargs), required


def _parse_codecs(
    value: object, hardware_accel: object, root: str, *, strict: bool
) -> FrozenMap[CodecNeed]:
    path = join(root, "codecs")
    hw = False if hardware_accel is None else as_bool(hardware_accel, join(root, "hardware_accel"))
    if not strict and not isinstance(value, Mapping):
        items = as_list(value, path, strict=False, allow_scalar=True)
        value = {codec_name(c, join(path, i)): CodecNeed.ANY for i, c in enumerate(items)}
    if not isinstance(value, Mapping):
        raise CapabilitySpecError(
            path, f"expected a mapping of codec to 'hardware' or 'any', got {kind(value)}"
        )
    needs = build(root, _frozen_codec_needs, value=value)
    if hw:
        needs = FrozenMap(dict.fromkeys(needs, CodecNeed.HARDWARE))
    return needs


def _parse_frameworks(value: object, root: str, *, strict: bool) -> FrozenMap[SpecifierSet]:
    path = join(root, "frameworks")
    if not strict and isinstance(value, list | tuple):
        items = as_list(value, path, strict=False)
        value = {framework_name(n, join(path, i)): "" for i, n in enumerate(items)}
    if not isinstance(value, Mapping):
        raise CapabilitySpecError(
            path, f"expected a mapping of framework to version constraint, got {kind(value)}"
        )
    if not strict:  # null / true mean "any version"
        value = {k: "" if v is None or v is True else v for k, v in value.items()}
    return build(root, _frozen_specs, value=value)
