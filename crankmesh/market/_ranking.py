"""The result of ranking bids under a policy: who is eligible, in which order, and who was
filtered out and why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..protocol.errors import NoEligibleBid
from ._candidate import Candidate, Terms
from ._explain import Explanation, build_explanation
from ._filters import RejectedCandidate
from ._scored import ScoredCandidate, ScoreKind

__all__ = ["Ranking", "ScoreKind", "ScoredCandidate"]

@dataclass(frozen=True, slots=True, kw_only=True)
class Ranking:
    """Eligible candidates best first, plus the rejected ones with the filter each failed.

    ``criterion`` is the phrase that opens the reason sentence ("cheapest bid meeting
    p95 ≤ 50 ms"); ``algorithm`` describes the scoring for explanations.  Custom policies
    may leave both, ``score_kind`` and ``key_names`` at their defaults.
    """

    policy: str
    terms: Terms
    eligible: tuple[ScoredCandidate, ...]
    rejected: tuple[RejectedCandidate, ...] = ()
    criterion: str = ""
    algorithm: str = ""
    score_kind: ScoreKind = "custom"
    key_names: tuple[str, ...] = ()

    @property
    def winner(self) -> Candidate | None:
        """The best eligible candidate, or None when every bid was rejected (or none came)."""
        return self.eligible[0].candidate if self.eligible else None

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """The eligible candidates, best first."""
        return tuple(s.candidate for s in self.eligible)

    def reject(self, bid_cid: str, filter: str, reason: str) -> Ranking:
        """A copy with the eligible bid ``bid_cid`` moved to ``rejected`` (ranks renumbered).

        For what is only learnt after ranking: a bid whose signature fails lazy verification
        (``filter="signature"``), an executor that declined the assignment, ...  The
        explanation then shows the next bid as the winner and this one with ``reason``.
        ValueError when ``bid_cid`` is not an eligible bid of this ranking.
        """
        i = next((n for n, s in enumerate(self.eligible) if s.candidate.bid_cid == bid_cid), -1)
        if i < 0:
            raise ValueError(f"bid {bid_cid} is not an eligible bid of this ranking")
        kept = self.eligible[:i] + tuple(
            replace(s, rank=s.rank - 1) for s in self.eligible[i + 1 :]
        )
        gone = RejectedCandidate(candidate=self.eligible[i].candidate, filter=filter, reason=reason)
        return replace(self, eligible=kept, rejected=(*self.rejected, gone))

    def raise_if_empty(self, job_cid: str) -> Candidate:
        """Return the winner, or raise :class:`NoEligibleBid` naming each bid and the
        constraint it missed.

        Error handling: with no candidates at all the error lists "(none)"; the originator
        should raise ``NoBids`` before selecting when the bid window closed empty.
        """
        if self.eligible:
            return self.eligible[0].candidate
        raise NoEligibleBid(job_cid, [r.describe() for r in self.rejected])

    def explanation(
        self,
        job_cid: str,
        requirements: Mapping[str, object] | str | None = None,
    ) -> Explanation:
        """Explain this decision (who was considered, scores, filters, winner, and why)."""
        return build_explanation(self, job_cid, requirements)
