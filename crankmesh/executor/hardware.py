"""What this machine has: hardware and software detection, and a monitor for changes.

:func:`detect_hardware` builds the :class:`~crankmesh.capabilities.CapabilityOffer` an executor
advertises (seed 003, "Executor Capability Advertising"): CPU cores, architecture and a few
instruction-set features; total memory (capped by a cgroup limit); free scratch storage and
its medium; GPUs through torch (CUDA, ROCm, Apple MPS) with model, memory, free memory,
compute capability and a ``busy`` flag when almost no GPU memory is free; installed ML
frameworks with their versions; video codecs ffmpeg can encode (hardware encoders only
where the device they need is present); the env profiles and isolation level it is told.

Costs and caching: the static facts (CPU architecture and features, frameworks, codecs,
storage medium) are detected once per process and cached (:func:`clear_cache` forgets
them); core count, memory, free storage and GPUs with their free memory are measured on
every call (cheap: a few syscalls and small ``/proc`` reads).  torch is imported lazily
and only when ``include_gpu`` is true (the import takes seconds);
``detect_hardware(include_gpu=False)`` never imports it.  Reading free CUDA memory
(``torch.cuda.mem_get_info``) creates a CUDA context on each GPU in *this* process; the
sandbox's fork-servers are separate, clean interpreters, so they are not affected.

:class:`HardwareMonitor` re-detects every ``interval_s`` and on request, and reports what
changed ("GPU 0 disappeared", "GPU 0 busy (free 0.1 GiB of 24)") so the node can
re-advertise at once (seed 003, "Dynamic capability updates", "Detect capability drift").
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.metadata
import inspect
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from ..capabilities import (
    CapabilityOffer,
    CodecSupport,
    ComputeCapability,
    CpuOffer,
    GpuOffer,
    GpuType,
    IsolationLevel,
    NetworkOffer,
    StorageOffer,
    StorageType,
)

__all__ = [
    "HardwareMonitor",
    "OfferChangeCallback",
    "clear_cache",
    "describe_changes",
    "detect_codecs",
    "detect_cpu",
    "detect_frameworks",
    "detect_gpus",
    "detect_hardware",
    "detect_memory_mb",
    "detect_storage",
    "parse_ffmpeg_encoders",
]

log = logging.getLogger("crankmesh.executor.hardware")

_MIB: Final = 1024 * 1024
#: A GPU with less than this fraction of its memory free is advertised as busy.
BUSY_FREE_FRACTION: Final = 0.05

#: distribution name -> framework name in the taxonomy (first installed one wins).
_FRAMEWORK_DISTS: Final[tuple[tuple[str, str], ...]] = (
    ("torch", "pytorch"),
    ("tensorflow", "tensorflow"),
    ("tensorflow-cpu", "tensorflow"),
    ("onnxruntime", "onnx"),
    ("onnxruntime-gpu", "onnx"),
    ("numpy", "numpy"),
)

#: CPU flags worth advertising (``/proc/cpuinfo``); jobs may require them.
_CPU_FEATURES: Final = frozenset(
    {
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "aes",
        "sha_ni",
        "asimd",
        "sve",
        "sve2",
        "neon",
    }
)


# --------------------------------------------------------------------------- cpu / memory


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cgroup_cpu_limit() -> int | None:
    """Cores allowed by a cgroup CPU quota (v2 ``cpu.max`` or v1 CFS), rounded up."""
    text = _read("/sys/fs/cgroup/cpu.max")
    if text is not None:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            with contextlib.suppress(ValueError):
                return max(1, math.ceil(int(parts[0]) / int(parts[1])))
        return None
    quota = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    period = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    with contextlib.suppress(ValueError, AttributeError):
        q, p = int(quota.strip()), int(period.strip())  # type: ignore[union-attr]
        if q > 0 and p > 0:
            return max(1, math.ceil(q / p))
    return None


@functools.cache
def _cpu_identity() -> tuple[str | None, tuple[str, ...]]:
    """Architecture and advertised ISA features (they do not change while we run)."""
    arch: str | None = platform.machine().strip().lower() or None
    if arch is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_.+-]{0,63}", arch):
        arch = None
    features: set[str] = set()
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            features.update(value.split())
            break
    return arch, tuple(sorted(features & _CPU_FEATURES))


def detect_cpu() -> CpuOffer:
    """Usable logical cores (affinity, then cgroup quota), architecture and ISA features.

    The core count is measured on every call (affinity and quotas can change under a
    running process); architecture and features are read once.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, limit)
    arch, features = _cpu_identity()
    return CpuOffer(cores=cores, arch=arch, features=features)


