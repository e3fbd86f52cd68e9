"""What an executor has: the capability offer it advertises (seed 003, advertising).

Human input (:meth:`CapabilityOffer.parse`) accepts the seed's shapes as written::

    {"gpu": {"type": "cuda", "model": "RTX 4090", "memory_gb": 24}}
    {"cpu": {"cores": 16, "arch": "x86_64"}, "memory_gb": 64}
    {"codecs": {"h264": "hardware", "vp9": "software"}}

The wire form (:meth:`CapabilityOffer.to_wire` / :meth:`CapabilityOffer.from_wire`) is canonical:
integer MiB, a ``gpus`` list, tokens for enums, no floats, defaults left out::

    {"gpus": [{"index": 0, "memory_mb": 24576, "model": "RTX 4090", "type": "cuda"}]}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ._common import build, check_extension, extension_name, freeze_extensions, setattr_frozen
from ._errors import CapabilitySpecError
from ._registry import CapabilityRegistry, default_registry
from ._taxonomy import (
    CodecSupport,
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
from ._wire import (
    MAX_ITEMS,
    Fields,
    FrozenMap,
    FrozenWire,
    WireValue,
    as_bool,
    as_int,
    as_list,
    as_size_mb,
    as_str,
    freeze,
    join,
    kind,
    thaw,
    unknown_key,
)


def _opt_int(value: int | None, name: str) -> int | None:
    return None if value is None else as_int(value, name, strict=True)


@dataclass(frozen=True, slots=True)
class GpuOffer:
    """One GPU.  A busy GPU (allocated to a running job) does not satisfy requirements."""

    type: GpuType
    model: str = ""
    memory_mb: int | None = None
    free_memory_mb: int | None = None
    compute_capability: ComputeCapability | None = None
    index: int = 0
    busy: bool = False

    def __post_init__(self) -> None:
        setattr_frozen(self, "type", GpuType.parse(self.type))
        if self.model:
            setattr_frozen(self, "model", as_str(self.model, "model"))
        _opt_int(self.memory_mb, "memory_mb")
        _opt_int(self.free_memory_mb, "free_memory_mb")
        if self.memory_mb is not None and self.free_memory_mb is not None:
            if self.free_memory_mb > self.memory_mb:
                raise CapabilitySpecError(
                    "free_memory_mb",
                    f"{self.free_memory_mb} MiB free is more than the {self.memory_mb} MiB total",
                )
        if self.compute_capability is not None:
            setattr_frozen(
                self, "compute_capability", ComputeCapability.parse(self.compute_capability)
            )
        as_int(self.index, "index", strict=True)
        as_bool(self.busy, "busy")

    @property
    def available_memory_mb(self) -> int | None:
        """Free memory where advertised, else total memory."""
        return self.free_memory_mb if self.free_memory_mb is not None else self.memory_mb

    @property
    def label(self) -> str:
        """``"cuda RTX 4090 #0"``, for messages."""
        return " ".join(p for p in (self.type.value, self.model, f"#{self.index}") if p)

    def to_wire(self) -> dict[str, WireValue]:
        out: dict[str, WireValue] = {"index": self.index, "type": self.type.value}
        if self.model:
            out["model"] = self.model
        if self.memory_mb is not None:
            out["memory_mb"] = self.memory_mb
        if self.free_memory_mb is not None:
            out["free_memory_mb"] = self.free_memory_mb
        if self.compute_capability is not None:
            out["compute_capability"] = str(self.compute_capability)
        if self.busy:
            out["busy"] = True
        return out


@dataclass(frozen=True, slots=True)
class CpuOffer:
    """The executor's CPU: logical cores, architecture (``x86_64``, ``aarch64``) and features."""

    cores: int | None = None
    arch: str | None = None
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _opt_int(self.cores, "cores")
        if self.arch is not None:
            setattr_frozen(self, "arch", arch_name(self.arch, "arch"))
        feats = {
            plain_name(f, f"features[{i}]", "cpu feature") for i, f in enumerate(self.features)
        }
        setattr_frozen(self, "features", tuple(sorted(feats)))

    def to_wire(self) -> dict[str, WireValue]:
        out: dict[str, WireValue] = {}
        if self.cores is not None:
            out["cores"] = self.cores
        if self.arch is not None:
            out["arch"] = self.arch
        if self.features:
            out["features"] = list(self.features)
        return out


