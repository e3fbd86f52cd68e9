"""Every table and cache a node holds, its bound, and a gauge for each.

A node that runs for days must not grow: each structure below is bounded (by entries,
bytes or time) and exported as ``crankmesh_table_entries{table}`` (and
``crankmesh_table_bytes{table}`` where bytes are what is bounded), read at scrape time.

| table | bound |
|---|---|
| ``executor_bids`` | live bids: capacity reserved, released at ``exp`` (bid validity) |
| ``executor_bid_expiry`` | one heap entry per bid made in the last bid validity |
| ``executor_jobs`` | idempotency records: ``idempotency_capacity``, for the window |
| ``executor_live_jobs`` | accepted jobs not yet answered: ≤ concurrency + queue depth |
| ``executor_results_*`` | re-deliveries: ``result_memory_bytes``, ``result_disk_bytes`` |
| ``executor_announce_replay`` | announce signatures seen: 100,000, each until its expiry |
| ``executor_token_buckets`` | per-originator rate limits: 10,000 (least recent out) |
| ``executor_match_cache`` | requirement shapes: 1,024 (cleared when full) |
| ``directory_peers`` | peers whose advert is live (TTL ≤ 120 s), at most 10,000 |
| ``reputation_book`` | receipts remembered for joins: :data:`REPUTATION_MEMORY` |
| ``client_tracks`` | jobs this node originates right now |
| ``client_rankings`` | selection explanations: 1,024 |
| ``client_costs`` | cost entries: :data:`crankmesh.originator.client.COSTS_KEPT` |
| ``records_pending`` | audit records waiting for JetStream (the record store's buffer limit) |
| ``verified_envelopes`` | envelopes whose signature verified (per process): 4,096 and 1 MiB |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .protocol.envelope import verified_cache_size

if TYPE_CHECKING:
    from .node import Node
    from .observability import Metrics

__all__ = ["REPUTATION_MEMORY", "table_sizes", "watch_tables"]

#: Receipts (and as many unjoined bids and settlements, and chain links per executor) a
#: node's reputation book remembers: minutes of records at a busy federation's rate;
#: joins happen within seconds, and counts already made are kept.
REPUTATION_MEMORY: Final = 2_048


def _len(obj: object) -> int:
    try:
        return len(obj)  # type: ignore[arg-type]
    except TypeError:
        return 0


def table_sizes(node: Node) -> dict[str, int]:
    """Entries per table now (bytes for ``*_bytes``): what the gauges report."""
    ex, cl, book = node.executor, node.client, node.reputation
    verified, verified_bytes = verified_cache_size()
    out: dict[str, int] = {
        "verified_envelopes": verified,
        "verified_envelopes_bytes": verified_bytes,
        "directory_peers": len(node.directory),
        "reputation_book": _len(getattr(book, "_jobs", ())),
    }
    if ex is not None:
        out.update(
            executor_bids=len(ex._bids),
            executor_bid_expiry=len(ex._bid_expiry),
            executor_jobs=len(ex._jobs),
            executor_live_jobs=len(ex._live),
            executor_results_memory=ex.results.memory_entries,
            executor_results_disk=ex.results.disk_entries,
            executor_results_memory_bytes=ex.results.memory_bytes,
            executor_results_disk_bytes=ex.results.disk_bytes,
            executor_announce_replay=len(ex._announce_replay),
            executor_token_buckets=len(ex._buckets._state),
            executor_match_cache=len(ex._match_cache),
        )
    if cl is not None:
        out.update(
            client_tracks=len(cl._tracks),
            client_rankings=len(cl._rankings),
            client_costs=len(cl._costs),
        )
    if node.record_store is not None:
        out["records_pending"] = node.record_store.pending
    return out


def watch_tables(metrics: Metrics, node: Node) -> None:
    """Export :func:`table_sizes` as gauges, computed when scraped."""

    def reader(name: str) -> Callable[[], float]:
        return lambda: float(table_sizes(node).get(name, 0))

    names = [
        "directory_peers",
        "reputation_book",
        "executor_bids",
        "executor_bid_expiry",
        "executor_jobs",
        "executor_live_jobs",
        "executor_results_memory",
        "executor_results_disk",
        "executor_announce_replay",
        "executor_token_buckets",
        "executor_match_cache",
        "client_tracks",
        "client_rankings",
        "client_costs",
        "records_pending",
        "verified_envelopes",
    ]
    for name in names:
        metrics.table_entries.labels(table=name).set_function(reader(name))
    for name in ("executor_results_memory", "executor_results_disk", "verified_envelopes"):
        metrics.table_bytes.labels(table=name).set_function(reader(f"{name}_bytes"))
