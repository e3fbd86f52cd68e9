"""NATS subject names (RFC 0001 §7), on RFC 0022's pattern under a federation prefix.

==============================================  ==========================================
subject                                         carries
==============================================  ==========================================
``crank.<fed>.jobs.announce.<capability>``      Announce (capability may span tokens)
``crank.<fed>.jobs.<job_cid>.bids``             Bid
``crank.<fed>.jobs.<job_cid>.assignment.<id>``  Assignment as a request; reply Accept/Reject
``crank.<fed>.jobs.<job_cid>.receipt``          ReceiptDelivery (receipt + sealed result)
``crank.<fed>.jobs.<job_cid>.closed``           Close (bidding over: release reservations)
``crank.<fed>.receipts.<id>``                   Receipt (persisted in JetStream)
``crank.<fed>.bids.<id>``                       the winning Bid of each receipt (persisted)
``crank.<fed>.settlements.<id>``                Settlement (persisted in JetStream)
``crank.<fed>.tokens.<id>``                     budget tokens used, by issuer (persisted)
``crank.<fed>.nodes.adverts``                   Advert heartbeats
``crank.<fed>.nodes.sync``                      empty: "whoever is there, advertise now"
``crank.<fed>.nodes.<id>.announce``             Announce sampled to one executor (§10.8)
==============================================  ==========================================

The directory (RFC 0001 §8.15) is the JetStream key-value bucket
``crank_<fed>_directory`` (:func:`directory_bucket`), one key per node id.

``<id>`` is a node's DID without ``did:key:`` (``z6Mk…``).  Putting the
capability in the announce subject lets NATS deliver an announcement only to
executors that offer it; putting the executor in the assignment subject lets
NATS answer "no responders" at once when the assigned executor is gone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .identity import did_node_id

__all__ = [
    "ROOT",
    "SubjectInfo",
    "advert_sync",
    "adverts",
    "announce",
    "announce_all",
    "assignment",
    "assignments_for",
    "bid_records",
    "bids",
    "check_federation",
    "closed",
    "closed_all",
    "directory_bucket",
    "node_announce",
    "parse_subject",
    "receipt_delivery",
    "receipts",
    "receipts_all",
    "settlements",
    "settlements_all",
    "tokens",
]

ROOT: Final = "crank"
_FED_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def check_federation(federation: str) -> str:
    if not _FED_RE.match(federation):
        raise ValueError(f"federation name {federation!r} must match [A-Za-z0-9_-]{{1,64}}")
    return federation


def announce(federation: str, capability: str) -> str:
    return f"{ROOT}.{federation}.jobs.announce.{capability}"


def announce_all(federation: str) -> str:
    return f"{ROOT}.{federation}.jobs.announce.>"


def bids(federation: str, job_cid: str) -> str:
    return f"{ROOT}.{federation}.jobs.{job_cid}.bids"


def assignment(federation: str, job_cid: str, executor_did: str) -> str:
    return f"{ROOT}.{federation}.jobs.{job_cid}.assignment.{did_node_id(executor_did)}"


def assignments_for(federation: str, executor_did: str) -> str:
    return f"{ROOT}.{federation}.jobs.*.assignment.{did_node_id(executor_did)}"


def receipt_delivery(federation: str, job_cid: str) -> str:
    return f"{ROOT}.{federation}.jobs.{job_cid}.receipt"


def closed(federation: str, job_cid: str) -> str:
    return f"{ROOT}.{federation}.jobs.{job_cid}.closed"


def closed_all(federation: str) -> str:
    return f"{ROOT}.{federation}.jobs.*.closed"


def receipts(federation: str, executor_did: str) -> str:
    return f"{ROOT}.{federation}.receipts.{did_node_id(executor_did)}"


def receipts_all(federation: str) -> str:
    return f"{ROOT}.{federation}.receipts.*"


def bid_records(federation: str, executor_did: str) -> str:
    """Where an executor persists the bid each receipt was won with (for audit)."""
    return f"{ROOT}.{federation}.bids.{did_node_id(executor_did)}"


def tokens(federation: str, issuer_did: str) -> str:
    return f"{ROOT}.{federation}.tokens.{did_node_id(issuer_did)}"


def settlements(federation: str, originator_did: str) -> str:
    return f"{ROOT}.{federation}.settlements.{did_node_id(originator_did)}"


def settlements_all(federation: str) -> str:
    return f"{ROOT}.{federation}.settlements.*"


def adverts(federation: str) -> str:
    return f"{ROOT}.{federation}.nodes.adverts"


def advert_sync(federation: str) -> str:
    """Where a joining directory asks every node to advertise now (RFC 0001 §8.10)."""
    return f"{ROOT}.{federation}.nodes.sync"


def node_announce(federation: str, executor_did: str) -> str:
    """Where an originator sends an Announce sampled to one executor (RFC 0001 §10.8)."""
    return f"{ROOT}.{federation}.nodes.{did_node_id(executor_did)}.announce"


def directory_bucket(federation: str) -> str:
    """The JetStream key-value bucket of the federation's directory (RFC 0001 §8.15):
    key = a node id, value = that node's latest signed Advert."""
    return f"{ROOT}_{federation}_directory"


@dataclass(frozen=True, slots=True)
class SubjectInfo:
    # announce|bids|assignment|receipt|closed|receipts|settlements|adverts|sync|node_announce
    kind: str
    federation: str
    job_cid: str | None = None
    capability: str | None = None
    node_id: str | None = None


def parse_subject(subject: str) -> SubjectInfo:
    """Classify a crankmesh subject; :class:`ValueError` for anything else."""
    parts = subject.split(".")
    if len(parts) < 4 or parts[0] != ROOT or not _FED_RE.match(parts[1]):
        raise ValueError(f"not a crankmesh subject: {subject!r}")
    fed, area, rest = parts[1], parts[2], parts[3:]
    if area == "jobs":
        if rest[0] == "announce" and len(rest) >= 2:
            return SubjectInfo("announce", fed, capability=".".join(rest[1:]))
        if len(rest) == 2 and rest[1] in ("bids", "receipt", "closed"):
            return SubjectInfo(rest[1], fed, job_cid=rest[0])
        if len(rest) == 3 and rest[1] == "assignment":
            return SubjectInfo("assignment", fed, job_cid=rest[0], node_id=rest[2])
    elif area in ("receipts", "settlements", "bids", "tokens") and len(rest) == 1:
        return SubjectInfo(area, fed, node_id=rest[0])
    elif area == "nodes" and rest in (["adverts"], ["sync"]):
        return SubjectInfo(rest[0], fed)
    elif area == "nodes" and len(rest) == 2 and rest[1] == "announce" and rest[0]:
        return SubjectInfo("node_announce", fed, node_id=rest[0])
    raise ValueError(f"not a crankmesh subject: {subject!r}")
