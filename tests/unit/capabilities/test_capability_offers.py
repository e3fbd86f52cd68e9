"""Seed 003, "Executor Capability Advertising": parsing offers, their wire form, updates."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from crankmesh.capabilities import (
    CapabilityOffer,
    CapabilitySpecError,
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

# --------------------------------------------------------------------------- seed scenarios


def test_advertise_gpu_capabilities() -> None:
    offer = CapabilityOffer.parse({"gpu": {"type": "cuda", "model": "RTX 4090", "memory_gb": 24}})
    assert offer.gpus == (GpuOffer(type=GpuType.CUDA, model="RTX 4090", memory_mb=24 * 1024),)
    assert offer.to_wire() == {
        "gpus": [{"index": 0, "type": "cuda", "model": "RTX 4090", "memory_mb": 24576}]
    }


def test_advertise_cpu_and_memory() -> None:
    offer = CapabilityOffer.parse({"cpu": {"cores": 16, "arch": "x86_64"}, "memory_gb": 64})
    assert offer.cpu == CpuOffer(cores=16, arch="x86_64")
    assert offer.memory_mb == 65536
    assert offer.to_wire() == {"cpu": {"cores": 16, "arch": "x86_64"}, "memory_mb": 65536}


def test_advertise_codec_support() -> None:
    offer = CapabilityOffer.parse({"codecs": {"h264": "hardware", "vp9": "software"}})
    assert dict(offer.codecs) == {"h264": CodecSupport.HARDWARE, "vp9": CodecSupport.SOFTWARE}
    assert offer.to_wire() == {"codecs": {"h264": "hardware", "vp9": "software"}}


def test_dynamic_capability_updates_mark_a_gpu_busy_and_free_again() -> None:
    offer = CapabilityOffer.parse({"gpu": {"type": "cuda", "memory_gb": 24, "count": 2}})
    assert [g.index for g in offer.free_gpus] == [0, 1]
    busy = offer.with_gpu_busy(1)
    assert [g.index for g in busy.free_gpus] == [0]
    assert busy.to_wire()["gpus"] == [
        {"index": 0, "type": "cuda", "memory_mb": 24576},
        {"index": 1, "type": "cuda", "memory_mb": 24576, "busy": True},
    ]
    assert busy.with_gpu_busy(1, busy=False) == offer
    assert offer.free_gpus == offer.gpus  # the original is untouched
    with pytest.raises(KeyError, match="no GPU with index 7"):
        offer.with_gpu_busy(7)


# --------------------------------------------------------------------------- the taxonomy


def test_every_standard_type_parses_and_round_trips() -> None:
    offer = CapabilityOffer.parse(
        {
            "gpus": [
                {
                    "type": "cuda",
                    "model": "A100",
                    "memory_gb": 80,
                    "free_memory_gb": 60.5,
                    "compute_capability": "8.0",
                },
                {"type": "metal", "model": "M2 Max", "memory_mb": 32768},
            ],
            "cpu": {"cores": 64, "arch": "amd64", "features": ["AVX2", "avx512f", "avx2"]},
            "memory_gb": 512,
            "storage": {"free_gb": 1.5, "type": "nvme"},
            "network": {"bandwidth_mbps": 10000, "egress": True, "region": "EU-West-1"},
            "codecs": {"AVC": "hw", "hevc": "hardware", "av1": "sw"},
            "frameworks": {"torch": "2.13.0+cpu", "TensorFlow": "2.16.1", "onnx": "1.16.0"},
            "env_profiles": ["ml-torch", "default"],
            "isolation": "standard",
        }
    )
    a100, m2 = offer.gpus
    assert a100.compute_capability == ComputeCapability(8, 0)
    assert a100.free_memory_mb == 61952 and a100.available_memory_mb == 61952
    assert m2.type is GpuType.METAL and m2.index == 1 and m2.compute_capability is None
    assert offer.cpu == CpuOffer(cores=64, arch="x86_64", features=("avx2", "avx512f"))
    assert offer.storage == StorageOffer(free_mb=1536, type=StorageType.NVME)
    assert offer.network == NetworkOffer(bandwidth_mbps=10000, egress=True, region="eu-west-1")
    assert list(offer.codecs) == ["av1", "h264", "h265"]
    assert dict(offer.frameworks) == {
        "onnx": "1.16.0",
        "pytorch": "2.13.0+cpu",
        "tensorflow": "2.16.1",
    }
    assert offer.env_profiles == ("default", "ml-torch")
    assert offer.isolation is IsolationLevel.STANDARD
    wire = offer.to_wire()
    assert wire["gpus"][0] == {  # type: ignore[index]
        "index": 0,
        "type": "cuda",
        "model": "A100",
        "memory_mb": 81920,
        "free_memory_mb": 61952,
        "compute_capability": "8.0",
    }
    assert wire["storage"] == {"free_mb": 1536, "type": "nvme"}
    assert wire["isolation"] == "standard"
    assert CapabilityOffer.from_wire(wire) == offer
    assert CapabilityOffer.parse(wire) == offer  # the wire form is valid human input too


@pytest.mark.parametrize(
    ("alias", "token"),
    [
        ("nvidia", GpuType.CUDA),
        ("AMD", GpuType.ROCM),
        ("hip", GpuType.ROCM),
        ("mps", GpuType.METAL),
    ],
)
def test_gpu_type_aliases(alias: str, token: GpuType) -> None:
    assert CapabilityOffer.parse({"gpu": {"type": alias}}).gpus[0].type is token


@pytest.mark.parametrize("cc", ["8.6", 8.6, [8, 6], (8, 6)])
def test_compute_capability_spellings(cc: object) -> None:
    offer = CapabilityOffer.parse({"gpu": {"type": "cuda", "compute_capability": cc}})
    assert offer.gpus[0].compute_capability == ComputeCapability(8, 6)
    assert offer.to_wire()["gpus"] == [{"index": 0, "type": "cuda", "compute_capability": "8.6"}]


def test_compute_capability_integer_and_ordering() -> None:
    assert ComputeCapability.parse(9) == ComputeCapability(9, 0)
    assert ComputeCapability(7, 5) < ComputeCapability(8, 0) < ComputeCapability(8, 6)
    assert str(ComputeCapability(12, 0)) == "12.0"


def test_region_may_be_given_at_the_top_level() -> None:
    offer = CapabilityOffer.parse({"region": "us-east-1", "network": {"egress": True}})
    assert offer.network == NetworkOffer(egress=True, region="us-east-1")
    with pytest.raises(CapabilitySpecError, match="give the region once"):
        CapabilityOffer.parse({"region": "a", "network": {"region": "b"}})


def test_gpu_count_expands_into_indexed_gpus_and_lists_mix() -> None:
    offer = CapabilityOffer.parse({"gpu": {"type": "rocm", "count": 3}})
    assert [g.index for g in offer.gpus] == [0, 1, 2]
    offer = CapabilityOffer.parse({"gpus": [{"type": "cuda", "index": 3}, {"type": "cuda"}]})
    assert [g.index for g in offer.gpus] == [1, 3]


def test_codec_list_counts_as_software_and_single_profile_is_accepted() -> None:
    offer = CapabilityOffer.parse({"codecs": ["h264", "opus"], "env_profile": "default"})
    assert dict(offer.codecs) == {"h264": CodecSupport.SOFTWARE, "opus": CodecSupport.SOFTWARE}
    assert offer.env_profiles == ("default",)


def test_framework_versions_are_kept_even_when_not_pep440() -> None:
    # Matching explains an unparseable version; advertising it must not fail.
    offer = CapabilityOffer.parse({"frameworks": {"my_lib": "nightly-2024"}})
    assert dict(offer.frameworks) == {"my-lib": "nightly-2024"}


def test_empty_offer() -> None:
    offer = CapabilityOffer.parse({})
    assert offer == CapabilityOffer()
    assert offer.to_wire() == {}
    assert CapabilityOffer.from_wire({}) == offer


def test_models_are_immutable_hashable_and_picklable() -> None:
    offer = CapabilityOffer.parse({"gpu": {"type": "cuda"}, "codecs": {"h264": "hardware"}})
    with pytest.raises(AttributeError):
        offer.memory_mb = 3  # type: ignore[misc]
    assert hash(offer) == hash(CapabilityOffer.from_wire(offer.to_wire()))
    assert pickle.loads(pickle.dumps(offer)) == offer
    assert len({offer, CapabilityOffer.from_wire(offer.to_wire())}) == 1


def test_direct_construction_normalises_and_validates() -> None:
    offer = CapabilityOffer(
        gpus=(GpuOffer(GpuType.CUDA, index=1), GpuOffer(GpuType.CUDA, index=0)),
        codecs={"AVC": CodecSupport.HARDWARE},
        frameworks={"torch": "2.1"},
        env_profiles=("b", "a", "b"),
    )
    assert [g.index for g in offer.gpus] == [0, 1]
    assert dict(offer.codecs) == {"h264": CodecSupport.HARDWARE}
    assert dict(offer.frameworks) == {"pytorch": "2.1"}
    assert offer.env_profiles == ("a", "b")
    with pytest.raises(CapabilitySpecError, match="two GPUs have index 0"):
        CapabilityOffer(gpus=(GpuOffer(GpuType.CUDA), GpuOffer(GpuType.ROCM)))
    with pytest.raises(CapabilitySpecError, match="more than the 1024 MiB total"):
        GpuOffer(GpuType.CUDA, memory_mb=1024, free_memory_mb=2048)
    with pytest.raises(CapabilitySpecError, match="memory_mb"):
        CapabilityOffer(memory_mb=-1)


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("data", "path", "problem"),
    [
        ([1, 2], "offer", "expected a mapping"),
        ({"gpu": {"model": "RTX 4090"}}, "offer.gpu.type", "say which platform"),
        ({"gpu": {"type": "tpu"}}, "offer.gpu.type", "expected one of: cuda, metal, rocm"),
        ({"gpu": {"type": "cuda", "memory_gb": -1}}, "offer.gpu.memory_gb", "non-negative"),
        ({"gpu": {"type": "cuda", "memory_gb": "lots"}}, "offer.gpu.memory_gb", "'lots'"),
        ({"gpu": {"type": "cuda", "memory_gb": float("nan")}}, "offer.gpu.memory_gb", "nan"),
        ({"gpu": {"type": "cuda", "memory_gb": True}}, "offer.gpu.memory_gb", "boolean"),
        ({"gpu": {"type": "cuda", "memory_gb": 8, "memory_mb": 8192}}, "offer.gpu", "only one"),
        ({"gpu": {"type": "cuda", "count": 0}}, "offer.gpu.count", "integer ≥ 1"),
        ({"gpu": {"type": "cuda", "count": 2, "index": 0}}, "offer.gpu", "'index' or 'count'"),
        ({"gpu": {"type": "cuda", "vram": 8}}, "offer.gpu.vram", "unknown gpu key 'vram'"),
        ({"gpus": [{"type": "cuda"}, "x"]}, "offer.gpus[1]", "expected a mapping"),
        ({"gpus": [{"type": "cuda", "index": 0}] * 2}, "offer.gpus", "two GPUs have index 0"),
        ({"gpu": {"type": "cuda", "compute_capability": "sm_86"}}, "compute_capability", "8.6"),
        ({"gpu": {"type": "cuda", "busy": "yes"}}, "offer.gpu.busy", "true or false"),
        ({"cpu": {"cores": 2.5}}, "offer.cpu.cores", "integer"),
        ({"cpu": {"arch": "x86 64"}}, "offer.cpu.arch", "not a valid cpu architecture"),
        ({"cpu": 4}, "offer.cpu", "expected a mapping"),
        ({"memroy_gb": 16}, "offer.memroy_gb", "did you mean 'memory_gb'?"),
        ({"storage": {"type": "tape"}}, "offer.storage.type", "hdd, nvme, ssd"),
        ({"network": {"egress": 1}}, "offer.network.egress", "true or false"),
        ({"codecs": {"h264": "fast"}}, "offer.codecs.h264", "unknown codec support"),
        ({"codecs": {"h264": "hardware", "avc": "software"}}, "offer.codecs.h264", "twice"),
        ({"codecs": "h264"}, "offer.codecs", "expected a mapping"),
        ({"frameworks": ["pytorch"]}, "offer.frameworks", "installed version"),
        ({"frameworks": {"torch": "2.1", "pytorch": "2.2"}}, "offer.frameworks.pytorch", "twice"),
        ({"frameworks": {"pytorch": 2.1}}, "offer.frameworks.pytorch", "expected a string"),
        ({"isolation": "paranoid"}, "offer.isolation", "none, standard, strict"),
        ({"env_profiles": ["ok", "not ok"]}, "offer.env_profiles[1]", "env profile"),
        ({"extensions": {"tpu": {"hbm": 1.5}}}, "offer.extensions.tpu.hbm", "floats cannot"),
        ({"extensions": {"GPU": 1}}, "offer.extensions", "lower-case identifier"),
        ({"extensions": {"gpu": 1}}, "offer.extensions", "standard type"),
        ({"quantum": {"qubits": 5}}, "offer.quantum", "unknown capability key 'quantum'"),
        ({1: 2}, "offer", "keys must be strings"),
    ],
)
def test_malformed_offers_are_explained(data: Any, path: str, problem: str) -> None:
    with pytest.raises(CapabilitySpecError) as info:
        CapabilityOffer.parse(data)
    assert isinstance(info.value, ValueError)
    assert info.value.path.endswith(path) or info.value.path == path, info.value
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("wire", "problem"),
    [
        ({"memory_mb": 1024.0}, "expected an integer"),
        ({"memory_gb": 1}, "unknown capability key 'memory_gb'"),
        ({"gpu": {"type": "cuda"}}, "unknown capability key 'gpu'"),
        ({"gpus": {"type": "cuda", "index": 0}}, "expected a list"),
        ({"gpus": [{"type": "cuda", "index": 0, "memory_gb": 8}]}, "unknown gpu key"),
        ({"gpus": [{"type": "cuda", "index": 0, "count": 2}]}, "unknown gpu key 'count'"),
        ({"gpus": [{"type": "cuda", "compute_capability": 8.6}]}, "compute capability"),
        ({"gpus": [{"type": "cuda", "compute_capability": [8, 6]}]}, "compute capability"),
        ({"storage": {"free_gb": 3}}, "unknown storage key"),
        ({"region": "eu"}, "unknown capability key 'region'"),
        ({"codecs": ["h264"]}, "expected a mapping"),
        ({"env_profiles": "default"}, "expected a list"),
        ({"extensions": {"tpu": 0.5}}, "floats cannot go on the wire"),
        ({"cpu": {"cores": True}}, "expected an integer"),
        ({"memory_mb": 2**64}, "expected an integer"),
    ],
)
def test_from_wire_is_strict(wire: dict[str, Any], problem: str) -> None:
    with pytest.raises(CapabilitySpecError, match=problem):
        CapabilityOffer.from_wire(wire)


def test_from_wire_accepts_any_extension_name_and_tuples() -> None:
    offer = CapabilityOffer.from_wire(
        {"extensions": {"quantum": {"qubits": 127, "gates": ("cx", "rz")}}, "cpu": {"cores": 2}}
    )
    assert offer.to_wire() == {
        "cpu": {"cores": 2},
        "extensions": {"quantum": {"gates": ["cx", "rz"], "qubits": 127}},
    }


def test_error_pickles_with_its_fields() -> None:
    err = CapabilitySpecError("offer.gpu.type", "missing")
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.problem, str(again)) == (err.path, err.problem, str(err))
