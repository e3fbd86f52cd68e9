"""What a ranking is made of, for both the ranking and its explanation: the scored
candidate, the kind of score, and the read-only view of a ranking an explanation needs.

The dependency is one-way: ``_ranking`` imports ``_explain``, and both import this module;
``_explain`` knows a ranking only through :class:`RankingView`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from ._candidate import Candidate, Terms
from ._filters import RejectedCandidate

ScoreKind = Literal["price", "latency_us", "load", "arrival", "custom"]
"""What a ranking's ``score`` measures, for formatting (lower is always better)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoredCandidate:
    """An eligible candidate, its policy score (lower is better) and its 1-based rank.

    ``key`` is the full sort key when the policy exposes one (the built-in policies do); the
    ranking's ``key_names`` name its components, which lets an explanation say which
    tie-break decided between two bids with the same score.
    """

    candidate: Candidate
    score: float
    rank: int
    key: tuple[float, ...] = ()



class RankingView(Protocol):
    """The parts of a :class:`~crankmesh.market.Ranking` an explanation reads."""

    @property
    def policy(self) -> str: ...
    @property
    def terms(self) -> Terms: ...
    @property
    def eligible(self) -> tuple[ScoredCandidate, ...]: ...
    @property
    def rejected(self) -> tuple[RejectedCandidate, ...]: ...
    @property
    def criterion(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def score_kind(self) -> ScoreKind: ...
    @property
    def key_names(self) -> tuple[str, ...]: ...
    @property
    def winner(self) -> Candidate | None: ...
