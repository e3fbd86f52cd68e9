"""Seed 003, "Capability Matching Algorithm" and friends: verdicts and their explanations."""

from __future__ import annotations

from typing import Any

import pytest

from crankmesh.capabilities import (
    CapabilityOffer,
    IsolationLevel,
    MatchOutcome,
    MatchResult,
    Mismatch,
    Requirements,
    StorageType,
    match,
    mismatch_error,
)
from crankmesh.protocol.errors import CapabilityMismatch, CrankmeshError


def check(requirements: dict[str, Any], offer: dict[str, Any]) -> MatchResult:
    return match(Requirements.parse(requirements), CapabilityOffer.parse(offer))


def messages(result: MatchResult) -> list[str]:
    return [m.message for m in result.mismatches]


CUDA_24 = {"gpu": {"type": "cuda", "model": "RTX 4090", "memory_gb": 24}}
CPU_ONLY = {"cpu": {"cores": 16, "arch": "x86_64"}, "memory_gb": 64}

# --------------------------------------------------------------------------- seed scenarios


def test_exact_match() -> None:
    result = check({"gpu": {"type": "cuda", "min_memory_gb": 8}}, CUDA_24)
    assert result.outcome is MatchOutcome.COMPATIBLE
    assert result.ok and result.mismatches == () and result.warnings == ()


def test_insufficient_resources() -> None:
    result = check({"memory_gb": 32}, {"memory_gb": 16})
    assert result.outcome is MatchOutcome.INCOMPATIBLE
    assert not result.ok
    assert result.mismatches == (
        Mismatch("memory_gb", True, "needs memory_gb ≥ 32, executor has 16"),
    )


def test_multiple_compatible_executors_all_match() -> None:
    req = Requirements.parse({"cpu": {"cores": 4}, "memory_gb": 16})
    offers = [
        CapabilityOffer.parse({"cpu": {"cores": c}, "memory_gb": m})
        for c, m in [(4, 16), (8, 32), (64, 512)]
    ]
    assert all(match(req, o).outcome is MatchOutcome.COMPATIBLE for o in offers)


def test_partial_capability_match_is_degraded_with_a_warning() -> None:
    result = check({"gpu": {"required": False, "preferred": True}}, CPU_ONLY)
    assert result.outcome is MatchOutcome.DEGRADED
    assert result.ok
    assert result.warnings == (
        "preferred gpu not available: running on CPU, expect degraded performance",
    )
    assert result.mismatches == (Mismatch("gpu", False, "needs a gpu, executor has none"),)
    assert (result.preferred_met, result.preferred_total) == (0, 1)


def test_gpu_to_cpu_fallback_prefers_gpu_when_present() -> None:
    req = {"cpu": {"cores": 4}, "gpu": {"type": "cuda", "required": False}}
    on_gpu = check(req, {**CPU_ONLY, **CUDA_24})
    on_cpu = check(req, CPU_ONLY)
    assert on_gpu.outcome is MatchOutcome.COMPATIBLE
    assert (on_gpu.preferred_met, on_gpu.preferred_total) == (1, 1)
    assert on_cpu.outcome is MatchOutcome.DEGRADED


def test_auto_select_gpu_executor_for_ml_node() -> None:
    req = Requirements.parse({"gpu": {"type": "cuda"}, "frameworks": {"pytorch": ">=2.1"}})
    pool = {
        "cpu-box": CapabilityOffer.parse({**CPU_ONLY, "frameworks": {"torch": "2.3.0"}}),
        "gpu-box": CapabilityOffer.parse({**CUDA_24, "frameworks": {"torch": "2.3.0+cu121"}}),
    }
    assert [name for name, offer in pool.items() if match(req, offer).ok] == ["gpu-box"]


def test_no_requirements_match_anything() -> None:
    assert check({}, {}).outcome is MatchOutcome.COMPATIBLE
    assert check({}, CUDA_24).outcome is MatchOutcome.COMPATIBLE


