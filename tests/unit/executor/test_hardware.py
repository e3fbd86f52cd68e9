from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Any

import anyio
import pytest

from crankmesh.capabilities import (
    CapabilityOffer,
    CodecSupport,
    CpuOffer,
    GpuOffer,
    GpuType,
    IsolationLevel,
    StorageOffer,
)
from crankmesh.executor import hardware
from crankmesh.executor.hardware import (
    HardwareMonitor,
    describe_changes,
    detect_hardware,
    parse_ffmpeg_encoders,
)

FFMPEG_ENCODERS = """\
Encoders:
 V..... = Video
 A..... = Audio
 ------
 V....D libx264              libx264 H.264 / AVC / MPEG-4 AVC / MPEG-4 part 10 (codec h264)
 V....D h264_nvenc           NVIDIA NVENC H.264 encoder (codec h264)
 V....D h264_vaapi           H.264/AVC (VAAPI) (codec h264)
 V....D libx265              libx265 H.265 / HEVC (codec hevc)
 V....D hevc_nvenc           NVIDIA NVENC hevc encoder (codec hevc)
 V....D libvpx-vp9           libvpx VP9 (codec vp9)
 V....D vp9_vaapi            VP9 (VAAPI) (codec vp9)
 V....D libsvtav1            SVT-AV1(Scalable Video Technology for AV1) encoder (codec av1)
 V....D av1_qsv              AV1 (Intel Quick Sync Video acceleration) (codec av1)
 V....D h264_videotoolbox    VideoToolbox H.264 Encoder (codec h264)
 V....D mpeg4                MPEG-4 part 2
 A....D aac                  AAC (Advanced Audio Coding)
"""


def test_detect_without_gpu_describes_this_machine() -> None:
    offer = detect_hardware(include_gpu=False, env_profiles=("python-core",), isolation="basic")
    assert offer.gpus == ()
    assert offer.cpu.cores is not None and offer.cpu.cores >= 1
    assert offer.cpu.cores <= (os.cpu_count() or 1)
    assert offer.cpu.arch is not None and offer.cpu.arch == offer.cpu.arch.lower()
    assert offer.memory_mb is not None and offer.memory_mb > 64
    assert offer.storage.free_mb is not None and offer.storage.free_mb >= 0
    assert offer.env_profiles == ("python-core",)
    assert offer.isolation is IsolationLevel.BASIC
    # The wire form round-trips through the strict parser.
    assert CapabilityOffer.from_wire(offer.to_wire()) == offer


def test_frameworks_come_from_package_metadata() -> None:
    frameworks = hardware.detect_frameworks()
    try:
        import importlib.metadata

        numpy_version = importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        numpy_version = None
    assert frameworks.get("numpy") == numpy_version
    assert set(frameworks) <= {"pytorch", "tensorflow", "onnx", "numpy"}


def test_storage_of_a_given_directory(tmp_path: Any) -> None:
    offer = detect_hardware(include_gpu=False, storage_dir=tmp_path)
    assert offer.storage.free_mb is not None
    assert hardware.detect_storage(tmp_path / "missing") == StorageOffer()