def detect_memory_mb() -> int | None:
    """Total memory in MiB (``/proc/meminfo``, else ``sysconf``), capped by a cgroup limit.

    Measured on every call (a container's memory limit can be changed while it runs).
    """
    total: int | None = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            with contextlib.suppress(ValueError, IndexError):
                total = int(line.split()[1]) // 1024  # kB
            break
    if total is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // _MIB
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        text = _read(path)
        if text is not None and text.strip().isdigit():
            limit = int(text.strip()) // _MIB
            if total is None or limit < total:
                total = limit
            break
    return total


# --------------------------------------------------------------------------- storage


def _storage_type(path: str) -> StorageType | None:
    """The medium under ``path`` as the kernel reports it; ``None`` when it cannot tell."""
    try:
        dev = os.stat(path).st_dev
        block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve(strict=True)
    except (OSError, RuntimeError):
        return None  # overlay/tmpfs/network file systems have no block device
    if not (block / "queue").exists():
        block = block.parent  # a partition: the queue lives on its disk
    name = block.name
    if name.startswith("nvme"):
        return StorageType.NVME
    if name.startswith(("vd", "xvd")):
        return None  # virtual disks report "rotational" meaninglessly
    rotational = _read(str(block / "queue" / "rotational"))
    if rotational is None:
        return None
    return StorageType.HDD if rotational.strip() == "1" else StorageType.SSD


@functools.cache
def _storage_type_cached(path: str) -> StorageType | None:
    return _storage_type(path)


def detect_storage(path: str | os.PathLike[str] | None = None) -> StorageOffer:
    """Free space (MiB) of the file system holding ``path`` (default: the temp directory)."""
    where = os.fspath(path) if path is not None else _default_scratch()
    try:
        free = shutil.disk_usage(where).free // _MIB
    except OSError:
        return StorageOffer()
    return StorageOffer(free_mb=free, type=_storage_type_cached(os.path.realpath(where)))


def _default_scratch() -> str:
    import tempfile

    return tempfile.gettempdir()


# --------------------------------------------------------------------------- software


@functools.cache
def detect_frameworks() -> Mapping[str, str]:
    """Installed ML frameworks and their versions, from package metadata (nothing imported)."""
    found: dict[str, str] = {}
    for dist, name in _FRAMEWORK_DISTS:
        if name in found:
            continue
        with contextlib.suppress(importlib.metadata.PackageNotFoundError, ValueError):
            version = importlib.metadata.version(dist)
            if version and len(version) <= 64:
                found[name] = version
    return found


_SOFTWARE_ENCODERS: Final = {
    "libx264": "h264",
    "libopenh264": "h264",
    "libx265": "h265",
    "libvpx-vp9": "vp9",
    "libaom-av1": "av1",
    "libsvtav1": "av1",
    "librav1e": "av1",
}
_HW_SUFFIXES: Final = ("nvenc", "vaapi", "qsv", "videotoolbox", "amf")
_HW_CODECS: Final = {"h264": "h264", "hevc": "h265", "h265": "h265", "vp9": "vp9", "av1": "av1"}
_ENCODER_LINE: Final = re.compile(r"^\s*V[A-Z.]{5}\s+(\S+)")