def test_no_compatible_executor_gives_a_clear_error() -> None:
    req = Requirements.parse({"gpu": {"type": "cuda"}, "memory_gb": 32})
    results = {
        "did:key:zA": match(req, CapabilityOffer.parse({"memory_gb": 16})),
        "did:key:zB": match(req, CapabilityOffer.parse({**CUDA_24, "memory_gb": 8})),
    }
    err = mismatch_error(results)
    assert isinstance(err, CapabilityMismatch) and isinstance(err, CrankmeshError)
    assert err.details == (
        "did:key:zA: needs gpu type cuda, executor has none",
        "did:key:zA: needs memory_gb ≥ 32, executor has 16",
        "did:key:zB: needs memory_gb ≥ 32, executor has 8",
    )
    assert str(err).startswith("none of the 2 executors considered can serve the requirements:")
    assert "no executor is available" in str(mismatch_error({}))


def test_query_by_gpu_type_and_memory_filters_executors() -> None:
    query = Requirements.parse({"gpu": {"type": "cuda", "min_memory_gb": 16}})
    offers: dict[str, dict[str, Any]] = {
        "a": {"gpu": {"type": "cuda", "memory_gb": 24}},
        "b": {"gpu": {"type": "cuda", "memory_gb": 12}},
        "c": {"gpu": {"type": "rocm", "memory_gb": 64}},
        "d": {"gpus": [{"type": "cuda", "memory_gb": 8}, {"type": "cuda", "memory_gb": 16}]},
    }
    found = [k for k, o in offers.items() if match(query, CapabilityOffer.parse(o)).ok]
    assert found == ["a", "d"]


def test_detect_capability_drift_stops_gpu_routing() -> None:
    req = Requirements.parse({"gpu": {"type": "cuda"}})
    before = CapabilityOffer.parse(CUDA_24)
    after = CapabilityOffer.parse(CPU_ONLY)  # the executor lost its GPU
    assert match(req, before).ok and not match(req, after).ok


# --------------------------------------------------------------------------- gpu


def test_wrong_gpu_type() -> None:
    result = check({"gpu": {"type": "cuda"}}, {"gpu": {"type": "rocm", "model": "MI300X"}})
    assert result.outcome is MatchOutcome.INCOMPATIBLE
    assert result.mismatches == (
        Mismatch("gpu.type", True, "needs gpu type cuda, executor has rocm MI300X #0"),
    )


def test_gpu_type_required_but_executor_has_no_gpu() -> None:
    assert messages(check({"gpu": {"type": "cuda"}}, CPU_ONLY)) == [
        "needs gpu type cuda, executor has none"
    ]
    assert messages(check({"gpu": {"type": "cuda", "min_memory_gb": 8}}, {})) == [
        "needs gpu type cuda with memory_gb ≥ 8, executor has none"
    ]


def test_gpu_memory_too_small() -> None:
    result = check({"gpu": {"type": "cuda", "min_memory_gb": 32}}, CUDA_24)
    assert result.mismatches == (
        Mismatch(
            "gpu.memory_gb", True, "needs gpu memory_gb ≥ 32, executor has 24 (cuda RTX 4090 #0)"
        ),
    )


def test_gpu_free_memory_counts_when_advertised() -> None:
    offer = {"gpu": {"type": "cuda", "model": "A100", "memory_gb": 80, "free_memory_gb": 4}}
    assert messages(check({"gpu": {"min_memory_gb": 8}}, offer)) == [
        "needs gpu memory_gb ≥ 8, executor has 4 free of 80 (cuda A100 #0)"
    ]
    assert check({"gpu": {"min_memory_gb": 4}}, offer).ok
    assert messages(check({"gpu": {"min_memory_gb": 4}}, {"gpu": {"type": "metal"}})) == [
        "needs gpu memory_gb ≥ 4, executor has unknown memory (metal #0)"
    ]


