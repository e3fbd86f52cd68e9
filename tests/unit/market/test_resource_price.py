"""Prices that scale with reserved resources: integer micro-units, rounded up."""

from __future__ import annotations

import pytest

from crankmesh.market import resource_price


def test_zero_rate_is_the_flat_base_price() -> None:
    assert resource_price(1000, memory_mb=4096, timeout_ms=600_000, per_gib_s=0) == 1000


def test_one_gib_for_one_second_costs_the_rate() -> None:
    assert resource_price(1000, memory_mb=1024, timeout_ms=1000, per_gib_s=20) == 1020


def test_price_grows_with_memory_and_timeout() -> None:
    small = resource_price(0, memory_mb=512, timeout_ms=10_000, per_gib_s=100)
    more_memory = resource_price(0, memory_mb=2048, timeout_ms=10_000, per_gib_s=100)
    longer = resource_price(0, memory_mb=512, timeout_ms=60_000, per_gib_s=100)
    assert small == 500 and more_memory == 2000 and longer == 3000


def test_fractions_round_up_never_down() -> None:
    # 1 MB for 1 ms at 1 µ/GiB-s is 1/1,024,000 µ: charged as 1.
    assert resource_price(7, memory_mb=1, timeout_ms=1, per_gib_s=1) == 8
    assert resource_price(7, memory_mb=0, timeout_ms=1, per_gib_s=1) == 7


@pytest.mark.parametrize("field", ["base", "memory_mb", "timeout_ms", "per_gib_s"])
def test_negative_or_non_integer_inputs_are_errors(field: str) -> None:
    args = {"base": 1, "memory_mb": 1, "timeout_ms": 1, "per_gib_s": 1}
    with pytest.raises(ValueError, match=field):
        resource_price(**{**args, field: -1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=field):
        resource_price(**{**args, field: 1.5})  # type: ignore[arg-type]
