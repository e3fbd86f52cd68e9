"""Close notices waiting to ride on the next Announce (RFC 0001 §8.3, §8.7).

Once a job's winner has accepted, its other bidders may release the capacity their
bids reserved.  A standalone Close costs a signature, a publish and one delivery
to every executor offering the capability; on a busy originator the next Announce
of the same capability goes to exactly those executors anyway, so the notice rides
along in that Announce's ``closed`` list for free.  A notice still waiting after
``linger_s`` (no Announce came) is handed out by :meth:`PendingCloses.due` and
published as a standalone Close by the client.

Pure bookkeeping: no I/O, no clock of its own (callers pass ``time.monotonic()``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

__all__ = ["PendingClose", "PendingCloses"]


@dataclass(frozen=True, slots=True)
class PendingClose:
    job_cid: str
    winner: str | None
    bid_cid: str | None
    due: float


class PendingCloses:
    """Close notices per capability, oldest first.

    ``limit`` bounds how many ride on one Announce (the protocol's maximum);
    ``linger_s`` is how long a notice waits for one.
    """

    def __init__(self, linger_s: float, limit: int) -> None:
        if linger_s < 0 or limit < 1:
            raise ValueError("linger_s must be >= 0 and limit >= 1")
        self.linger_s = linger_s
        self.limit = limit
        # capability -> {job_cid: notice}; insertion order is age order (fixed linger).
        self._by_capability: dict[str, dict[str, PendingClose]] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._by_capability.values())

    def add(
        self, capability: str, job_cid: str, winner: str | None, bid_cid: str | None, now: float
    ) -> None:
        queue = self._by_capability.setdefault(capability, {})
        queue.pop(job_cid, None)  # a job closed twice keeps one notice, the newest
        queue[job_cid] = PendingClose(job_cid, winner, bid_cid, now + self.linger_s)

    def take(self, capability: str) -> list[str] | None:
        """Up to ``limit`` job CIDs (oldest first) for an Announce of ``capability``;
        ``None`` when there are none."""
        queue = self._by_capability.get(capability)
        if not queue:
            return None
        taken = list(itertools.islice(queue, self.limit))
        for job_cid in taken:
            del queue[job_cid]
        if not queue:
            del self._by_capability[capability]
        return taken

    def put_back(self, capability: str, job_cids: list[str], now: float) -> None:
        """Return notices an Announce failed to carry (they go out standalone, at once)."""
        old = self._by_capability.get(capability, {})
        queue = {c: PendingClose(c, None, None, now) for c in job_cids if c not in old}
        queue.update(old)  # due at once: they go first, keeping the queue in age order
        if queue:
            self._by_capability[capability] = queue

    def next_due(self) -> float | None:
        """When the oldest notice is due, or ``None`` when nothing waits."""
        firsts = [next(iter(q.values())).due for q in self._by_capability.values() if q]
        return min(firsts) if firsts else None

    def due(self, now: float) -> list[PendingClose]:
        """Remove and return every notice whose wait is over."""
        out: list[PendingClose] = []
        for capability in list(self._by_capability):
            queue = self._by_capability[capability]
            while queue:
                first = next(iter(queue.values()))
                if first.due > now:
                    break
                del queue[first.job_cid]
                out.append(first)
            if not queue:
                del self._by_capability[capability]
        return out

    def drain(self) -> list[PendingClose]:
        """Remove and return every notice (the client is closing)."""
        out = [n for q in self._by_capability.values() for n in q.values()]
        self._by_capability.clear()
        return out