def test_compute_capability_too_low() -> None:
    offer = {"gpu": {"type": "cuda", "model": "Tesla T4", "compute_capability": "7.5"}}
    assert check({"gpu": {"min_compute_capability": "7.0"}}, offer).ok
    assert check({"gpu": {"min_compute_capability": "7.5"}}, offer).ok
    result = check({"gpu": {"type": "cuda", "min_compute_capability": "8.0"}}, offer)
    assert result.mismatches == (
        Mismatch(
            "gpu.compute_capability",
            True,
            "needs gpu compute_capability ≥ 8.0, executor has 7.5 (cuda Tesla T4 #0)",
        ),
    )
    unknown = check({"gpu": {"min_compute_capability": "8.0"}}, {"gpu": {"type": "cuda"}})
    assert messages(unknown) == [
        "needs gpu compute_capability ≥ 8.0, executor has unknown (cuda #0)"
    ]


def test_gpu_model_is_a_case_insensitive_substring() -> None:
    assert check({"gpu": {"model": "4090"}}, CUDA_24).ok
    assert check({"gpu": {"model": "rtx 4090"}}, CUDA_24).ok
    assert messages(check({"gpu": {"model": "H100"}}, CUDA_24)) == [
        "needs gpu model 'H100', executor has 'RTX 4090' (cuda RTX 4090 #0)"
    ]


def test_any_one_gpu_satisfying_every_constraint_is_enough() -> None:
    offer = {
        "gpus": [
            {"type": "cuda", "model": "T4", "memory_gb": 16, "compute_capability": "7.5"},
            {"type": "cuda", "model": "L4", "memory_gb": 24, "compute_capability": "8.9"},
        ]
    }
    assert check({"gpu": {"min_memory_gb": 20, "min_compute_capability": "8.0"}}, offer).ok
    # Memory from one GPU and capability from another do not add up to a match.
    result = check({"gpu": {"min_memory_gb": 32, "min_compute_capability": "8.0"}}, offer)
    assert messages(result) == ["needs gpu memory_gb ≥ 32, executor has 24 (cuda L4 #1)"]


def test_nearest_gpu_lists_all_its_failures() -> None:
    offer = {"gpu": {"type": "rocm", "model": "MI50", "memory_gb": 16}}
    result = check({"gpu": {"type": "cuda", "min_memory_gb": 32}}, offer)
    assert [m.capability for m in result.mismatches] == ["gpu.type", "gpu.memory_gb"]


def test_busy_gpus_do_not_count() -> None:
    offer = CapabilityOffer.parse(CUDA_24)
    req = Requirements.parse({"gpu": {"type": "cuda", "min_memory_gb": 8}})
    busy = match(req, offer.with_gpu_busy(0))
    assert busy.outcome is MatchOutcome.INCOMPATIBLE
    assert messages(busy) == [
        "needs gpu type cuda with memory_gb ≥ 8, executor's matching GPU is busy (cuda RTX 4090 #0)"
    ]
    assert match(req, offer.with_gpu_busy(0).with_gpu_busy(0, busy=False)).ok


def test_busy_gpu_that_would_not_fit_anyway_reports_the_real_reason() -> None:
    offer = CapabilityOffer.parse({"gpu": {"type": "cuda", "memory_gb": 8}}).with_gpu_busy(0)
    result = match(Requirements.parse({"gpu": {"min_memory_gb": 16}}), offer)
    assert messages(result) == ["needs gpu memory_gb ≥ 16, executor has 8 (cuda #0)"]


def test_preferred_gpu_busy_is_degraded_on_cpu() -> None:
    offer = CapabilityOffer.parse(CUDA_24).with_gpu_busy(0)
    result = match(Requirements.parse({"gpu": {"required": False}}), offer)
    assert result.outcome is MatchOutcome.DEGRADED
    assert result.warnings == (
        "preferred gpu not available: running on CPU, expect degraded performance",
    )


def test_preferred_gpu_too_small_warns_with_the_reason() -> None:
    result = check({"preferred": {"gpu": {"min_memory_gb": 48}}}, CUDA_24)
    assert result.outcome is MatchOutcome.DEGRADED
    assert result.warnings == (
        "preferred gpu not available (needs gpu memory_gb ≥ 48, executor has 24 "
        "(cuda RTX 4090 #0)): expect degraded performance",
    )


