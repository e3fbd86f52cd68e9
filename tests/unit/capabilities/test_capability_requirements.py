"""Seed 003, "Node Capability Requirements": parsing requirements and their wire form."""

from __future__ import annotations

from typing import Any

import pytest

from crankmesh.capabilities import (
    CapabilitySpecError,
    CodecNeed,
    ComputeCapability,
    CpuRequirement,
    GpuRequirement,
    GpuType,
    IsolationLevel,
    NetworkRequirement,
    Requirements,
    RequirementSet,
    SpecifierSet,
    StorageRequirement,
    StorageType,
)

# --------------------------------------------------------------------------- seed scenarios


def test_declare_gpu_requirement() -> None:
    req = Requirements.parse({"gpu": {"type": "cuda", "min_memory_gb": 8}})
    assert req.required.gpu == GpuRequirement(type=GpuType.CUDA, min_memory_mb=8192)
    assert not req.preferred
    assert req.to_wire() == {"gpu": {"type": "cuda", "min_memory_mb": 8192}}


def test_declare_cpu_and_memory_requirements() -> None:
    req = Requirements.parse({"cpu": {"cores": 4}, "memory_gb": 16})
    assert req.required.cpu == CpuRequirement(min_cores=4)
    assert req.required.memory_mb == 16384
    assert req.to_wire() == {"cpu": {"cores": 4}, "memory_mb": 16384}


def test_declare_codec_requirements() -> None:
    req = Requirements.parse({"codecs": ["h264", "vp9"], "hardware_accel": True})
    assert dict(req.required.codecs) == {"h264": CodecNeed.HARDWARE, "vp9": CodecNeed.HARDWARE}
    assert req.to_wire() == {"codecs": {"h264": "hardware", "vp9": "hardware"}}
    plain = Requirements.parse({"codecs": ["h264", "vp9"]})
    assert dict(plain.required.codecs) == {"h264": CodecNeed.ANY, "vp9": CodecNeed.ANY}
    off = Requirements.parse({"codecs": ["h264"], "hardware_accel": False})
    assert dict(off.required.codecs) == {"h264": CodecNeed.ANY}


def test_optional_vs_required_capabilities() -> None:
    req = Requirements.parse({"gpu": {"required": False, "preferred": True}})
    assert req.required.gpu is None
    assert req.preferred.gpu == GpuRequirement()
    assert req.to_wire() == {"preferred": {"gpu": {}}}


@pytest.mark.parametrize(
    ("flags", "preferred"),
    [
        ({}, False),
        ({"required": True}, False),
        ({"required": True, "preferred": True}, False),
        ({"preferred": True}, True),
        ({"required": False}, True),
        ({"preferred": False}, False),
    ],
)
def test_inline_necessity_flags(flags: dict[str, bool], preferred: bool) -> None:
    req = Requirements.parse({"cpu": {"cores": 2, **flags}})
    assert (req.preferred.cpu is not None) is preferred
    assert (req.required.cpu is not None) is not preferred


# --------------------------------------------------------------------------- the taxonomy


def test_every_standard_type_and_the_preferred_section() -> None:
    req = Requirements.parse(
        {
            "gpu": {
                "type": "nvidia",
                "model": "A100",
                "memory_gb": 40,
                "min_compute_capability": "8.0",
                "count": 2,
            },
            "cpu": {"min_cores": 8, "arch": "arm64", "features": ["NEON"]},
            "min_memory_gb": 0.5,
            "storage": {"min_free_gb": 100, "type": "ssd"},
            "network": {"bandwidth_mbps": 1000, "egress": False},
            "region": ["EU-west", "eu-central"],
            "codecs": {"av1": "hardware", "opus": "software"},
            "frameworks": {"torch": ">=2.1,<3", "numpy": None, "onnx": "~=1.16"},
            "isolation": "strict",
            "env_profile": "ml-torch",
            "preferred": {"memory_gb": 64, "region": "eu-west-1", "isolation": "standard"},
        }
    )
    r = req.required
    assert r.gpu == GpuRequirement(
        type=GpuType.CUDA,
        model="A100",
        min_memory_mb=40960,
        min_compute_capability=ComputeCapability(8, 0),
        count=2,
    )
    assert r.cpu == CpuRequirement(min_cores=8, arch="aarch64", features=("neon",))
    assert r.memory_mb == 512
    assert r.storage == StorageRequirement(min_free_mb=102400, min_type=StorageType.SSD)
    assert r.network == NetworkRequirement(min_bandwidth_mbps=1000, egress=False)
    assert r.regions == ("eu-central", "eu-west")
    assert dict(r.codecs) == {"av1": CodecNeed.HARDWARE, "opus": CodecNeed.ANY}
    assert {k: str(v) for k, v in r.frameworks.items()} == {
        "numpy": "",
        "onnx": "~=1.16",
        "pytorch": ">=2.1,<3",
    }
    assert r.isolation is IsolationLevel.STRICT
    assert r.env_profile == "ml-torch"
    assert req.preferred == RequirementSet(
        memory_mb=65536, regions=("eu-west-1",), isolation=IsolationLevel.STANDARD
    )
    wire = req.to_wire()
    assert wire == {
        "gpu": {
            "type": "cuda",
            "model": "A100",
            "min_memory_mb": 40960,
            "min_compute_capability": "8.0",
            "count": 2,
        },
        "cpu": {"cores": 8, "arch": "aarch64", "features": ["neon"]},
        "storage": {"min_free_mb": 102400, "type": "ssd"},
        "network": {"min_bandwidth_mbps": 1000, "egress": False},
        "memory_mb": 512,
        "region": ["eu-central", "eu-west"],
        "codecs": {"av1": "hardware", "opus": "any"},
        "frameworks": {"numpy": "", "onnx": "~=1.16", "pytorch": ">=2.1,<3"},
        "isolation": "strict",
        "env_profile": "ml-torch",
        "preferred": {"memory_mb": 65536, "region": ["eu-west-1"], "isolation": "standard"},
    }
    assert Requirements.from_wire(wire) == req
    assert Requirements.parse(wire) == req