@dataclass(frozen=True, slots=True)
class StorageOffer:
    """Free scratch storage, and the medium it lives on."""

    free_mb: int | None = None
    type: StorageType | None = None

    def __post_init__(self) -> None:
        _opt_int(self.free_mb, "free_mb")
        if self.type is not None and not isinstance(self.type, StorageType):
            setattr_frozen(self, "type", StorageType.parse(self.type))

    def to_wire(self) -> dict[str, WireValue]:
        out: dict[str, WireValue] = {}
        if self.free_mb is not None:
            out["free_mb"] = self.free_mb
        if self.type is not None:
            out["type"] = self.type.token
        return out


@dataclass(frozen=True, slots=True)
class NetworkOffer:
    """Network facts: bandwidth, whether jobs may reach the network, and the region."""

    bandwidth_mbps: int | None = None
    egress: bool = False
    region: str | None = None

    def __post_init__(self) -> None:
        _opt_int(self.bandwidth_mbps, "bandwidth_mbps")
        as_bool(self.egress, "egress")
        if self.region is not None:
            setattr_frozen(self, "region", plain_name(self.region, "region", "region"))

    def to_wire(self) -> dict[str, WireValue]:
        out: dict[str, WireValue] = {}
        if self.bandwidth_mbps is not None:
            out["bandwidth_mbps"] = self.bandwidth_mbps
        if self.egress:
            out["egress"] = True
        if self.region is not None:
            out["region"] = self.region
        return out


def _frozen_codecs(value: Mapping[str, object]) -> FrozenMap[CodecSupport]:
    out: dict[str, CodecSupport] = {}
    for raw, support in value.items():
        name = codec_name(raw, "codecs")
        if name in out:
            raise CapabilitySpecError(join("codecs", name), "listed twice (under an alias?)")
        out[name] = CodecSupport.parse(support, join("codecs", name))
    return FrozenMap(out)


def _frozen_frameworks(value: Mapping[str, object]) -> FrozenMap[str]:
    out: dict[str, str] = {}
    for raw, version in value.items():
        name = framework_name(raw, "frameworks")
        if name in out:
            raise CapabilitySpecError(join("frameworks", name), "listed twice (under an alias?)")
        out[name] = as_str(version, join("frameworks", name), max_len=64)
    return FrozenMap(out)


