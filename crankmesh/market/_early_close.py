"""Early close of the bid window: can a bid that has not arrived yet still win?

The originator's adaptive bid window closes as soon as the answer is "no", instead of
sleeping for the whole window.  The floors describe the expected bidders that have not
answered yet (from their adverts):

* ``floor_price_micros`` — the lowest price any of them advertises;
* ``floor_latency_us`` — the lowest latency any of them advertises, taken as a lower bound on
  every latency figure it could put in a bid (p50, p95, its own estimate).

None means unknown, which always answers True (keep waiting).  The answer is conservative: it
is False only when *no* bid consistent with the floors could rank strictly above ``best``.

Per policy (``best`` is the current winner):

========= ==================================================================================
greedy    never: a later bid cannot arrive earlier
balanced  a newcomer's load may be 0, so: True if ``best.load > 0``; at load 0, True if
          ``floor_price < best.price`` (price breaks load ties)
cost      True if ``floor_price < best.price``; at equal price, if ``floor_latency`` is below
          best's effective p95
latency   True if ``floor_latency`` is below best's expected latency; at equal latency, if
          ``floor_price < best.price``
slo       as ``cost``; but False when ``floor_latency`` already misses the SLO's p95 or p99,
          since no newcomer could then be eligible
custom    always True (nothing is known about its score)
========= ==================================================================================

For every policy: False when ``floor_price`` exceeds the job's price cap or remaining budget
(no newcomer could be eligible); and when a newcomer could at best tie on everything the
policy compares, it would still win if it were local (and ``best`` is not) or had a higher
reputation than ``best``, so that case answers True unless ``best`` is local with
reputation 1.0.
"""

from __future__ import annotations

import math

from ._candidate import Candidate, Terms
from ._policies import POLICIES, KeyPolicy
from ._reputation import UNKNOWN_REPUTATION

_NEG_INF = -math.inf


def _floor(value: int | None) -> float:
    return _NEG_INF if value is None else float(value)


def can_be_beaten(
    best: Candidate,
    terms: Terms,
    policy_name: str,
    *,
    floor_price_micros: int | None,
    floor_latency_us: int | None,
) -> bool:
    """Whether a bid still to come could rank strictly above ``best`` (see module doc)."""
    if policy_name == "greedy":
        return False
    policy = POLICIES.get(policy_name)
    if not isinstance(policy, KeyPolicy):
        return True
    limit = terms.price_limit_micros
    if floor_price_micros is not None and limit is not None and floor_price_micros > limit:
        return False
    price, latency = _floor(floor_price_micros), _floor(floor_latency_us)
    if policy_name == "balanced":
        bound: tuple[float, ...] = (0.0, False, price)
    elif policy_name == "latency":
        bound = (latency, False, price)
    elif policy_name in ("cost", "slo"):
        if policy_name == "slo" and floor_latency_us is not None:
            for slo in (terms.slo_p95_us, terms.slo_p99_us):
                if slo is not None and floor_latency_us > slo:
                    return False
        bound = (price, False, latency)
    else:  # pragma: no cover - every built-in is listed above
        return True
    # A newcomer's policy key is >= bound component-wise, so one exists that sorts before
    # best's iff bound does; if bound equals best's, only the shared tie-breaks remain.
    head = policy.sort_key(best)[: len(bound)]
    if bound < head:
        return True
    if bound > head:
        return False
    rep = UNKNOWN_REPUTATION if best.reputation is None else best.reputation
    return not best.local or rep < 1.0