def test_framework_capabilities_with_version_constraints() -> None:
    req = Requirements.parse(
        {"frameworks": {"pytorch": ">=2.1,<3", "tensorflow": "==2.16.*", "onnx": True}}
    )
    assert req.required.frameworks["pytorch"] == SpecifierSet.parse(">=2.1,<3")
    assert req.required.frameworks["tensorflow"].contains("2.16.1")
    assert not req.required.frameworks["onnx"]  # any version
    listed = Requirements.parse({"frameworks": ["torch", "numpy"]})
    assert list(listed.required.frameworks) == ["numpy", "pytorch"]


def test_gpu_shorthands() -> None:
    assert Requirements.parse({"gpu": True}).required.gpu == GpuRequirement()
    assert Requirements.parse({"gpu": "rocm"}).required.gpu == GpuRequirement(type=GpuType.ROCM)
    cc = Requirements.parse({"gpu": {"compute_capability": 8.6}}).required.gpu
    assert cc == GpuRequirement(min_compute_capability=ComputeCapability(8, 6))
    assert Requirements.parse({"cpu": 4}).required.cpu == CpuRequirement(min_cores=4)


def test_describe_gpu_requirement() -> None:
    assert GpuRequirement().describe() == "a gpu"
    assert GpuRequirement(type=GpuType.CUDA).describe() == "gpu type cuda"
    full = GpuRequirement(
        type=GpuType.CUDA,
        model="4090",
        min_memory_mb=8192,
        min_compute_capability=ComputeCapability(8, 9),
        count=2,
    )
    assert full.describe() == (
        "2 × gpu type cuda with model '4090' and memory_gb ≥ 8 and compute_capability ≥ 8.9"
    )


def test_empty_requirements_are_falsy_and_round_trip() -> None:
    req = Requirements.parse({})
    assert not req and req == Requirements()
    assert req.to_wire() == {}
    assert Requirements.from_wire({}) == req
    assert Requirements.parse({"preferred": {}}) == req


def test_null_values_count_as_absent() -> None:
    assert Requirements.parse({"gpu": None, "memory_gb": None}) == Requirements()