def test_gpu_count() -> None:
    offer = CapabilityOffer.parse({"gpu": {"type": "cuda", "memory_gb": 24, "count": 4}})
    req = Requirements.parse({"gpu": {"type": "cuda", "count": 3}})
    assert match(req, offer).ok
    partial = match(req, offer.with_gpu_busy(0).with_gpu_busy(1))
    assert partial.mismatches == (
        Mismatch("gpu.count", True, "needs 3 × gpu type cuda, executor has 2 free and 2 busy"),
    )
    two = CapabilityOffer.parse({"gpu": {"type": "cuda", "count": 2}})
    assert messages(match(req, two)) == ["needs 3 × gpu type cuda, executor has 2 free"]


# --------------------------------------------------------------------------- other types


def test_multiple_mismatches_are_all_listed_in_a_stable_order() -> None:
    result = check(
        {
            "gpu": {"type": "cuda"},
            "cpu": {"cores": 32, "arch": "aarch64", "features": ["avx512f", "sve"]},
            "memory_gb": 128,
            "storage": {"min_free_gb": 100, "type": "nvme"},
            "network": {"min_bandwidth_mbps": 1000, "egress": True},
            "region": ["eu", "us-east"],
            "codecs": ["h264", "av1"],
            "hardware_accel": True,
            "frameworks": {"pytorch": ">=2.1,<3", "jax": ""},
            "isolation": "strict",
            "env_profile": "ml-torch",
        },
        {
            **CPU_ONLY,
            "storage": {"free_gb": 50, "type": "ssd"},
            "network": {"bandwidth_mbps": 100, "region": "ap-south-1"},
            "codecs": {"h264": "software"},
            "frameworks": {"torch": "1.13.1"},
            "isolation": "standard",
            "env_profiles": ["default"],
        },
    )
    assert result.outcome is MatchOutcome.INCOMPATIBLE
    assert [(m.capability, m.message) for m in result.mismatches] == [
        ("gpu", "needs gpu type cuda, executor has none"),
        ("cpu.cores", "needs cpu cores ≥ 32, executor has 16"),
        ("cpu.arch", "needs cpu arch aarch64, executor has x86_64"),
        ("cpu.features", "needs cpu features avx512f, sve, executor lacks them"),
        ("memory_gb", "needs memory_gb ≥ 128, executor has 64"),
        ("storage.free_gb", "needs storage free_gb ≥ 100, executor has 50"),
        ("storage.type", "needs storage type ≥ nvme, executor has ssd"),
        ("network.bandwidth_mbps", "needs network bandwidth_mbps ≥ 1000, executor has 100"),
        ("network.egress", "needs network egress, executor does not allow it"),
        ("region", "needs region eu or us-east, executor is in ap-south-1"),
        ("codecs.av1", "needs codec av1 (hardware), executor does not support it"),
        ("codecs.h264", "needs codec h264 (hardware), executor has software only"),
        ("frameworks.jax", "needs jax, executor does not have jax"),
        ("frameworks.pytorch", "needs pytorch >=2.1,<3, executor has 1.13.1"),
        ("isolation", "needs isolation ≥ strict, executor has standard"),
        ("env_profile", "needs env_profile ml-torch, executor has default"),
    ]
    assert all(m.required for m in result.mismatches)


def test_codecs_hardware_vs_software() -> None:
    offer = {"codecs": {"h264": "hardware", "vp9": "software"}}
    assert check({"codecs": ["h264", "vp9"]}, offer).ok
    assert check({"codecs": ["h264"], "hardware_accel": True}, offer).ok
    result = check({"codecs": ["h264", "vp9"], "hardware_accel": True}, offer)
    assert result.mismatches == (
        Mismatch("codecs.vp9", True, "needs codec vp9 (hardware), executor has software only"),
    )
    assert messages(check({"codecs": "av1"}, offer)) == [
        "needs codec av1, executor does not support it"
    ]
    assert check({"codecs": ["avc"]}, offer).ok  # alias of h264