def parse_ffmpeg_encoders(
    text: str, *, hardware_backends: Collection[str] = _HW_SUFFIXES
) -> dict[str, CodecSupport]:
    """Codecs in ``ffmpeg -hide_banner -encoders`` output: ``{"h264": HARDWARE, ...}``.

    ``libx264`` & co. count as software; ``h264_nvenc``, ``hevc_vaapi``, ``av1_qsv``,
    ``h264_videotoolbox``, ``*_amf`` as hardware, but only for the backends named in
    ``hardware_backends`` (an ffmpeg build lists every encoder it was compiled with, whether
    or not this machine has the device).  Hardware wins when both exist.
    """
    out: dict[str, CodecSupport] = {}
    for line in text.splitlines():
        m = _ENCODER_LINE.match(line)
        if m is None:
            continue
        encoder = m[1]
        if encoder in _SOFTWARE_ENCODERS:
            out.setdefault(_SOFTWARE_ENCODERS[encoder], CodecSupport.SOFTWARE)
            continue
        base, _, backend = encoder.rpartition("_")
        if backend in _HW_SUFFIXES and base in _HW_CODECS and backend in hardware_backends:
            out[_HW_CODECS[base]] = CodecSupport.HARDWARE
    return out


def _hardware_backends(has_cuda_gpu: bool) -> set[str]:
    """Which hardware encoder families this machine has the device for."""
    backends: set[str] = set()
    if has_cuda_gpu or os.path.exists("/dev/nvidia0"):
        backends.add("nvenc")
    if glob.glob("/dev/dri/renderD*"):
        backends.update(("vaapi", "qsv", "amf"))
    if sys.platform == "darwin":
        backends.add("videotoolbox")
    return backends


