"""Explanations of selection decisions, in the spirit of HTCondor's ``condor_q -better-analyze``.

An :class:`Explanation` answers "why this executor?" after the fact: the job's terms and
requirements, the scoring algorithm, every bid considered with its score or the filter it
failed, the winner, and one reason sentence.  It is plain data (``to_dict()`` is JSON-able)
and renders as a table for humans (``render()``).  Explanations are not signed, so scores may
be floats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._candidate import Candidate, Terms
from ._filters import FILTER_LABELS, PERFORMANCE_FILTERS, RejectedCandidate
from ._format import fmt_money, fmt_ppm, fmt_ratio, fmt_us, plural, short_cid, short_did

if TYPE_CHECKING:
    from ._ranking import Ranking, ScoreKind

JSONScalar = int | float | str | bool | None

_TIE_PHRASES = {
    "degraded": "as a fully compatible match",
    "local": "as the local executor",
    "reputation": "on reputation",
    "arrival": "by arriving first",
    "p95": "on a lower p95",
    "price": "on a lower price",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsideredBid:
    """One bid as the explanation shows it: eligible (``rank`` and ``score`` set) or
    rejected (``failed_filter`` and ``failure_reason`` set)."""

    rank: int | None
    executor: str
    bid_cid: str
    price_micros: int
    currency: str
    p95_us: int | None
    observed_p95_us: int | None
    load: float
    score: float | None
    failed_filter: str | None
    failure_reason: str | None
    local: bool
    degraded: bool
    warnings: tuple[str, ...]
    conduct: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, JSONScalar | list[str]]:
        score = self.score
        return {
            "rank": self.rank,
            "executor": self.executor,
            "bid_cid": self.bid_cid,
            "price_micros": self.price_micros,
            "currency": self.currency,
            "p95_us": self.p95_us,
            "observed_p95_us": self.observed_p95_us,
            "load": self.load,
            # a non-finite score (e.g. unknown latency) has no JSON form; failed_filter tells
            # a rejected bid (score None) from an unscorable one
            "score": score if score is not None and math.isfinite(score) else None,
            "failed_filter": self.failed_filter,
            "failure_reason": self.failure_reason,
            "local": self.local,
            "degraded": self.degraded,
            "warnings": list(self.warnings),
            "conduct": list(self.conduct),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Explanation:
    """Why a job went (or could not go) to an executor."""

    job_cid: str
    policy: str
    algorithm: str
    terms: Mapping[str, JSONScalar]
    requirements: Mapping[str, object] | str | None
    considered: tuple[ConsideredBid, ...]
    winner: ConsideredBid | None
    reason: str
    warnings: tuple[str, ...]
    score_kind: ScoreKind = "custom"

    def to_dict(self) -> dict[str, object]:
        """A JSON-able dict (str/int/bool/None, floats only for scores and loads)."""
        req = self.requirements
        return {
            "job_cid": self.job_cid,
            "policy": self.policy,
            "algorithm": self.algorithm,
            "terms": dict(self.terms),
            "requirements": dict(req) if isinstance(req, Mapping) else req,
            "considered": [c.to_dict() for c in self.considered],
            "winner": self.winner.to_dict() if self.winner is not None else None,
            "reason": self.reason,
            "warnings": list(self.warnings),
        }

    def render(self) -> str:
        """Multi-line human text: header, terms, a table of every bid, the choice and why."""
        lines = [f"Selection for job {self.job_cid} — policy {self.policy!r}"]
        if self.algorithm:
            lines.append(f"  algorithm:    {self.algorithm}")
        lines.append(f"  terms:        {terms_text(self.terms)}")
        if self.requirements is not None:
            req = self.requirements
            text = (
                ", ".join(f"{k}={v!r}" for k, v in req.items()) if isinstance(req, Mapping) else req
            )
            lines.append(f"  requirements: {text or '(none)'}")
        lines.append("")
        header = ("rank", "executor", "bid", "price", "p95", "load", "score / failed filter")
        from .._tables import render_table  # the one table renderer (pure: no I/O)

        rows = [self._row(c) for c in self.considered]
        lines.append(render_table(header, rows, right=(0, 3, 4, 5), indent=2, rule=True))
        if not self.considered:
            lines.append("  (no bids)")
        lines.append("")
        if self.winner is not None:
            w = self.winner
            lines.append(f"  selected:     {w.executor} (bid {w.bid_cid})")
        else:
            lines.append("  selected:     nothing")
        lines.append(f"  reason:       {self.reason}")
        if self.warnings:
            lines.append("  warnings:")
            lines.extend(f"    - {w}" for w in self.warnings)
        return "\n".join(lines)

    def _row(self, c: ConsideredBid) -> tuple[str, ...]:
        p95 = fmt_us(c.p95_us) if c.p95_us is not None else "-"
        if c.observed_p95_us is not None and c.p95_us is not None and c.observed_p95_us > c.p95_us:
            p95 += f" (seen {fmt_us(c.observed_p95_us)})"
        if c.failed_filter is not None:
            last = f"{c.failed_filter}: {c.failure_reason}"
        else:
            last = fmt_score(c.score, self.score_kind)
            tags = ["local"] if c.local else []
            if c.degraded:
                tags.append("degraded: " + "; ".join(c.warnings) if c.warnings else "degraded")
            tags.extend(c.conduct)
            if tags:
                last += f"  [{', '.join(tags)}]"
        return (
            str(c.rank) if c.rank is not None else "-",
            short_did(c.executor),
            short_cid(c.bid_cid),
            fmt_money(c.price_micros, c.currency),
            p95,
            fmt_ratio(c.load),
            last,
        )


def fmt_score(score: float | None, kind: ScoreKind) -> str:
    """Format a score for a table cell according to what it measures."""
    if score is None:
        return "-"
    if math.isinf(score):
        return "unknown"
    if kind == "price":
        return str(int(score))
    if kind == "latency_us":
        return fmt_us(score)
    if kind == "load":
        return fmt_ratio(score)
    if kind == "arrival":
        return f"#{int(score)}"
    return f"{score:.6g}"


def terms_summary(terms: Terms) -> dict[str, JSONScalar]:
    """The set fields of ``terms`` as a JSON-able dict (unset limits are left out)."""
    out: dict[str, JSONScalar] = {"currency": terms.currency}
    for name in (
        "max_price_micros",
        "budget_remaining_micros",
        "slo_p95_us",
        "slo_p99_us",
        "min_accuracy_ppm",
        "min_reputation",
    ):
        value = getattr(terms, name)
        if value is not None:
            out[name] = value
    out["allow_degraded"] = terms.allow_degraded
    return out


def terms_text(summary: Mapping[str, JSONScalar]) -> str:
    """One line for humans from :func:`terms_summary` output."""
    cur = str(summary.get("currency", "?"))
    parts = [cur]
    value = summary.get("max_price_micros")
    if isinstance(value, int):
        parts.append(f"price ≤ {fmt_money(value, cur)}")
    value = summary.get("budget_remaining_micros")
    if isinstance(value, int):
        parts.append(f"budget left {fmt_money(value, cur)}")
    value = summary.get("slo_p95_us")
    if isinstance(value, int):
        parts.append(f"p95 ≤ {fmt_us(value)}")
    value = summary.get("slo_p99_us")
    if isinstance(value, int):
        parts.append(f"p99 ≤ {fmt_us(value)}")
    value = summary.get("min_accuracy_ppm")
    if isinstance(value, int):
        parts.append(f"accuracy ≥ {fmt_ppm(value)}")
    rep = summary.get("min_reputation")
    if isinstance(rep, int | float):
        parts.append(f"reputation ≥ {fmt_ratio(rep)}")
    parts.append("degraded allowed" if summary.get("allow_degraded", True) else "no degraded")
    return ", ".join(parts)


def _considered(
    c: Candidate,
    *,
    rank: int | None,
    score: float | None,
    rejected: RejectedCandidate | None = None,
) -> ConsideredBid:
    return ConsideredBid(
        rank=rank,
        executor=c.executor,
        bid_cid=c.bid_cid,
        price_micros=c.price_micros,
        currency=c.currency,
        p95_us=c.p95_us,
        observed_p95_us=c.observed_p95_us,
        load=c.load,
        score=score,
        failed_filter=rejected.filter if rejected is not None else None,
        failure_reason=rejected.reason if rejected is not None else None,
        local=c.local,
        degraded=c.degraded,
        warnings=c.warnings,
        conduct=c.conduct,
    )


def _winner_metric(ranking: Ranking) -> str:
    best = ranking.eligible[0]
    c = best.candidate
    money = fmt_money(c.price_micros, c.currency)
    kind = ranking.score_kind
    if kind in ("price", "arrival"):
        return money
    if kind == "latency_us":
        return f"{fmt_score(best.score, kind)} expected, {money}"
    if kind == "load":
        return f"load {fmt_score(best.score, kind)}, {money}"
    return f"score {fmt_score(best.score, kind)}, {money}"


def _tie_clause(ranking: Ranking) -> str | None:
    if len(ranking.eligible) < 2 or not ranking.key_names:
        return None
    first, second = ranking.eligible[0], ranking.eligible[1]
    if first.score != second.score or not first.key or not second.key:
        return None
    for i, (a, b) in enumerate(zip(first.key, second.key, strict=False)):
        if a != b and i < len(ranking.key_names):
            name = ranking.key_names[i]
            phrase = _TIE_PHRASES.get(name, f"on {name}")
            return f"won a tie with {short_did(second.candidate.executor)} {phrase}"
    return None


def _reason(ranking: Ranking) -> str:
    winner = ranking.winner
    clauses: list[str] = []
    # (counted as "others", phrase) -> count, in first-seen order
    counts: dict[tuple[bool, str], int] = {}
    for r in ranking.rejected:
        if (
            winner is not None
            and r.filter in PERFORMANCE_FILTERS
            and r.candidate.price_micros < winner.price_micros
        ):
            slower = "less accurate" if r.filter == "accuracy" else "slower"
            group = (True, f"cheaper but {slower}")
        else:
            group = (False, FILTER_LABELS.get(r.filter) or f"failing {r.filter}")
        counts[group] = counts.get(group, 0) + 1
    if winner is None:
        head = "no eligible bid" if ranking.rejected else "no bids to choose from"
    else:
        criterion = ranking.criterion or f"best {ranking.policy} score"
        head = f"{criterion}: {_winner_metric(ranking)} from {short_did(winner.executor)}"
        tie = _tie_clause(ranking)
        if tie is not None:
            clauses.append(tie)
        others = len(ranking.eligible) - 1
        if others:
            clauses.append(f"{plural(others, 'other')} ranked lower")
    for (others, phrase), n in counts.items():
        clauses.append(f"{plural(n, 'other')} {phrase}" if others else f"{n} {phrase}")
    if not clauses:
        return head
    sep = ": " if winner is None else ", "
    return head + sep + ", ".join(clauses)


def _warnings(ranking: Ranking, considered: tuple[ConsideredBid, ...]) -> tuple[str, ...]:
    out: list[str] = []
    winner = ranking.winner
    if winner is not None:
        who = short_did(winner.executor)
        if winner.degraded:
            detail = f": {'; '.join(winner.warnings)}" if winner.warnings else ""
            out.append(f"selected a degraded match from {who}{detail}")
        else:
            out.extend(f"{who}: {w}" for w in winner.warnings)
    for c in considered:
        if c.observed_p95_us is not None and c.p95_us is not None and c.observed_p95_us > c.p95_us:
            out.append(
                f"{short_did(c.executor)} promised p95 {fmt_us(c.p95_us)} but was observed at "
                f"{fmt_us(c.observed_p95_us)}"
            )
    return tuple(out)


def build_explanation(
    ranking: Ranking,
    job_cid: str,
    requirements: Mapping[str, object] | str | None = None,
) -> Explanation:
    """Build the :class:`Explanation` of ``ranking`` (eligible by rank, then rejected)."""
    considered = tuple(
        _considered(s.candidate, rank=s.rank, score=s.score) for s in ranking.eligible
    ) + tuple(_considered(r.candidate, rank=None, score=None, rejected=r) for r in ranking.rejected)
    return Explanation(
        job_cid=job_cid,
        policy=ranking.policy,
        algorithm=ranking.algorithm,
        terms=terms_summary(ranking.terms),
        requirements=requirements,
        considered=considered,
        winner=considered[0] if ranking.eligible else None,
        reason=_reason(ranking),
        warnings=_warnings(ranking, considered),
        score_kind=ranking.score_kind,
    )