@pytest.mark.parametrize(
    ("spec", "installed", "message"),
    [
        (">=2.1,<3", "2.13.0+cpu", None),
        (">=2.1,<3", "2.1.0", None),
        (">=2.1,<3", "1.13.1", "needs pytorch >=2.1,<3, executor has 1.13.1"),
        (">=2.1,<3", "3.0.0rc1", "needs pytorch >=2.1,<3, executor has 3.0.0rc1"),
        (">=2.1", "2.1.0rc1", "needs pytorch >=2.1, executor has 2.1.0rc1"),
        ("==2.*", "2.0.0rc1", None),
        ("", "anything-goes", None),
        (">=2", "nightly", "needs pytorch >=2, executor has 'nightly', which is not a version"),
    ],
)
def test_framework_version_constraints(spec: str, installed: str, message: str | None) -> None:
    result = check({"frameworks": {"torch": spec}}, {"frameworks": {"pytorch": installed}})
    assert messages(result) == ([] if message is None else [message])


def test_missing_framework() -> None:
    assert messages(check({"frameworks": {"onnx": ">=1.16"}}, {})) == [
        "needs onnx >=1.16, executor does not have onnx"
    ]


def test_isolation_levels_are_ordered() -> None:
    levels = ["none", "basic", "standard", "strict"]
    assert [IsolationLevel.parse(x) for x in levels] == sorted(IsolationLevel)
    assert IsolationLevel.NONE < IsolationLevel.BASIC < IsolationLevel.STANDARD
    assert IsolationLevel.STANDARD < IsolationLevel.STRICT
    for i, need in enumerate(levels):
        for j, have in enumerate(levels):
            assert check({"isolation": need}, {"isolation": have}).ok is (j >= i)
    assert messages(check({"isolation": "basic"}, {})) == [
        "needs isolation ≥ basic, executor has none"
    ]


def test_storage_types_are_ordered() -> None:
    assert StorageType.HDD < StorageType.SSD < StorageType.NVME
    assert check({"storage": {"type": "ssd"}}, {"storage": {"type": "nvme"}}).ok
    assert not check({"storage": {"type": "ssd"}}, {"storage": {"type": "hdd"}}).ok
    assert messages(check({"storage": {"type": "ssd", "free_gb": 1}}, {})) == [
        "needs storage free_gb ≥ 1, executor has unknown",
        "needs storage type ≥ ssd, executor has unknown",
    ]


def test_network_egress_both_ways_and_unknown_bandwidth() -> None:
    open_net = {"network": {"egress": True}}
    assert check({"network": {"egress": True}}, open_net).ok
    assert messages(check({"network": {"egress": False}}, open_net)) == [
        "needs network egress blocked, executor allows it"
    ]
    assert check({"network": {"egress": False}}, {}).ok
    assert messages(check({"network": {"min_bandwidth_mbps": 10}}, {})) == [
        "needs network bandwidth_mbps ≥ 10, executor has unknown"
    ]


def test_region_is_matched_by_prefix() -> None:
    offer = {"region": "eu-west-1"}
    for region in ("eu", "eu-west", "eu-west-1", ["us", "eu"]):
        assert check({"region": region}, offer).ok
    assert not check({"region": "eu-west-12"}, offer).ok
    assert not check({"region": "e"}, offer).ok
    assert messages(check({"region": "eu"}, {})) == [
        "needs region eu, executor does not advertise a region"
    ]


def test_region_preference_is_only_a_warning() -> None:
    result = check({"preferred": {"region": "eu"}}, {"region": "us-east-1"})
    assert result.outcome is MatchOutcome.DEGRADED
    assert result.warnings == (
        "preferred region not available (needs region eu, executor is in us-east-1): "
        "expect degraded performance",
    )