@dataclass(frozen=True, slots=True)
class CapabilityOffer:
    """Everything an executor advertises it can do, right now.

    Immutable: when resources change (a GPU is allocated), build a new offer —
    :meth:`with_gpu_busy` does the common case — and advertise that.

    ``frameworks`` maps a normalised name (``pytorch``, ``tensorflow``, ``onnx``, ``numpy``) to
    the installed version string; ``extensions`` holds custom capability types by name, as
    frozen wire-safe values.
    """

    gpus: tuple[GpuOffer, ...] = ()
    cpu: CpuOffer = CpuOffer()
    memory_mb: int | None = None
    storage: StorageOffer = StorageOffer()
    network: NetworkOffer = NetworkOffer()
    codecs: Mapping[str, CodecSupport] = field(default_factory=FrozenMap)
    frameworks: Mapping[str, str] = field(default_factory=FrozenMap)
    env_profiles: tuple[str, ...] = ()
    isolation: IsolationLevel = IsolationLevel.NONE
    extensions: Mapping[str, FrozenWire] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        for gpu in self.gpus:
            if not isinstance(gpu, GpuOffer):
                raise CapabilitySpecError("gpus", f"expected GpuOffer items, got {kind(gpu)}")
        gpus = tuple(sorted(self.gpus, key=lambda g: g.index))
        for i, gpu in enumerate(gpus):
            if i and gpus[i - 1].index == gpu.index:
                raise CapabilitySpecError("gpus", f"two GPUs have index {gpu.index}")
        setattr_frozen(self, "gpus", gpus)
        for name, cls in (("cpu", CpuOffer), ("storage", StorageOffer), ("network", NetworkOffer)):
            if not isinstance(getattr(self, name), cls):
                raise CapabilitySpecError(name, f"expected a {cls.__name__}")
        _opt_int(self.memory_mb, "memory_mb")
        setattr_frozen(self, "codecs", _frozen_codecs(self.codecs))
        setattr_frozen(self, "frameworks", _frozen_frameworks(self.frameworks))
        profiles = {profile_name(p, f"env_profiles[{i}]") for i, p in enumerate(self.env_profiles)}
        setattr_frozen(self, "env_profiles", tuple(sorted(profiles)))
        if not isinstance(self.isolation, IsolationLevel):
            setattr_frozen(self, "isolation", IsolationLevel.parse(self.isolation))
        if not isinstance(self.extensions, FrozenMap):
            setattr_frozen(self, "extensions", freeze_extensions(self.extensions, "extensions"))

    # ------------------------------------------------------------------ input

    @classmethod
    def parse(
        cls, data: Mapping[str, object], *, registry: CapabilityRegistry | None = None
    ) -> CapabilityOffer:
        """Read an offer as people write it: GB sizes, aliases, a single ``gpu`` map.

        Custom types registered in ``registry`` (default: :data:`default_registry`) may appear
        as top-level keys; anything else unknown is an error naming the key.
        """
        return _parse_offer(
            data, strict=False, registry=default_registry if registry is None else registry
        )

    @classmethod
    def from_wire(cls, data: Mapping[str, object]) -> CapabilityOffer:
        """Read the canonical wire form, refusing floats and human shorthands."""
        return _parse_offer(data, strict=True, registry=None)

    def to_wire(self) -> dict[str, WireValue]:
        """The canonical wire form: integers, strings, booleans, lists and maps only."""
        out: dict[str, WireValue] = {}
        if self.gpus:
            out["gpus"] = [g.to_wire() for g in self.gpus]
        for name in ("cpu", "storage", "network"):
            part = getattr(self, name).to_wire()
            if part:
                out[name] = part
        if self.memory_mb is not None:
            out["memory_mb"] = self.memory_mb
        if self.codecs:
            out["codecs"] = {k: v.value for k, v in self.codecs.items()}
        if self.frameworks:
            out["frameworks"] = dict(self.frameworks)
        if self.env_profiles:
            out["env_profiles"] = list(self.env_profiles)
        if self.isolation is not IsolationLevel.NONE:
            out["isolation"] = self.isolation.token
        if self.extensions:
            out["extensions"] = {k: thaw(v) for k, v in self.extensions.items()}
        return out

    # ------------------------------------------------------------------ updates

    @property
    def free_gpus(self) -> tuple[GpuOffer, ...]:
        return tuple(g for g in self.gpus if not g.busy)

    def with_gpu_busy(self, index: int, busy: bool = True) -> CapabilityOffer:
        """A copy with GPU ``index`` marked busy (or free again)."""
        if all(g.index != index for g in self.gpus):
            raise KeyError(f"this offer has no GPU with index {index}")
        gpus = tuple(
            dataclasses.replace(g, busy=busy) if g.index == index else g for g in self.gpus
        )
        return dataclasses.replace(self, gpus=gpus)


# --------------------------------------------------------------------------- parsing

_WIRE_KEYS: Final = frozenset(
    {
        "gpus",
        "cpu",
        "memory_mb",
        "storage",
        "network",
        "codecs",
        "frameworks",
        "env_profiles",
        "isolation",
        "extensions",
    }
)
_HUMAN_KEYS: Final = _WIRE_KEYS | {"gpu", "memory_gb", "region", "env_profile"}


