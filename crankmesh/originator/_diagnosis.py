"""Why nobody bid: each advertised executor checked against the job, from the directory.

When an announcement gets no bid, the originator does not have to guess "all full": the
signed adverts in its directory say each executor's price, hardware (env profiles,
memory, GPUs), sandbox isolation, load and whether it is draining, and executors may
have said why they passed (signed no-bids, given here as ``(executor, reason)`` pairs).
:func:`diagnose` turns that into one :class:`PeerVerdict` per executor; when every one
has a reason that waiting cannot fix, the client raises
:class:`~crankmesh.protocol.errors.NoSuitableExecutor` at once instead of waiting for
capacity that will never come.

Pure: no I/O, no clock (``now_ms`` is not needed: the directory already dropped expired
adverts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..capabilities import CapabilityOffer, IsolationLevel, MatchResult
from ..directory import Peer
from ..protocol.messages import JobSpec

__all__ = ["Diagnosis", "PeerVerdict", "diagnose", "TRANSIENT_NO_BID_REASONS"]

#: No-bid reasons that waiting can fix (the executor is busy or limiting the rate):
#: an executor giving only these is not ruled out.
TRANSIENT_NO_BID_REASONS = frozenset(
    {"no_capacity", "busy", "full", "queue_full", "rate_limited", "overloaded", "draining"}
)

#: The executors' decline reasons (``bids_declined_total{reason}``) in words.
_NO_BID_TEXT = {
    "over_max_price": "declined: its price is above the job's max price",
    "currency": "declined: it prices in another currency",
    "incompatible": "declined: the job's requirements do not match it",
    "bad_requirements": "declined: it cannot read the job's requirements",
    "no_accelerator": "declined: it has no accelerator of the kind the job asks for",
    "unsupported_env_profile": "declined: it does not have the job's env profile",
    "isolation_too_weak": "declined: its sandbox isolation is below the job's",
    "payload_too_large": "declined: the payload is over its limit",
}


@dataclass(frozen=True, slots=True)
class PeerVerdict:
    """One executor that offers the capability, and why it cannot take the job
    (``reasons`` empty: nothing in its advert rules it out; it may just be busy)."""

    executor: str
    name: str | None
    reasons: tuple[str, ...]
    #: ``running+queued/capacity`` as last advertised.
    load: str
    full: bool

    @property
    def label(self) -> str:
        return f"{self.name} ({self.executor})" if self.name else self.executor

    def __str__(self) -> str:
        if self.reasons:
            return f"{self.label}: " + "; ".join(self.reasons)
        state = "full" if self.full else "has free capacity"
        return f"{self.label}: {state} (load {self.load})"


@dataclass(frozen=True, slots=True)
class Diagnosis:
    verdicts: tuple[PeerVerdict, ...]

    @property
    def ruled_out(self) -> bool:
        """Every executor has a reason that waiting will not fix."""
        return bool(self.verdicts) and all(v.reasons for v in self.verdicts)

    def lines(self) -> list[str]:
        return [str(v) for v in self.verdicts]


def _offer(peer: Peer) -> CapabilityOffer | None:
    try:
        return CapabilityOffer.from_wire(peer.advert.hardware)
    except Exception:  # an advert we cannot read rules nothing out
        return None


def diagnose(
    spec: JobSpec,
    peers: Sequence[Peer],
    matches: Mapping[str, MatchResult] | None = None,
    no_bids: Iterable[tuple[str, str]] = (),
    *,
    originator: str | None = None,
) -> Diagnosis:
    """Check each of ``peers`` (live, offering ``spec.capability``) against the job.

    ``matches``: the requirement matching per executor DID (hardware requirements, GPU
    for the accelerator), as the client computed it. ``no_bids``: ``(executor DID,
    reason)`` pairs from executors that declined the announcement; a reason in
    :data:`TRANSIENT_NO_BID_REASONS` counts as busy, any other (``untrusted``,
    ``unsupported_env_profile``, ...) rules the executor out. ``originator``: this
    client's DID, named in an ``untrusted`` reason so the user knows which key to list.
    """
    declined: dict[str, list[str]] = {}
    for did, reason in no_bids:
        declined.setdefault(did, []).append(reason)
    c = spec.constraints
    out = []
    for peer in peers:
        a = peer.advert
        reasons: list[str] = []
        cap = next((x for x in a.capabilities if x.name == spec.capability), None)
        if cap is not None and spec.max_price is not None:
            if cap.currency != spec.currency:
                reasons.append(f"prices in {cap.currency}, the job in {spec.currency}")
            elif cap.price > spec.max_price:
                reasons.append(
                    f"asks {cap.price} µ{cap.currency}, more than the job's max price "
                    f"{spec.max_price} µ{spec.currency}"
                )
        offer = _offer(peer)
        if c.env_profile is not None and offer is not None and offer.env_profiles:
            if c.env_profile not in offer.env_profiles:
                reasons.append(
                    f"has no env profile {c.env_profile!r} (offers "
                    + ", ".join(offer.env_profiles)
                    + ")"
                )
        if c.isolation is not None:
            want = IsolationLevel.parse(c.isolation)
            have = IsolationLevel.parse(a.isolation)
            if have < want:
                reasons.append(f"isolates jobs at {have.token!r}, the job needs {want.token!r}")
        if c.memory_mb is not None and offer is not None and offer.memory_mb is not None:
            if offer.memory_mb < c.memory_mb:
                reasons.append(f"has {offer.memory_mb} MiB of memory, the job needs {c.memory_mb}")
        match = (matches or {}).get(peer.did)
        if match is not None and not match.ok:
            reasons.extend(str(m) for m in match.required_mismatches)
        for reason in declined.get(peer.did, ()):
            if reason in TRANSIENT_NO_BID_REASONS:
                continue
            if reason == "untrusted":
                who = f" {originator}" if originator else ""
                reasons.append(
                    f"does not trust this originator{who} (submit with a key on its trust list)"
                )
            else:
                reasons.append(_NO_BID_TEXT.get(reason, f"declined: {reason}"))
        load = a.load
        out.append(
            PeerVerdict(
                executor=peer.did,
                name=a.name,
                reasons=tuple(dict.fromkeys(reasons)),
                load=f"{load.running}+{load.queued}/{load.capacity}",
                full=a.draining or load.running + load.queued >= max(load.capacity, 1),
            )
        )
    return Diagnosis(tuple(out))