@functools.cache
def _ffmpeg_encoders_text(timeout_s: float) -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        return ""
    try:
        proc = subprocess.run(
            [exe, "-hide_banner", "-encoders"],
            capture_output=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not list ffmpeg encoders: %s", exc)
        return ""
    return proc.stdout.decode("utf-8", "replace")


def detect_codecs(*, has_cuda_gpu: bool = False, timeout_s: float = 3.0) -> dict[str, CodecSupport]:
    """Video codecs the ``ffmpeg`` on ``PATH`` can encode (empty without ffmpeg)."""
    text = _ffmpeg_encoders_text(timeout_s)
    if not text:
        return {}
    return parse_ffmpeg_encoders(text, hardware_backends=_hardware_backends(has_cuda_gpu))


# --------------------------------------------------------------------------- gpus


@functools.cache
def _torch() -> ModuleType | None:
    """torch, imported on first use (seconds); ``None`` when it is not installed or broken."""
    try:
        import torch
    except Exception as exc:  # not installed, or a broken install (OSError, RuntimeError, ...)
        if not isinstance(exc, ImportError):
            log.warning("torch is installed but failed to import: %s", exc)
        return None
    return torch


def _busy(free_mb: int | None, total_mb: int | None, fraction: float) -> bool:
    if free_mb is None or not total_mb:
        return False
    return free_mb < total_mb * fraction


def detect_gpus(*, busy_free_fraction: float = BUSY_FREE_FRACTION) -> tuple[GpuOffer, ...]:
    """GPUs torch can use: CUDA or ROCm devices, or Apple's MPS device.

    A GPU whose properties or free memory cannot be read any more (fell off the bus, driver
    reset) is left out; one with less than ``busy_free_fraction`` of its memory free is
    ``busy``.  Empty without torch.
    """
    torch = _torch()
    if torch is None:
        return ()
    gpus: list[GpuOffer] = []
    try:
        cuda_ok = bool(torch.cuda.is_available())
    except Exception as exc:
        log.warning("torch.cuda.is_available() failed: %s", exc)
        cuda_ok = False
    if cuda_ok:
        gtype = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        for index in range(int(torch.cuda.device_count())):
            gpu = _cuda_gpu(torch, index, gtype, busy_free_fraction)
            if gpu is not None:
                gpus.append(gpu)
    elif _mps_available(torch):
        gpus.append(_mps_gpu(torch, busy_free_fraction))
    return tuple(gpus)


def _cuda_gpu(torch: Any, index: int, gtype: str, busy_fraction: float) -> GpuOffer | None:
    try:
        props = torch.cuda.get_device_properties(index)
        total = int(props.total_memory) // _MIB
        free: int | None = None
        mem_get_info = getattr(torch.cuda, "mem_get_info", None)
        if mem_get_info is not None:
            free = min(int(mem_get_info(index)[0]) // _MIB, total)
    except Exception as exc:
        log.warning("GPU %d is not usable: %s", index, exc)
        return None
    cc = f"{props.major}.{props.minor}" if gtype == "cuda" else None
    return GpuOffer(
        type=GpuType.parse(gtype),
        model=str(props.name)[:128],
        memory_mb=total,
        free_memory_mb=free,
        compute_capability=None if cc is None else ComputeCapability.parse(cc),
        index=index,
        busy=_busy(free, total, busy_fraction),
    )


def _mps_available(torch: Any) -> bool:
    try:
        return bool(torch.backends.mps.is_available())
    except Exception:
        return False


def _mps_gpu(torch: Any, busy_fraction: float) -> GpuOffer:
    total: int | None = None
    free: int | None = None
    mps: Any = getattr(torch, "mps", None)
    with contextlib.suppress(Exception):
        total = int(mps.recommended_max_memory()) // _MIB
        used = int(mps.driver_allocated_memory()) // _MIB
        free = max(0, total - used)
    model = f"Apple {platform.machine()}".strip()
    return GpuOffer(
        type=GpuType.METAL,
        model=model,
        memory_mb=total,
        free_memory_mb=free,
        index=0,
        busy=_busy(free, total, busy_fraction),
    )


# --------------------------------------------------------------------------- all of it


def detect_hardware(
    *,
    include_gpu: bool = True,
    storage_dir: str | os.PathLike[str] | None = None,
    env_profiles: Iterable[str] = (),
    isolation: IsolationLevel | str = IsolationLevel.NONE,
    network: NetworkOffer | None = None,
    include_codecs: bool = True,
    busy_free_fraction: float = BUSY_FREE_FRACTION,
) -> CapabilityOffer:
    """The :class:`CapabilityOffer` this machine can advertise right now (blocking I/O).

    ``storage_dir`` is the scratch directory whose free space is advertised (default: the
    temp directory); ``env_profiles`` and ``isolation`` are what the sandbox provides (see
    :attr:`Sandbox.profiles <crankmesh.executor.sandbox.Sandbox.profiles>` and
    :func:`~crankmesh.executor.sandbox.detect_isolation`); ``network`` is operator config.
    With ``include_gpu=False`` torch is never imported.  Run it in a worker thread from async
    code (:func:`anyio.to_thread.run_sync`).
    """
    gpus = detect_gpus(busy_free_fraction=busy_free_fraction) if include_gpu else ()
    has_cuda = any(g.type.value == "cuda" for g in gpus)
    level = isolation if isinstance(isolation, IsolationLevel) else IsolationLevel.parse(isolation)
    return CapabilityOffer(
        gpus=gpus,
        cpu=detect_cpu(),
        memory_mb=detect_memory_mb(),
        storage=detect_storage(storage_dir),
        network=network if network is not None else NetworkOffer(),
        codecs=detect_codecs(has_cuda_gpu=has_cuda) if include_codecs else {},
        frameworks=detect_frameworks(),
        env_profiles=tuple(env_profiles),
        isolation=level,
    )


def clear_cache() -> None:
    """Forget the cached static facts (CPU features, frameworks, codecs, storage medium)."""
    _cpu_identity.cache_clear()
    detect_frameworks.cache_clear()
    _ffmpeg_encoders_text.cache_clear()
    _storage_type_cached.cache_clear()


# --------------------------------------------------------------------------- changes


def _gib(mb: int | None) -> str:
    return "?" if mb is None else f"{mb / 1024:.1f}"


def _gib_total(mb: int | None) -> str:
    return "?" if mb is None else f"{mb / 1024:.0f}"


def _gpu_changes(old: GpuOffer | None, new: GpuOffer | None, gpu_fraction: float) -> list[str]:
    if old is None and new is None:
        return []
    if new is None:
        assert old is not None
        return [f"GPU {old.index} disappeared ({old.label})"]
    if old is None:
        return [f"GPU {new.index} appeared ({new.label}, {_gib(new.memory_mb)} GiB)"]
    i = new.index
    out: list[str] = []
    if (old.type, old.model, old.compute_capability) != (
        new.type,
        new.model,
        new.compute_capability,
    ):
        out.append(f"GPU {i} is now {new.label} (was {old.label})")
    if old.memory_mb != new.memory_mb:
        out.append(f"GPU {i} memory changed {_gib(old.memory_mb)} -> {_gib(new.memory_mb)} GiB")
    mem = f"free {_gib(new.free_memory_mb)} GiB of {_gib_total(new.memory_mb)}"
    if new.busy and not old.busy:
        out.append(f"GPU {i} busy ({mem})")
    elif old.busy and not new.busy:
        out.append(f"GPU {i} free again ({mem})")
    elif old.free_memory_mb != new.free_memory_mb and new.memory_mb:
        before = old.free_memory_mb if old.free_memory_mb is not None else new.memory_mb
        after = new.free_memory_mb if new.free_memory_mb is not None else new.memory_mb
        if abs(after - before) >= gpu_fraction * new.memory_mb:
            out.append(f"GPU {i} free memory {_gib(before)} -> {mem}")
    return out


def describe_changes(
    old: CapabilityOffer,
    new: CapabilityOffer,
    *,
    gpu_free_fraction: float = 0.10,
    storage_fraction: float = 0.10,
) -> list[str]:
    """What changed between two offers that is worth re-advertising, as short sentences.

    Free GPU memory counts when it moved by ``gpu_free_fraction`` of the GPU's memory (or
    crossed the busy threshold); free storage when it moved by ``storage_fraction``.
    Smaller wiggles are not changes.  Empty when nothing relevant changed.
    """
    out: list[str] = []
    old_gpus = {g.index: g for g in old.gpus}
    new_gpus = {g.index: g for g in new.gpus}
    for index in sorted(old_gpus.keys() | new_gpus.keys()):
        out.extend(_gpu_changes(old_gpus.get(index), new_gpus.get(index), gpu_free_fraction))
    if old.cpu != new.cpu:
        if old.cpu.cores != new.cpu.cores:
            out.append(f"cpu cores changed {old.cpu.cores} -> {new.cpu.cores}")
        if (old.cpu.arch, old.cpu.features) != (new.cpu.arch, new.cpu.features):
            out.append(f"cpu changed {old.cpu.to_wire()} -> {new.cpu.to_wire()}")
    if old.memory_mb != new.memory_mb:
        out.append(f"memory changed {old.memory_mb} -> {new.memory_mb} MiB")
    of, nf = old.storage.free_mb, new.storage.free_mb
    if (of is None) != (nf is None) or (
        of is not None and nf is not None and abs(nf - of) > storage_fraction * max(of, 1)
    ):
        out.append(f"storage free changed {_gib(of)} -> {_gib(nf)} GiB")
    if old.storage.type != new.storage.type:
        out.append("storage type changed")
    out.extend(_map_changes("codecs", old.codecs, new.codecs))
    out.extend(_map_changes("frameworks", old.frameworks, new.frameworks))
    if old.env_profiles != new.env_profiles:
        out.append(f"env profiles changed {list(old.env_profiles)} -> {list(new.env_profiles)}")
    if old.isolation != new.isolation:
        out.append(f"isolation changed {old.isolation.token} -> {new.isolation.token}")
    if old.network != new.network:
        out.append(f"network changed {old.network.to_wire()} -> {new.network.to_wire()}")
    if old.extensions != new.extensions:
        out.append("extensions changed")
    return out


def _map_changes(what: str, old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    parts: list[str] = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if a is None:
            parts.append(f"+{key} ({b})")
        elif b is None:
            parts.append(f"-{key}")
        else:
            parts.append(f"{key} {a} -> {b}")
    return [f"{what} changed: {', '.join(parts)}"] if parts else []


# --------------------------------------------------------------------------- monitor

#: ``on_change(old, new, changes)``; may be a plain or an async function.
OfferChangeCallback = Callable[
    [CapabilityOffer, CapabilityOffer, list[str]], Awaitable[None] | None
]


@dataclass(frozen=True, slots=True)
class _Thresholds:
    gpu_free_fraction: float
    storage_fraction: float


class HardwareMonitor:
    """Re-detects the offer periodically and on demand, and reports changes at once.

    ``detect`` is a blocking function returning the current offer (default:
    ``detect_hardware`` with ``detect_kwargs``); it runs in a worker thread.  ``on_change``
    is called with the offer last reported, the new one and the list of changes
    (:func:`describe_changes`) whenever something relevant changed.

    Usage (the node advertises ``monitor.offer`` and re-advertises in ``on_change``)::

        monitor = HardwareMonitor(on_change=readvertise, detect_kwargs={"isolation": "basic"})
        offer = await tg.start(monitor.run)      # first detection done; returns the offer
        ...
        monitor.request_check()                  # e.g. after a GPU job started or ended

    Resource handling: :meth:`run` owns nothing but its loop; cancel it to stop.

    Error handling: a detection that raises is logged and the previous offer is kept (the
    first detection's error propagates from :meth:`run`, before readiness); an
    ``on_change`` that raises is logged and the loop lives on.
    """

    def __init__(
        self,
        *,
        detect: Callable[[], CapabilityOffer] | None = None,
        detect_kwargs: Mapping[str, Any] | None = None,
        interval_s: float = 30.0,
        on_change: OfferChangeCallback | None = None,
        gpu_free_fraction: float = 0.10,
        storage_fraction: float = 0.10,
    ) -> None:
        if detect is not None and detect_kwargs:
            raise TypeError("give either 'detect' or 'detect_kwargs', not both")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s!r}")
        kwargs = dict(detect_kwargs or {})
        self._detect = detect or functools.partial(detect_hardware, **kwargs)
        self.interval_s = interval_s
        self.on_change = on_change
        self._thresholds = _Thresholds(gpu_free_fraction, storage_fraction)
        self._offer: CapabilityOffer | None = None
        self.latest: CapabilityOffer | None = None  # the last detected, reported or not
        self.checks = 0
        self.failures = 0
        self._lock = anyio.Lock()
        self._wake = anyio.Event()

    @property
    def offer(self) -> CapabilityOffer:
        """The offer last reported (what should be advertised)."""
        if self._offer is None:
            raise RuntimeError(
                "The hardware monitor has not detected anything yet; start it with "
                "`await tg.start(monitor.run)` or call `await monitor.check_now()`."
            )
        return self._offer

    def request_check(self) -> None:
        """Ask the running loop to re-detect now (safe to call from the event loop)."""
        self._wake.set()

    async def check_now(self) -> list[str]:
        """Detect now; report and return the changes (empty for none, and the first time)."""
        async with self._lock:
            new = await anyio.to_thread.run_sync(self._detect)
            self.checks += 1
            self.latest = new
            old = self._offer
            if old is None:
                self._offer = new
                return []
            changes = describe_changes(
                old,
                new,
                gpu_free_fraction=self._thresholds.gpu_free_fraction,
                storage_fraction=self._thresholds.storage_fraction,
            )
            if not changes:
                return []
            self._offer = new
            log.info("hardware changed: %s", "; ".join(changes))
            if self.on_change is not None:
                try:
                    maybe = self.on_change(old, new, changes)
                    if inspect.isawaitable(maybe):
                        await maybe
                except Exception:
                    log.exception("hardware on_change callback failed")
            return changes

    async def run(
        self, *, task_status: TaskStatus[CapabilityOffer] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Detect once, report readiness with the offer, then re-detect until cancelled."""
        if self._offer is None:
            await self.check_now()
        task_status.started(self.offer)
        while True:
            with anyio.move_on_after(self.interval_s):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.check_now()
            except Exception:
                self.failures += 1
                log.exception("hardware detection failed; keeping the previous offer")
