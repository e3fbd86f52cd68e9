"""Seed 003, "Custom capability extensions": new types without touching the core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from crankmesh.capabilities import (
    CapabilityMatcher,
    CapabilityOffer,
    CapabilityRegistry,
    CapabilitySpecError,
    MatchOutcome,
    Mismatch,
    Requirements,
    default_registry,
    match,
    register_capability_type,
)

# --------------------------------------------------------------------------- a custom type


@dataclass(frozen=True)
class TpuNeed:
    min_cores: int
    generation: int


@dataclass(frozen=True)
class TpuHave:
    cores: int
    generation: int


class TpuMatcher:
    """A user-defined "tpu" capability: ``{"tpu": {"cores": 8, "generation": 4}}``."""

    def parse_requirement(self, value: Any) -> TpuNeed:
        if not isinstance(value, dict) or not isinstance(value.get("cores"), int):
            raise ValueError("tpu requirement needs integer 'cores'")
        return TpuNeed(value["cores"], value.get("generation", 1))

    def parse_offer(self, value: Any) -> TpuHave:
        if not isinstance(value, dict) or not isinstance(value.get("cores"), int):
            raise ValueError("tpu offer needs integer 'cores'")
        return TpuHave(value["cores"], value.get("generation", 1))

    def match(self, requirement: TpuNeed, offer: TpuHave) -> list[str]:
        out = []
        if offer.cores < requirement.min_cores:
            out.append(f"needs tpu cores ≥ {requirement.min_cores}, executor has {offer.cores}")
        if offer.generation < requirement.generation:
            out.append(
                f"needs tpu generation ≥ v{requirement.generation}, "
                f"executor has v{offer.generation}"
            )
        return out


class QuantumMatcher:
    """Another one, with a scalar value: ``{"quantum": 50}`` qubits."""

    def parse_requirement(self, value: Any) -> int:
        return int(value)

    def parse_offer(self, value: Any) -> int:
        return int(value)

    def match(self, requirement: int, offer: int) -> list[str]:
        return [] if offer >= requirement else [f"needs {requirement} qubits, executor has {offer}"]


def _typed(m: CapabilityMatcher[TpuNeed, TpuHave]) -> CapabilityMatcher[TpuNeed, TpuHave]:
    return m  # mypy checks that TpuMatcher satisfies the protocol


@pytest.fixture
def registry() -> CapabilityRegistry:
    return CapabilityRegistry({"tpu": _typed(TpuMatcher()), "quantum": QuantumMatcher()})


# --------------------------------------------------------------------------- tests


def test_custom_type_is_parsed_matched_and_explained(registry: CapabilityRegistry) -> None:
    req = Requirements.parse({"tpu": {"cores": 8, "generation": 4}}, registry=registry)
    assert dict(req.required.extensions) == {"tpu": {"cores": 8, "generation": 4}}
    assert req.to_wire() == {"extensions": {"tpu": {"cores": 8, "generation": 4}}}

    big = CapabilityOffer.parse({"tpu": {"cores": 32, "generation": 5}}, registry=registry)
    small = CapabilityOffer.parse({"tpu": {"cores": 4, "generation": 3}}, registry=registry)
    assert match(req, big, registry=registry).outcome is MatchOutcome.COMPATIBLE
    result = match(req, small, registry=registry)
    assert result.outcome is MatchOutcome.INCOMPATIBLE
    assert result.mismatches == (
        Mismatch("tpu", True, "needs tpu cores ≥ 8, executor has 4"),
        Mismatch("tpu", True, "needs tpu generation ≥ v4, executor has v3"),
    )


def test_custom_types_mix_with_standard_ones(registry: CapabilityRegistry) -> None:
    req = Requirements.parse(
        {"memory_gb": 8, "quantum": 50, "preferred": {"tpu": {"cores": 2}}}, registry=registry
    )
    offer = CapabilityOffer.parse({"memory_gb": 8, "quantum": 127}, registry=registry)
    result = match(req, offer, registry=registry)
    assert result.outcome is MatchOutcome.DEGRADED
    assert result.mismatches == (
        Mismatch("tpu", False, "needs tpu, executor does not advertise it"),
    )
    assert result.warnings == (
        "preferred tpu not available (needs tpu, executor does not advertise it): "
        "expect degraded performance",
    )


def test_unregistered_type_is_an_unknown_key(registry: CapabilityRegistry) -> None:
    with pytest.raises(CapabilitySpecError, match="unknown requirement key 'tpu'"):
        Requirements.parse({"tpu": {"cores": 8}}, registry=CapabilityRegistry())
    with pytest.raises(CapabilitySpecError, match="did you mean 'tpu'"):
        Requirements.parse({"tpus": {"cores": 8}}, registry=registry)
    with pytest.raises(CapabilitySpecError, match="unknown capability key 'tpu'"):
        CapabilityOffer.parse({"tpu": {"cores": 8}}, registry=CapabilityRegistry())


def test_matcher_validates_values_at_parse_time(registry: CapabilityRegistry) -> None:
    with pytest.raises(CapabilitySpecError) as info:
        Requirements.parse({"tpu": {"cores": "many"}}, registry=registry)
    assert info.value.path == "requirements.tpu"
    assert "invalid tpu requirement: tpu requirement needs integer 'cores'" in str(info.value)
    with pytest.raises(CapabilitySpecError, match="invalid tpu offer"):
        CapabilityOffer.parse({"extensions": {"tpu": {}}}, registry=registry)
    with pytest.raises(CapabilitySpecError, match="floats cannot go on the wire"):
        Requirements.parse({"quantum": 0.5}, registry=registry)


def test_same_custom_type_twice_is_refused(registry: CapabilityRegistry) -> None:
    with pytest.raises(CapabilitySpecError, match="given twice"):
        Requirements.parse({"quantum": 5, "extensions": {"quantum": 6}}, registry=registry)
    with pytest.raises(CapabilitySpecError, match="both at the top level and in 'extensions'"):
        CapabilityOffer.parse({"quantum": 5, "extensions": {"quantum": 6}}, registry=registry)


def test_a_node_without_the_matcher_explains_instead_of_crashing(
    registry: CapabilityRegistry,
) -> None:
    wire = Requirements.parse({"tpu": {"cores": 8}}, registry=registry).to_wire()
    offer_wire = CapabilityOffer.parse({"tpu": {"cores": 8}}, registry=registry).to_wire()
    # Another node, which never registered "tpu", decodes both from the wire.
    req, offer = Requirements.from_wire(wire), CapabilityOffer.from_wire(offer_wire)
    result = match(req, offer, registry=CapabilityRegistry())
    assert result.mismatches == (
        Mismatch("tpu", True, "needs tpu, a capability type this node has no matcher for"),
    )
    assert match(req, offer, registry=registry).ok


def test_invalid_remote_values_become_mismatches(registry: CapabilityRegistry) -> None:
    req = Requirements.from_wire({"extensions": {"tpu": {"cores": 8}}})
    bad_offer = CapabilityOffer.from_wire({"extensions": {"tpu": {"cores": "x"}}})
    assert [m.message for m in match(req, bad_offer, registry=registry).mismatches] == [
        "needs tpu, but the executor's tpu offer is invalid: tpu offer needs integer 'cores'"
    ]
    bad_req = Requirements.from_wire({"extensions": {"tpu": "eight"}})
    offer = CapabilityOffer.from_wire({"extensions": {"tpu": {"cores": 8}}})
    assert [m.message for m in match(bad_req, offer, registry=registry).mismatches] == [
        "needs tpu, but the requirement is invalid: tpu requirement needs integer 'cores'"
    ]


def test_registry_rules(registry: CapabilityRegistry) -> None:
    assert list(registry) == ["quantum", "tpu"] and len(registry) == 2 and "tpu" in registry
    assert repr(registry) == "CapabilityRegistry(['quantum', 'tpu'])"
    with pytest.raises(CapabilitySpecError, match="already registered"):
        registry.register("tpu", TpuMatcher())
    replacement = TpuMatcher()
    registry.register("tpu", replacement, replace=True)
    assert registry.get("tpu") is replacement
    for bad in ("TPU", "1tpu", "tp-u", "", "x" * 65):
        with pytest.raises(CapabilitySpecError, match="lower-case letters"):
            registry.register(bad, TpuMatcher())
    for reserved in ("gpu", "memory_gb", "preferred", "extensions"):
        with pytest.raises(CapabilitySpecError, match="standard capability type"):
            registry.register(reserved, TpuMatcher())
    with pytest.raises(TypeError, match="no callable parse_requirement"):
        registry.register("fpga", object())  # type: ignore[arg-type]
    copy = registry.copy()
    registry.unregister("tpu")
    assert "tpu" not in registry and "tpu" in copy
    with pytest.raises(KeyError):
        registry.unregister("tpu")
    assert registry.get("tpu") is None


def test_the_default_registry() -> None:
    assert "fpga" not in default_registry
    register_capability_type("fpga", QuantumMatcher())
    try:
        req = Requirements.parse({"fpga": 4})  # no registry argument: the default one
        offer = CapabilityOffer.parse({"fpga": 2})
        assert [m.message for m in match(req, offer).mismatches] == [
            "needs 4 qubits, executor has 2"
        ]
    finally:
        default_registry.unregister("fpga")
    assert "fpga" not in default_registry


def test_an_empty_registry_is_used_as_given_not_replaced_by_the_default() -> None:
    register_capability_type("fpga", QuantumMatcher())
    try:
        empty = CapabilityRegistry()
        with pytest.raises(CapabilitySpecError, match="unknown requirement key 'fpga'"):
            Requirements.parse({"fpga": 1}, registry=empty)
        req = Requirements.from_wire({"extensions": {"fpga": 1}})
        offer = CapabilityOffer.from_wire({"extensions": {"fpga": 1}})
        assert match(req, offer).ok
        assert not match(req, offer, registry=empty).ok
    finally:
        default_registry.unregister("fpga")
