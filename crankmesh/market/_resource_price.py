"""Prices that scale with the resources a job reserves (pure integer arithmetic)."""

from __future__ import annotations

__all__ = ["resource_price"]

#: One GiB-second = 1024 MB × 1000 ms (the unit of ``per_gib_s``).
_MB_MS_PER_GIB_S = 1024 * 1000


def resource_price(base: int, *, memory_mb: int, timeout_ms: int, per_gib_s: int) -> int:
    """The price of one job: ``base`` plus ``per_gib_s`` for every GiB-second it reserves.

    A job reserves its effective memory (``memory_mb``, the caps' default when it asked
    none) for up to its timeout (``timeout_ms``), so::

        price = base + ceil(per_gib_s × memory_mb × timeout_ms / (1024 × 1000))

    in integer micro-units (rounded up: an executor never charges less than its rate).
    ``per_gib_s = 0`` gives the flat ``base`` price. Raises :class:`ValueError` for a
    negative input.
    """
    for name, value in (
        ("base", base),
        ("memory_mb", memory_mb),
        ("timeout_ms", timeout_ms),
        ("per_gib_s", per_gib_s),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return base + -(-per_gib_s * memory_mb * timeout_ms // _MB_MS_PER_GIB_S)