def test_cpu_and_memory_unknowns_are_mismatches() -> None:
    assert messages(check({"cpu": {"cores": 2, "arch": "x86_64"}, "memory_gb": 1}, {})) == [
        "needs cpu cores ≥ 2, executor has unknown",
        "needs cpu arch x86_64, executor has unknown",
        "needs memory_gb ≥ 1, executor has unknown",
    ]
    assert messages(check({"memory_mb": 1536}, {"memory_mb": 1000})) == [
        "needs memory_gb ≥ 1.5, executor has 0.98"
    ]


def test_env_profile() -> None:
    assert check({"env_profile": "ml"}, {"env_profiles": ["default", "ml"]}).ok
    assert messages(check({"env_profile": "ml"}, {})) == ["needs env_profile ml, executor has none"]


def test_preferences_mixed_with_requirements() -> None:
    result = check(
        {
            "memory_gb": 16,
            "preferred": {"memory_gb": 64, "cpu": {"cores": 8}, "isolation": "basic"},
        },
        {"memory_gb": 32, "cpu": {"cores": 8}, "isolation": "strict"},
    )
    assert result.outcome is MatchOutcome.DEGRADED
    assert (result.preferred_met, result.preferred_total) == (2, 3)
    assert result.required_mismatches == ()
    assert result.preferred_mismatches == (
        Mismatch("memory_gb", False, "needs memory_gb ≥ 64, executor has 32"),
    )
    assert (
        str(result.preferred_mismatches[0]) == "needs memory_gb ≥ 64, executor has 32 (preferred)"
    )


def test_required_failure_beats_preferences() -> None:
    result = check({"memory_gb": 64, "preferred": {"gpu": True}}, {"memory_gb": 32})
    assert result.outcome is MatchOutcome.INCOMPATIBLE
    assert len(result.mismatches) == 2 and len(result.warnings) == 1


# --------------------------------------------------------------------------- explanations


def test_explain_incompatible() -> None:
    result = check(
        {"memory_gb": 32, "gpu": {"type": "cuda"}, "preferred": {"region": "eu"}},
        {"memory_gb": 16},
    )
    assert result.explain() == "\n".join(
        [
            "incompatible: 2 required capabilities not met",
            "  - [required] gpu: needs gpu type cuda, executor has none",
            "  - [required] memory_gb: needs memory_gb ≥ 32, executor has 16",
            "  - [preferred] region: needs region eu, executor does not advertise a region",
            "  ! preferred region not available (needs region eu, executor does not advertise "
            "a region): expect degraded performance",
        ]
    )


def test_explain_degraded_and_compatible() -> None:
    degraded = check({"gpu": {"required": False}}, CPU_ONLY)
    assert degraded.explain().splitlines() == [
        "degraded: every requirement is met, 1 of 1 preferences are not",
        "  - [preferred] gpu: needs a gpu, executor has none",
        "  ! preferred gpu not available: running on CPU, expect degraded performance",
    ]
    assert check({}, {}).explain() == "compatible: every requirement is met"
    assert check({"preferred": {"memory_gb": 1}}, {"memory_gb": 2}).explain() == (
        "compatible: every requirement is met, and all 1 preferences"
    )
    one = check({"memory_gb": 2}, {"memory_gb": 1}).explain()
    assert one.startswith("incompatible: 1 required capability not met")


def test_raise_for_incompatible() -> None:
    check({}, {}).raise_for_incompatible()
    check({"gpu": {"required": False}}, CPU_ONLY).raise_for_incompatible()  # degraded is fine
    with pytest.raises(CapabilityMismatch) as info:
        check({"memory_gb": 32}, {"memory_gb": 16}).raise_for_incompatible("executor X")
    assert info.value.details == ("needs memory_gb ≥ 32, executor has 16",)
    assert str(info.value) == (
        "executor X cannot serve the requirements:\n  - needs memory_gb ≥ 32, executor has 16"
    )


def test_outcome_tokens_match_the_bid_message() -> None:
    assert [o.value for o in MatchOutcome] == ["compatible", "degraded", "incompatible"]