def test_direct_construction_coerces_and_validates() -> None:
    rs = RequirementSet(
        codecs={"AVC": CodecNeed.HARDWARE},
        frameworks={"torch": ">=2"},  # type: ignore[dict-item]
        regions=("EU",),
    )
    assert list(rs.codecs) == ["h264"] and rs.regions == ("eu",)
    assert rs.frameworks["pytorch"] == SpecifierSet.parse(">=2")
    with pytest.raises(CapabilitySpecError, match="count"):
        GpuRequirement(count=0)
    with pytest.raises(CapabilitySpecError, match="frameworks.pytorch"):
        RequirementSet(frameworks={"pytorch": "2.1"})  # type: ignore[dict-item]
    with pytest.raises(CapabilitySpecError, match="expected a GpuRequirement"):
        RequirementSet(gpu="cuda")  # type: ignore[arg-type]
    assert hash(Requirements(required=rs)) == hash(Requirements(required=rs))


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("data", "path", "problem"),
    [
        ("gpu", "requirements", "expected a mapping of requirements"),
        ({"gpus": {"type": "cuda"}}, "requirements.gpus", "did you mean 'gpu'?"),
        ({"memroy_gb": 16}, "requirements.memroy_gb", "did you mean 'memory_gb'?"),
        ({"tpu": {"cores": 8}}, "requirements.tpu", "unknown requirement key 'tpu'"),
        ({"gpu": False}, "requirements.gpu", "leave 'gpu' out"),
        ({"gpu": {"type": "cuda", "vram_gb": 8}}, "requirements.gpu.vram_gb", "unknown gpu key"),
        ({"gpu": {"type": "opencl"}}, "requirements.gpu.type", "unknown gpu type 'opencl'"),
        ({"gpu": {"min_memory_gb": -8}}, "requirements.gpu.min_memory_gb", "non-negative"),
        ({"gpu": {"min_memory_gb": 8, "memory_gb": 8}}, "requirements.gpu", "give only one"),
        ({"gpu": {"count": 0}}, "requirements.gpu.count", "integer ≥ 1"),
        ({"gpu": {"min_compute_capability": "ampere"}}, "min_compute_capability", "'8.6'"),
        ({"gpu": {"required": "no"}}, "requirements.gpu.required", "true or false"),
        (
            {"gpu": {"required": False, "preferred": False}},
            "requirements.gpu",
            "asks for nothing",
        ),
        ({"memory_gb": 16, "memory_mb": 100}, "requirements", "give only one"),
        ({"memory_gb": "16GB"}, "requirements.memory_gb", "number of GB"),
        ({"cpu": {"cores": -1}}, "requirements.cpu.cores", "integer ≥ 0"),
        ({"cpu": {"cores": 1, "min_cores": 2}}, "requirements.cpu", "give only one"),
        ({"storage": {"type": "floppy"}}, "requirements.storage.type", "unknown storage type"),
        ({"network": {"egress": "yes"}}, "requirements.network.egress", "true or false"),
        ({"region": {"eu": 1}}, "requirements.region", "expected a list"),
        ({"hardware_accel": True}, "requirements.hardware_accel", "applies to 'codecs'"),
        ({"codecs": ["h264"], "hardware_accel": "yes"}, "hardware_accel", "true or false"),
        ({"codecs": {"h264": "gpu"}}, "requirements.codecs.h264", "unknown codec need"),
        ({"codecs": [1]}, "requirements.codecs[0]", "expected a string"),
        ({"frameworks": {"pytorch": "2.1"}}, "requirements.frameworks.pytorch", "no operator"),
        ({"frameworks": {"pytorch": ">=two"}}, "requirements.frameworks.pytorch", "not a version"),
        ({"frameworks": {"pytorch": 2}}, "requirements.frameworks.pytorch", "must be a string"),
        ({"frameworks": "pytorch"}, "requirements.frameworks", "expected a mapping"),
        ({"frameworks": {"torch": "", "pytorch": ""}}, "frameworks.pytorch", "listed twice"),
        ({"isolation": 3}, "requirements.isolation", "expected a string (isolation level)"),
        ({"isolation": "max"}, "requirements.isolation", "basic, none, standard, strict"),
        ({"env_profile": ["a"]}, "requirements.env_profile", "expected a string"),
        ({"preferred": []}, "requirements.preferred", "expected a mapping"),
        ({"preferred": {"preferred": {}}}, "requirements.preferred.preferred", "cannot be nested"),
        (
            {"preferred": {"gpu": {"required": True}}},
            "requirements.preferred.gpu",
            "move it out",
        ),
        (
            {"gpu": {"required": False}, "preferred": {"gpu": {}}},
            "requirements.preferred.gpu",
            "given twice",
        ),
        ({"extensions": {"tpu": 1.5}}, "requirements.extensions.tpu", "floats cannot"),
        ({"extensions": "tpu"}, "requirements.extensions", "expected a mapping"),
        ({"extensions": {"cpu": 1}}, "requirements.extensions", "standard type"),
    ],
)
def test_nonsense_is_refused_with_a_clear_error(data: Any, path: str, problem: str) -> None:
    with pytest.raises(CapabilitySpecError) as info:
        Requirements.parse(data)
    assert isinstance(info.value, ValueError)
    assert info.value.path.endswith(path), info.value
    assert problem in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("wire", "problem"),
    [
        ({"memory_gb": 16}, "unknown requirement key 'memory_gb'"),
        ({"memory_mb": 16.0}, "expected an integer"),
        ({"gpu": True}, "expected a mapping"),
        ({"gpu": "cuda"}, "expected a mapping"),
        ({"gpu": {"min_memory_gb": 8}}, "unknown gpu key 'min_memory_gb'"),
        ({"gpu": {"required": False}}, "unknown gpu key 'required'"),
        ({"gpu": {"min_compute_capability": 8.0}}, "compute capability"),
        ({"cpu": 4}, "expected a mapping"),
        ({"cpu": {"min_cores": 4}}, "unknown cpu key"),
        ({"codecs": ["h264"]}, "expected a mapping"),
        ({"codecs": {"h264": "any"}, "hardware_accel": True}, "unknown requirement key"),
        ({"frameworks": ["numpy"]}, "expected a mapping"),
        ({"region": "eu"}, "expected a list"),
        ({"storage": {"min_free_gb": 1}}, "unknown storage key"),
        ({"network": {"bandwidth_mbps": 1}}, "unknown network key"),
        ({"preferred": {"memory_mb": 1.5}}, "expected an integer"),
        ({"tpu": 1}, "unknown requirement key 'tpu'"),
    ],
)
def test_from_wire_is_strict(wire: dict[str, Any], problem: str) -> None:
    with pytest.raises(CapabilitySpecError, match=problem):
        Requirements.from_wire(wire)


def test_from_wire_accepts_unknown_extensions_for_later_explanation() -> None:
    wire = {"extensions": {"quantum": {"qubits": 50}}, "preferred": {"extensions": {"tpu": 4}}}
    req = Requirements.from_wire(wire)
    assert dict(req.required.extensions) == {"quantum": {"qubits": 50}}
    assert req.to_wire() == wire