def _parse_offer(
    data: object, *, strict: bool, registry: CapabilityRegistry | None
) -> CapabilityOffer:
    f = Fields(data, "offer", "capabilities")
    kwargs: dict[str, object] = {}

    gpus = f.pop_one("gpus") if strict else f.pop_one("gpu", "gpus")
    if gpus is not None:
        kwargs["gpus"] = _parse_gpus(f.at(gpus[0]), gpus[1], strict=strict)
    if (cpu := f.pop("cpu")) is not None:
        kwargs["cpu"] = _parse_cpu(cpu, f.at("cpu"), strict=strict)
    mem = f.pop_one("memory_mb") if strict else f.pop_one("memory_gb", "memory_mb")
    if mem is not None:
        kwargs["memory_mb"] = as_size_mb(mem[0], mem[1], f.at(mem[0]), strict=strict)
    if (storage := f.pop("storage")) is not None:
        kwargs["storage"] = _parse_storage(storage, f.at("storage"), strict=strict)
    network = f.pop("network")
    region = None if strict else f.pop("region")
    if network is not None or region is not None:
        kwargs["network"] = _parse_network(network, region, f.at("network"), strict=strict)
    if (codecs := f.pop("codecs")) is not None:
        kwargs["codecs"] = _parse_codecs(codecs, f.path, strict=strict)
    if (frameworks := f.pop("frameworks")) is not None:
        if not isinstance(frameworks, Mapping):
            raise CapabilitySpecError(
                f.at("frameworks"),
                f"expected a mapping of framework to installed version, got {kind(frameworks)}",
            )
        kwargs["frameworks"] = build(f.path, _frozen_frameworks, value=frameworks)
    profiles = f.pop_one("env_profiles") if strict else f.pop_one("env_profiles", "env_profile")
    if profiles is not None:
        items = as_list(profiles[1], f.at(profiles[0]), strict=strict, allow_scalar=True)
        kwargs["env_profiles"] = tuple(
            profile_name(p, join(f.at(profiles[0]), i)) for i, p in enumerate(items)
        )
    if (isolation := f.pop("isolation")) is not None:
        kwargs["isolation"] = IsolationLevel.parse(isolation, f.at("isolation"))

    extensions: dict[str, FrozenWire] = {}
    if (ext := f.pop("extensions")) is not None:
        if not isinstance(ext, Mapping):
            raise CapabilitySpecError(f.at("extensions"), f"expected a mapping, got {kind(ext)}")
        extensions.update(freeze_extensions(ext, f.at("extensions")))
    for key in f.remaining():
        if strict or registry is None or key not in registry:
            known = _WIRE_KEYS if strict else _HUMAN_KEYS | set(registry or ())
            raise unknown_key(f.path, key, known, "capability")
        if key in extensions:
            raise CapabilitySpecError(f.at(key), "given both at the top level and in 'extensions'")
        extensions[extension_name(key, f.at(key))] = freeze(f.pop(key), f.at(key))
    if not strict:
        for name, value in extensions.items():
            check_extension(registry, name, value, f.at(name), side="offer")
    kwargs["extensions"] = FrozenMap(extensions)
    return build(f.path, CapabilityOffer, **kwargs)


_GPU_WIRE: Final = ("type", "model", "memory_mb", "free_memory_mb", "compute_capability")
_GPU_KEYS: Final = (*_GPU_WIRE, "index", "busy")
_GPU_HUMAN_KEYS: Final = (*_GPU_KEYS, "count", "memory_gb", "free_memory_gb")


def _parse_gpus(path: str, value: object, *, strict: bool) -> tuple[GpuOffer, ...]:
    single = not strict and isinstance(value, Mapping)
    entries = [value] if single else as_list(value, path, strict=strict)
    gpus: list[GpuOffer] = []
    for i, entry in enumerate(entries):
        epath = path if single else join(path, i)
        f = Fields(entry, epath, "gpu properties")
        gtype = f.pop("type")
        if gtype is None:
            raise CapabilitySpecError(
                f.at("type"), "missing; say which platform the GPU is: cuda, rocm or metal"
            )
        kwargs: dict[str, object] = {"type": GpuType.parse(gtype, f.at("type"))}
        if (model := f.pop("model")) is not None:
            kwargs["model"] = as_str(model, f.at("model"))
        for base in ("memory", "free_memory"):
            keys = (f"{base}_mb",) if strict else (f"{base}_gb", f"{base}_mb")
            size = f.pop_one(*keys)
            if size is not None:
                kwargs[f"{base}_mb"] = as_size_mb(size[0], size[1], f.at(size[0]), strict=strict)
        if (cc := f.pop("compute_capability")) is not None:
            kwargs["compute_capability"] = ComputeCapability.parse(
                cc, f.at("compute_capability"), strict=strict
            )
        if (busy := f.pop("busy")) is not None:
            kwargs["busy"] = as_bool(busy, f.at("busy"))
        index = f.pop("index")
        count = 1 if strict else f.pop("count")
        n = 1 if count is None else as_int(count, f.at("count"), strict=strict, minimum=1)
        if n > MAX_ITEMS:
            raise CapabilitySpecError(f.at("count"), f"more than {MAX_ITEMS} GPUs")
        if index is not None and n > 1:
            raise CapabilitySpecError(epath, "give either 'index' or 'count', not both")
        f.finish(_GPU_KEYS if strict else _GPU_HUMAN_KEYS, "gpu")
        for _ in range(n):
            idx = len(gpus) if index is None else as_int(index, f.at("index"), strict=strict)
            gpus.append(build(epath, GpuOffer, index=idx, **kwargs))
    return build(path, _check_unique_indices, gpus=gpus)


