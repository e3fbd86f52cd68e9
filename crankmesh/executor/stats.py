"""Latency statistics an executor measures about itself and puts into bids."""

from __future__ import annotations

import bisect
from collections import deque

__all__ = ["LatencyWindow"]


class LatencyWindow:
    """The last ``size`` latencies (µs) of one capability, with exact quantiles.

    Quantiles are computed on demand from a sorted copy maintained
    incrementally (O(log n) insert, O(n) eviction memmove — n ≤ a few
    thousand), so bids can quote current p50/p95/p99 at no cost.
    """

    __slots__ = ("_fifo", "_sorted", "count")

    def __init__(self, size: int = 1024) -> None:
        self._fifo: deque[int] = deque(maxlen=size)
        self._sorted: list[int] = []
        self.count = 0

    def __len__(self) -> int:
        return len(self._fifo)

    def add(self, value_us: int) -> None:
        if len(self._fifo) == self._fifo.maxlen:
            old = self._fifo[0]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._fifo.append(value_us)
        bisect.insort(self._sorted, value_us)
        self.count += 1

    def quantile(self, q: float) -> int | None:
        """Nearest-rank quantile, ``None`` when empty."""
        s = self._sorted
        if not s:
            return None
        idx = min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))
        return s[idx]