def test_without_gpu_torch_is_never_imported() -> None:
    code = (
        "import sys\n"
        "from crankmesh.executor.hardware import detect_hardware\n"
        "detect_hardware(include_gpu=False)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_static_facts_are_cached() -> None:
    hardware.clear_cache()
    first = hardware.detect_frameworks()
    assert hardware.detect_frameworks() is first
    assert hardware.detect_cpu() == hardware.detect_cpu()
    hardware.clear_cache()
    assert hardware.detect_frameworks() == first


def test_parse_ffmpeg_encoders_hardware_only_with_device() -> None:
    all_hw = parse_ffmpeg_encoders(FFMPEG_ENCODERS)
    assert all_hw == {
        "h264": CodecSupport.HARDWARE,
        "h265": CodecSupport.HARDWARE,
        "vp9": CodecSupport.HARDWARE,
        "av1": CodecSupport.HARDWARE,
    }
    none = parse_ffmpeg_encoders(FFMPEG_ENCODERS, hardware_backends=())
    assert none == {
        "h264": CodecSupport.SOFTWARE,
        "h265": CodecSupport.SOFTWARE,
        "vp9": CodecSupport.SOFTWARE,
        "av1": CodecSupport.SOFTWARE,
    }
    nvenc = parse_ffmpeg_encoders(FFMPEG_ENCODERS, hardware_backends={"nvenc"})
    assert nvenc["h264"] is CodecSupport.HARDWARE and nvenc["vp9"] is CodecSupport.SOFTWARE
    assert parse_ffmpeg_encoders("") == {}
    # The result is a valid offer (hevc is spelled h265 in the taxonomy).
    assert CapabilityOffer(codecs=nvenc).codecs["h265"] is CodecSupport.HARDWARE


def _gpu(index: int = 0, free: int = 20_000, busy: bool = False) -> GpuOffer:
    return GpuOffer(
        type=GpuType.CUDA,
        model="RTX 4090",
        memory_mb=24_576,
        free_memory_mb=free,
        index=index,
        busy=busy,
    )


BASE = CapabilityOffer(
    gpus=(_gpu(0), _gpu(1)),
    cpu=CpuOffer(cores=16, arch="x86_64"),
    memory_mb=65_536,
    storage=StorageOffer(free_mb=100_000),
)


def test_describe_changes() -> None:
    assert describe_changes(BASE, BASE) == []
    gone = dataclasses.replace(BASE, gpus=(_gpu(0),))
    assert describe_changes(BASE, gone) == ["GPU 1 disappeared (cuda RTX 4090 #1)"]
    assert describe_changes(gone, BASE)[0].startswith("GPU 1 appeared")
    busy = dataclasses.replace(BASE, gpus=(_gpu(0, free=100, busy=True), _gpu(1)))
    assert describe_changes(BASE, busy) == ["GPU 0 busy (free 0.1 GiB of 24)"]
    assert describe_changes(busy, BASE) == ["GPU 0 free again (free 19.5 GiB of 24)"]
    # Small wiggles are not changes; big ones are.
    wiggle = dataclasses.replace(
        BASE,
        gpus=(_gpu(0, free=19_000), _gpu(1)),
        storage=StorageOffer(free_mb=99_000),
    )
    assert describe_changes(BASE, wiggle) == []
    drop = dataclasses.replace(BASE, gpus=(_gpu(0, free=8_000), _gpu(1)))
    assert describe_changes(BASE, drop) == ["GPU 0 free memory 19.5 -> free 7.8 GiB of 24"]
    more = dataclasses.replace(
        BASE,
        memory_mb=32_768,
        cpu=CpuOffer(cores=8, arch="x86_64"),
        frameworks={"pytorch": "2.3.0"},
        isolation=IsolationLevel.STRICT,
    )
    assert describe_changes(BASE, more) == [
        "cpu cores changed 16 -> 8",
        "memory changed 65536 -> 32768 MiB",
        "frameworks changed: +pytorch (2.3.0)",
        "isolation changed none -> strict",
    ]


class FakeDetector:
    """A detection function whose answer the test changes (a GPU comes and goes)."""

    def __init__(self, offer: CapabilityOffer) -> None:
        self.offer = offer
        self.calls = 0
        self.fail_times = 0

    def __call__(self) -> CapabilityOffer:
        self.calls += 1
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("driver fell over")
        return self.offer


@pytest.mark.anyio
async def test_monitor_reports_a_gpu_disappearing_at_once() -> None:
    detector = FakeDetector(BASE)
    seen: list[tuple[CapabilityOffer, CapabilityOffer, list[str]]] = []
    changed = anyio.Event()

    async def on_change(old: CapabilityOffer, new: CapabilityOffer, changes: list[str]) -> None:
        seen.append((old, new, changes))
        changed.set()

    monitor = HardwareMonitor(detect=detector, interval_s=3600, on_change=on_change)
    with pytest.raises(RuntimeError):
        _ = monitor.offer
    async with anyio.create_task_group() as tg:
        first = await tg.start(monitor.run)
        assert first == BASE and monitor.offer == BASE
        detector.offer = dataclasses.replace(BASE, gpus=(_gpu(0),))
        monitor.request_check()  # on demand, not after the hour-long interval
        with anyio.fail_after(5):
            await changed.wait()
        tg.cancel_scope.cancel()
    assert seen == [(BASE, detector.offer, ["GPU 1 disappeared (cuda RTX 4090 #1)"])]
    assert monitor.offer == detector.offer


@pytest.mark.anyio
async def test_monitor_periodic_check_survives_failures() -> None:
    detector = FakeDetector(BASE)
    busy = dataclasses.replace(BASE, gpus=(_gpu(0, free=50, busy=True), _gpu(1)))
    calls: list[list[str]] = []
    done = anyio.Event()

    def on_change(old: CapabilityOffer, new: CapabilityOffer, changes: list[str]) -> None:
        calls.append(changes)
        if len(calls) == 1:
            detector.offer = BASE  # the GPU frees up again by the next check
            raise ValueError("a broken callback is logged, not fatal")
        done.set()

    monitor = HardwareMonitor(detect=detector, interval_s=0.01, on_change=on_change)
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        detector.fail_times = 2  # two periodic checks fail: the last good offer is kept
        detector.offer = busy
        with anyio.fail_after(5):
            await done.wait()
        tg.cancel_scope.cancel()
    assert monitor.failures == 2
    assert calls == [
        ["GPU 0 busy (free 0.0 GiB of 24)"],
        ["GPU 0 free again (free 19.5 GiB of 24)"],
    ]
    assert monitor.offer == BASE


@pytest.mark.anyio
async def test_check_now_without_the_loop() -> None:
    detector = FakeDetector(BASE)
    monitor = HardwareMonitor(detect=detector)
    assert await monitor.check_now() == []
    detector.offer = dataclasses.replace(BASE, memory_mb=1024)
    assert await monitor.check_now() == ["memory changed 65536 -> 1024 MiB"]
    assert monitor.checks == 2
    detector.fail_times = 1
    with pytest.raises(RuntimeError):
        await monitor.check_now()
    assert monitor.offer == detector.offer
    with pytest.raises(TypeError):
        HardwareMonitor(detect=detector, detect_kwargs={"include_gpu": False})


@pytest.mark.anyio
async def test_monitor_with_real_detection() -> None:
    monitor = HardwareMonitor(detect_kwargs={"include_gpu": False}, interval_s=3600)
    async with anyio.create_task_group() as tg:
        offer = await tg.start(monitor.run)
        tg.cancel_scope.cancel()
    assert offer.cpu.cores


@pytest.mark.gpu
def test_cuda_gpu_is_detected() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    offer = detect_hardware()
    cuda = [g for g in offer.gpus if g.type is GpuType.CUDA]
    assert len(cuda) == torch.cuda.device_count()
    for gpu in cuda:
        assert gpu.memory_mb and gpu.memory_mb > 1024
        assert gpu.free_memory_mb is not None and gpu.free_memory_mb <= gpu.memory_mb
        major, minor = torch.cuda.get_device_capability(gpu.index)
        assert gpu.compute_capability == (major, minor)
        assert gpu.model == torch.cuda.get_device_name(gpu.index)
    assert CapabilityOffer.from_wire(offer.to_wire()) == offer