def _check_unique_indices(gpus: list[GpuOffer]) -> tuple[GpuOffer, ...]:
    seen: set[int] = set()
    for gpu in gpus:
        if gpu.index in seen:
            raise CapabilitySpecError("", f"two GPUs have index {gpu.index}")
        seen.add(gpu.index)
    return tuple(gpus)


def _parse_cpu(value: object, path: str, *, strict: bool) -> CpuOffer:
    f = Fields(value, path, "cpu properties")
    kwargs: dict[str, object] = {}
    if (cores := f.pop("cores")) is not None:
        kwargs["cores"] = as_int(cores, f.at("cores"), strict=strict)
    if (arch := f.pop("arch")) is not None:
        kwargs["arch"] = arch_name(arch, f.at("arch"))
    if (features := f.pop("features")) is not None:
        kwargs["features"] = tuple(as_list(features, f.at("features"), strict=strict))
    f.finish(("cores", "arch", "features"), "cpu")
    return build(path, CpuOffer, **kwargs)


def _parse_storage(value: object, path: str, *, strict: bool) -> StorageOffer:
    f = Fields(value, path, "storage properties")
    kwargs: dict[str, object] = {}
    size = f.pop_one("free_mb") if strict else f.pop_one("free_gb", "free_mb")
    if size is not None:
        kwargs["free_mb"] = as_size_mb(size[0], size[1], f.at(size[0]), strict=strict)
    if (stype := f.pop("type")) is not None:
        kwargs["type"] = StorageType.parse(stype, f.at("type"))
    f.finish(("free_mb", "type") if strict else ("free_gb", "free_mb", "type"), "storage")
    return build(path, StorageOffer, **kwargs)


def _parse_network(value: object, region: object, path: str, *, strict: bool) -> NetworkOffer:
    f = Fields({} if value is None else value, path, "network properties")
    kwargs: dict[str, object] = {}
    if (bw := f.pop("bandwidth_mbps")) is not None:
        kwargs["bandwidth_mbps"] = as_int(bw, f.at("bandwidth_mbps"), strict=strict)
    if (egress := f.pop("egress")) is not None:
        kwargs["egress"] = as_bool(egress, f.at("egress"))
    inner = f.pop("region")
    if inner is not None and region is not None:
        raise CapabilitySpecError(path, "give the region once: 'region' or 'network.region'")
    if (where := inner if inner is not None else region) is not None:
        kwargs["region"] = plain_name(where, f.at("region"), "region")
    f.finish(("bandwidth_mbps", "egress", "region"), "network")
    return build(path, NetworkOffer, **kwargs)


def _parse_codecs(value: object, root: str, *, strict: bool) -> FrozenMap[CodecSupport]:
    path = join(root, "codecs")
    if not strict and isinstance(value, list | tuple):
        # A bare list says "supported", not how: count each codec as software.
        items = as_list(value, path, strict=False)
        value = {codec_name(c, join(path, i)): CodecSupport.SOFTWARE for i, c in enumerate(items)}
    if not isinstance(value, Mapping):
        raise CapabilitySpecError(
            path, f"expected a mapping of codec to 'hardware' or 'software', got {kind(value)}"
        )
    return build(root, _frozen_codecs, value=value)
