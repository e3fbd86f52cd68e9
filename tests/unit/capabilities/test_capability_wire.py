"""Wire-form properties: lossless round trips, canonical msgpack, never a float."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crankmesh.capabilities import (
    CapabilityOffer,
    CodecNeed,
    CodecSupport,
    ComputeCapability,
    CpuOffer,
    CpuRequirement,
    GpuOffer,
    GpuRequirement,
    GpuType,
    IsolationLevel,
    MatchOutcome,
    NetworkOffer,
    NetworkRequirement,
    Requirements,
    RequirementSet,
    SpecifierSet,
    StorageOffer,
    StorageRequirement,
    StorageType,
    match,
)
from crankmesh.protocol.encoding import canonical_decode, canonical_encode

fast = settings(max_examples=25, deadline=None)

names = st.text("abcdefgh0123", min_size=1, max_size=6).map(lambda n: "z" + n)
sizes = st.integers(0, 2**40)
maybe_size = st.none() | sizes
ccs = st.builds(ComputeCapability, st.integers(0, 12), st.integers(0, 9))

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63) + 1, 2**63 - 1)
    | st.text(max_size=6)
    | st.binary(max_size=4)
)
wire_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=5,
)
ext_names = st.text("abcdef_0123", max_size=6).map(lambda n: "x" + n)
extensions = st.dictionaries(ext_names, wire_values, max_size=2)


@st.composite
def gpu_offers(draw: st.DrawFn) -> tuple[GpuOffer, ...]:
    gpus = []
    index = -1
    for _ in range(draw(st.integers(0, 3))):
        index += draw(st.integers(1, 3))
        memory = draw(maybe_size)
        free = None if memory is None else draw(st.none() | st.integers(0, memory))
        gpus.append(
            GpuOffer(
                type=draw(st.sampled_from(GpuType)),
                model=draw(st.sampled_from(["", "RTX 4090", "A100-SXM4-80GB", "M2 Max"])),
                memory_mb=memory,
                free_memory_mb=free,
                compute_capability=draw(st.none() | ccs),
                index=index,
                busy=draw(st.booleans()),
            )
        )
    return tuple(gpus)


offers = st.builds(
    CapabilityOffer,
    gpus=gpu_offers(),
    cpu=st.builds(
        CpuOffer,
        cores=st.none() | st.integers(1, 512),
        arch=st.none() | st.sampled_from(["x86_64", "aarch64", "riscv64"]),
        features=st.lists(st.sampled_from(["avx2", "avx512f", "neon", "sve"])).map(tuple),
    ),
    memory_mb=maybe_size,
    storage=st.builds(
        StorageOffer, free_mb=maybe_size, type=st.none() | st.sampled_from(StorageType)
    ),
    network=st.builds(
        NetworkOffer,
        bandwidth_mbps=st.none() | st.integers(0, 10**6),
        egress=st.booleans(),
        region=st.none() | st.sampled_from(["eu-west-1", "us-east-1", "ap"]),
    ),
    codecs=st.dictionaries(names, st.sampled_from(CodecSupport), max_size=3),
    frameworks=st.dictionaries(
        names, st.sampled_from(["2.13.0+cpu", "1.26.4", "2.0.0rc1", "nightly"]), max_size=3
    ),
    env_profiles=st.lists(st.sampled_from(["default", "ml-torch", "ffmpeg"])).map(tuple),
    isolation=st.sampled_from(IsolationLevel),
    extensions=extensions,
)

requirement_sets = st.builds(
    RequirementSet,
    gpu=st.none()
    | st.builds(
        GpuRequirement,
        type=st.none() | st.sampled_from(GpuType),
        model=st.none() | st.sampled_from(["4090", "A100"]),
        min_memory_mb=maybe_size,
        min_compute_capability=st.none() | ccs,
        count=st.integers(1, 4),
    ),
    cpu=st.none()
    | st.builds(
        CpuRequirement,
        min_cores=st.none() | st.integers(0, 128),
        arch=st.none() | st.sampled_from(["x86_64", "aarch64"]),
        features=st.lists(st.sampled_from(["avx2", "neon"])).map(tuple),
    ),
    memory_mb=maybe_size,
    storage=st.none()
    | st.builds(
        StorageRequirement,
        min_free_mb=maybe_size,
        min_type=st.none() | st.sampled_from(StorageType),
    ),
    network=st.none()
    | st.builds(
        NetworkRequirement,
        min_bandwidth_mbps=st.none() | st.integers(0, 10**5),
        egress=st.none() | st.booleans(),
    ),
    regions=st.lists(st.sampled_from(["eu", "us-east", "ap-south-1"]), max_size=2).map(tuple),
    codecs=st.dictionaries(names, st.sampled_from(CodecNeed), max_size=3),
    frameworks=st.dictionaries(
        names,
        st.sampled_from(["", ">=2.1,<3", "==2.*", "~=1.26", "!=2.0.1"]).map(SpecifierSet.parse),
        max_size=3,
    ),
    isolation=st.none() | st.sampled_from(IsolationLevel),
    env_profile=st.none() | st.sampled_from(["default", "ml-torch"]),
    extensions=extensions,
)
requirements = st.builds(Requirements, required=requirement_sets, preferred=requirement_sets)


def assert_wire_safe(value: Any, path: str = "$") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str, path
            assert_wire_safe(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_wire_safe(v, f"{path}[{i}]")
    else:
        assert value is None or type(value) in (bool, int, str, bytes), f"{path}: {value!r}"


@fast
@given(offers)
def test_offer_round_trips_through_canonical_msgpack(offer: CapabilityOffer) -> None:
    wire = offer.to_wire()
    assert_wire_safe(wire)
    assert CapabilityOffer.from_wire(wire) == offer
    decoded = canonical_decode(canonical_encode(wire))
    assert CapabilityOffer.from_wire(decoded) == offer
    assert CapabilityOffer.from_wire(decoded).to_wire() == wire


@fast
@given(requirements)
def test_requirements_round_trip_through_canonical_msgpack(req: Requirements) -> None:
    wire = req.to_wire()
    assert_wire_safe(wire)
    assert Requirements.from_wire(wire) == req
    decoded = canonical_decode(canonical_encode(wire))
    assert Requirements.from_wire(decoded) == req
    assert Requirements.from_wire(decoded).to_wire() == wire


@fast
@given(
    st.floats(0, 1e6, allow_nan=False),
    st.floats(0, 1e4, allow_nan=False),
    st.sampled_from([8.0, 8.6, 9.0]),
)
def test_human_floats_never_reach_the_wire(memory_gb: float, gpu_gb: float, cc: float) -> None:
    offer = CapabilityOffer.parse(
        {
            "memory_gb": memory_gb,
            "gpu": {"type": "cuda", "memory_gb": gpu_gb, "compute_capability": cc},
        }
    )
    req = Requirements.parse(
        {"memory_gb": memory_gb, "gpu": {"min_memory_gb": gpu_gb, "min_compute_capability": cc}}
    )
    for wire in (offer.to_wire(), req.to_wire()):
        assert_wire_safe(wire)
        canonical_encode(wire)
    assert offer.memory_mb == round(memory_gb * 1024)
    assert match(req, offer).outcome is MatchOutcome.COMPATIBLE  # equal values satisfy


@fast
@given(offers)
def test_empty_requirements_match_every_offer(offer: CapabilityOffer) -> None:
    assert match(Requirements(), offer).outcome is MatchOutcome.COMPATIBLE


@fast
@given(requirements, offers)
def test_outcome_agrees_with_the_mismatches(req: Requirements, offer: CapabilityOffer) -> None:
    result = match(req, offer)
    assert result == match(req, offer)  # deterministic
    required = [m for m in result.mismatches if m.required]
    if required:
        assert result.outcome is MatchOutcome.INCOMPATIBLE and not result.ok
    elif result.mismatches:
        assert result.outcome is MatchOutcome.DEGRADED and result.ok and result.warnings
    else:
        assert result.outcome is MatchOutcome.COMPATIBLE and not result.warnings
    assert len(result.warnings) == result.preferred_total - result.preferred_met
    assert all(m.message.startswith("needs ") for m in result.mismatches)
    # Moving every requirement to "preferred" can only make things better.
    relaxed = Requirements(preferred=req.required)
    assert match(relaxed, offer).ok


@fast
@given(sizes, sizes)
def test_memory_threshold_is_inclusive(need: int, have: int) -> None:
    req = Requirements(required=RequirementSet(memory_mb=need))
    assert match(req, CapabilityOffer(memory_mb=have)).ok is (have >= need)


@fast
@given(gpu_offers())
def test_busy_gpus_never_satisfy(gpus: tuple[GpuOffer, ...]) -> None:
    all_busy = CapabilityOffer(gpus=tuple(dataclasses.replace(g, busy=True) for g in gpus))
    assert not match(Requirements.parse({"gpu": True}), all_busy).ok
