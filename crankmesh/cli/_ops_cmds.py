"""Operator commands: ``crankmesh peers``, ``crankmesh top`` and ``crankmesh explain``.

The parser is built in :mod:`crankmesh.cli`; :func:`add_peers_arguments`,
:func:`add_top_arguments` and :func:`add_explain_arguments` add the arguments these
commands read (each also sets ``fn``).

``cmd_peers``
    Capability-based discovery (seed 003): follow the signed adverts on
    ``crank.<fed>.nodes.adverts`` for ``--listen-s`` seconds, keep the peers that offer
    ``--capability`` (with a GPU of ``--gpu-type`` having ``--min-gpu-memory-gb`` free, or
    total where free is not advertised; at ``--max-price`` or less), and list them ranked
    closest region first (``--region``: exact match, then prefix match, then sharing
    leading ``-`` tokens, then the others, then peers that advertise no region), then by
    availability (non-draining first, a free matching GPU first, lowest load
    ``(running + queued) / capacity`` first), then by price.  ``--only-region`` drops peers
    whose region does not start with ``--region``.
``cmd_top``
    A live view: the peers (from adverts; LOAD measured from their receipts' run time over
    the interval and capacity, JOBS/S from their receipts) and the message rates on
    ``crank.<fed>.>`` by kind, redrawn every ``--interval`` seconds, in colour on a
    terminal, where ``q`` quits; ``--iterations N`` stops after N frames.
``cmd_explain``
    Why a job went where it went: from ``$CRANKMESH_HOME/explanations`` when
    ``crankmesh submit`` ran it on this machine, else the node whose client ran the job
    answers (:mod:`crankmesh.originator.explain_service`).

Exit status: 0 success (``peers`` also when no peer matches); 1 ``explain``: no node
answered; 2 usage errors; 3 NATS unreachable or credentials refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from .._loop import run as run_loop
from .._tables import render_table
from ..capabilities import CapabilityOffer, CapabilitySpecError, GpuOffer, GpuType
from ..directory import Peer, PeerDirectory
from ..market._format import fmt_money, fmt_us, short_did
from ..protocol import subjects
from ..protocol.errors import ProtocolError, TransportError
from ..protocol.messages import AdvertCapability
from ..transport import unsubscribe_quietly
from ._errors import EXIT_CONNECTION

__all__ = [
    "MESSAGE_KINDS",
    "ExecutorActivity",
    "MessageCounter",
    "PeerQuery",
    "PeerRow",
    "add_explain_arguments",
    "add_peers_arguments",
    "add_top_arguments",
    "cmd_explain",
    "cmd_peers",
    "cmd_top",
    "message_kind",
    "region_closeness",
    "select_peers",
]

_DEFAULT_FEDERATION: Final = "default"
_CLEAR_SCREEN: Final = "\x1b[H\x1b[2J"
_SEPARATOR: Final = "-" * 72
#: The message kinds ``top`` counts, in display order ("receipts": the signed receipts
#: executors publish for audit, one per job run; "records": the other audit records:
#: winning bids, settlements, budget tokens).  A receipt's delivery to its originator
#: is not counted again (a quick job sends it as the reply to its assignment).
MESSAGE_KINDS: Final = (
    "announces",
    "bids",
    "assignments",
    "receipts",
    "closes",
    "adverts",
    "records",
)
_KIND_OF: Final = {
    "announce": "announces",
    "assignment": "assignments",
    "closed": "closes",
    "adverts": "adverts",
    "receipts": "receipts",
    "settlements": "records",
    "tokens": "records",
}


# ----------------------------------------------------------------------------- arguments


def _federation_default() -> str:
    return os.environ.get("CRANKMESH_FEDERATION", _DEFAULT_FEDERATION)


def _price(text: str) -> int:
    from . import _parse_price  # at parse time, when crankmesh.cli is fully imported

    return _parse_price(text)


def _gpu_type(text: str) -> GpuType:
    try:
        return GpuType.parse(text)
    except CapabilitySpecError:
        raise argparse.ArgumentTypeError(
            f"unknown GPU type {text!r}: use cuda, rocm or metal"
        ) from None


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _add_connection_arguments(p: argparse.ArgumentParser) -> None:
    from ._connect import add_connection_arguments

    add_connection_arguments(p)


def add_peers_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``crankmesh peers`` (sets ``fn=cmd_peers``)."""
    _add_connection_arguments(p)
    p.add_argument("--capability", help="only peers offering this capability, e.g. python.run")
    p.add_argument(
        "--gpu-type", type=_gpu_type, help="only peers with a GPU of this type: cuda, rocm, metal"
    )
    p.add_argument(
        "--min-gpu-memory-gb",
        type=_non_negative,
        help="only peers with a GPU (of --gpu-type, if given) with this much memory free "
        "(total where free memory is not advertised)",
    )
    p.add_argument(
        "--max-price",
        type=_price,
        help="only peers asking at most this for --capability (for any capability without "
        "it): integer micro-units (2000) or decimal units (0.002)",
    )
    p.add_argument("--region", help="rank peers in this region first (exact, then prefix, e.g. eu)")
    p.add_argument(
        "--only-region",
        action="store_true",
        help="drop peers whose region does not start with --region",
    )
    p.add_argument(
        "--listen-s",
        type=_positive,
        default=2.5,
        help="seconds to collect adverts (peers advertise every ~1 s; default 2.5)",
    )
    p.add_argument("--json", action="store_true", help="a JSON list of peers, best first")
    p.set_defaults(fn=cmd_peers)


def add_top_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``crankmesh top`` (sets ``fn=cmd_top``)."""
    _add_connection_arguments(p)
    p.add_argument(
        "--interval", type=_positive, default=1.0, help="seconds between redraws (default 1)"
    )
    p.add_argument(
        "--iterations", type=int, help="stop after this many frames (default: until Ctrl-C)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per frame")
    p.set_defaults(fn=cmd_top)


def add_explain_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``crankmesh explain`` (sets ``fn=cmd_explain``)."""
    p.add_argument("job_cid", metavar="JOB_CID", help="the job's CID (bafy…)")
    _add_connection_arguments(p)
    p.add_argument(
        "--timeout", type=_positive, default=2.0, help="seconds to wait for an answer (default 2)"
    )
    p.add_argument("--json", action="store_true", help="the explanation as a JSON object")
    p.set_defaults(fn=cmd_explain)


# ----------------------------------------------------------------------------- shared


def _error(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _federation(args: argparse.Namespace) -> str:
    """The federation from the arguments; ValueError when it is not a valid name."""
    return subjects.check_federation(getattr(args, "federation", None) or _federation_default())


async def _connect(args: argparse.Namespace, name: str, *, reconnect: bool) -> Any:
    from ..transport import connect
    from ._connect import nats_options

    return await connect(nats_options(args, name, reconnect=reconnect))


async def _close(nc: Any) -> None:
    with anyio.move_on_after(2.0, shield=True):
        try:
            await nc.close()
        except Exception:
            pass


def _gb(mb: int) -> str:
    return f"{mb / 1024:.3g}G"


def _table(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """The header ``rows[0]`` and the rows, through the one renderer (``right``: right-aligned
    column indexes)."""
    if not rows:
        return []
    return render_table(rows[0], rows[1:], right=right).split("\n")


def _load_ratio(peer: Peer) -> float:
    load = peer.advert.load
    return (load.running + load.queued) / max(load.capacity, 1)


def _offer_of(peer: Peer) -> CapabilityOffer | None:
    """The peer's advertised hardware; None when it is absent or not valid wire form."""
    try:
        return CapabilityOffer.from_wire(peer.advert.hardware)
    except (CapabilitySpecError, TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- peers


def region_closeness(wanted: str, region: str | None) -> tuple[int, int, str]:
    """How close ``region`` is to ``wanted``, as a sort key and a label.

    ``(0, 0, "exact")`` for the same region; ``(1, 0, "prefix")`` when ``region`` starts
    with ``wanted`` (``eu`` → ``eu-west-1``); ``(2, -n, "near")`` when they share the
    first ``n`` ``-``-separated tokens (``eu-west-1`` ~ ``eu-central-1``); then
    ``(3, 0, "other")``; a peer that advertises no region last: ``(4, 0, "unknown")``.
    """
    if not region:
        return (4, 0, "unknown")
    w, r = wanted.strip().lower(), region.strip().lower()
    if r == w:
        return (0, 0, "exact")
    if w and r.startswith(w):
        return (1, 0, "prefix")
    shared = 0
    for a, b in zip(w.split("-"), r.split("-"), strict=False):
        if a != b:
            break
        shared += 1
    if shared:
        return (2, -shared, "near")
    return (3, 0, "other")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerQuery:
    """What ``crankmesh peers`` filters and ranks by; every field optional."""

    capability: str | None = None
    gpu_type: GpuType | None = None
    min_gpu_memory_mb: int | None = None
    max_price: int | None = None
    region: str | None = None
    only_region: bool = False

    @property
    def wants_gpu(self) -> bool:
        return self.gpu_type is not None or self.min_gpu_memory_mb is not None

    def gpu_fits(self, gpu: GpuOffer) -> bool:
        if self.gpu_type is not None and gpu.type is not self.gpu_type:
            return False
        if self.min_gpu_memory_mb is not None:
            available = gpu.available_memory_mb
            return available is not None and available >= self.min_gpu_memory_mb
        return True


@dataclass(frozen=True, slots=True)
class PeerRow:
    """One peer as listed: the advert, what matched, and its sort key."""

    peer: Peer
    offer: CapabilityOffer | None
    region: str | None
    closeness: str | None
    capabilities: tuple[AdvertCapability, ...]
    gpus: tuple[GpuOffer, ...]
    load: float
    price: int | None
    key: tuple[Any, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        a = self.peer.advert
        caps = []
        for c in self.capabilities:
            slo = c.slo
            caps.append(
                {
                    "name": c.name,
                    "price": c.price,
                    "currency": c.currency,
                    "p50_us": slo.p50_us if slo else None,
                    "p95_us": slo.p95_us if slo else None,
                    "p99_us": slo.p99_us if slo else None,
                    "samples": slo.samples if slo else 0,
                }
            )
        return {
            "did": self.peer.did,
            "name": a.name,
            "region": self.region,
            "region_match": self.closeness,
            "load": round(self.load, 4),
            "running": a.load.running,
            "queued": a.load.queued,
            "capacity": a.load.capacity,
            "draining": a.draining,
            "isolation": a.isolation,
            "capabilities": caps,
            "gpus": [g.to_wire() for g in (self.offer.gpus if self.offer else ())],
            "matching_gpus": [g.index for g in self.gpus],
            "price": self.price,
            "advert_ts": a.ts,
            "expires_ms": a.exp,
        }


def select_peers(peers: Iterable[Peer], query: PeerQuery) -> list[PeerRow]:
    """Filter ``peers`` by ``query`` and rank them (see the module docstring)."""
    rows = []
    for peer in peers:
        a = peer.advert
        caps = tuple(
            c for c in a.capabilities if query.capability is None or c.name == query.capability
        )
        if query.max_price is not None:
            caps = tuple(c for c in caps if c.price <= query.max_price)
        if not caps:
            continue
        offer = _offer_of(peer)
        gpus: tuple[GpuOffer, ...] = ()
        if query.wants_gpu:
            gpus = tuple(g for g in (offer.gpus if offer else ()) if query.gpu_fits(g))
            if not gpus:
                continue
        region = a.region or (offer.network.region if offer else None)
        closeness: tuple[int, int, str] | None = None
        if query.region is not None:
            closeness = region_closeness(query.region, region)
            if query.only_region and closeness[0] > 1:
                continue
        load = _load_ratio(peer)
        price = min(c.price for c in caps)
        gpu_busy = bool(gpus) and all(g.busy for g in gpus)
        key = (
            closeness[:2] if closeness is not None else (0, 0),
            a.draining,
            gpu_busy,
            load,
            price,
            a.name or "",
            peer.did,
        )
        rows.append(
            PeerRow(
                peer=peer,
                offer=offer,
                region=region,
                closeness=closeness[2] if closeness is not None else None,
                capabilities=caps,
                gpus=gpus,
                load=load,
                price=price,
                key=key,
            )
        )
    rows.sort(key=lambda r: r.key)
    return rows


def _gpu_summary(offer: CapabilityOffer | None) -> str:
    if offer is None or not offer.gpus:
        return "-"
    groups: dict[str, int] = {}
    for g in offer.gpus:
        parts = [g.type.value]
        if g.model:
            parts.append(g.model)
        if g.memory_mb is not None:
            parts.append(_gb(g.memory_mb))
        if g.free_memory_mb is not None:
            parts.append(f"({_gb(g.free_memory_mb)} free)")
        if g.busy:
            parts.append("busy")
        label = " ".join(parts)
        groups[label] = groups.get(label, 0) + 1
    return ", ".join(f"{n}x {label}" if n > 1 else label for label, n in groups.items())


def _load_text(peer: Peer, ratio: float) -> str:
    load = peer.advert.load
    text = f"{ratio:.2f} ({load.running}+{load.queued}/{load.capacity})"
    return text + " draining" if peer.advert.draining else text


def render_peers(rows: Sequence[PeerRow]) -> str:
    """The ``peers`` table: one line per capability, peer columns on its first line."""
    header = (
        "NAME",
        "DID",
        "REGION",
        "LOAD",
        "ISOLATION",
        "GPU",
        "CAPABILITY",
        "PRICE",
        "P95",
    )
    table: list[tuple[str, ...]] = [header]
    for row in rows:
        a = row.peer.advert
        first = (
            a.name or "-",
            short_did(row.peer.did),
            row.region or "-",
            _load_text(row.peer, row.load),
            a.isolation,
            _gpu_summary(row.offer),
        )
        blank = ("",) * len(first)
        for i, c in enumerate(row.capabilities):
            p95 = c.slo.p95_us if c.slo is not None else None
            table.append(
                (
                    *(first if i == 0 else blank),
                    c.name,
                    fmt_money(c.price, c.currency),
                    fmt_us(p95) if p95 is not None else "-",
                )
            )
    return "\n".join(_table(table, right=(7, 8)))


async def _collect_peers(args: argparse.Namespace, federation: str) -> list[Peer]:
    nc = await _connect(args, "crankmesh-peers", reconnect=False)
    try:
        directory = PeerDirectory(federation=federation)
        async with anyio.create_task_group() as tg:
            await tg.start(directory.serve, nc)
            await anyio.sleep(float(args.listen_s))
            tg.cancel_scope.cancel()
        return directory.peers()
    finally:
        await _close(nc)


def cmd_peers(args: argparse.Namespace) -> int:
    """Discover peers by capability, GPU, price and region; see the module docstring."""
    try:
        federation = _federation(args)
    except ValueError as exc:
        return _error(str(exc))
    if getattr(args, "only_region", False) and not args.region:
        return _error("--only-region needs --region")
    min_gb = args.min_gpu_memory_gb
    query = PeerQuery(
        capability=args.capability,
        gpu_type=args.gpu_type,
        min_gpu_memory_mb=None if min_gb is None else math.ceil(min_gb * 1024),
        max_price=args.max_price,
        region=args.region,
        only_region=bool(getattr(args, "only_region", False)),
    )
    try:
        peers = run_loop(_collect_peers, args, federation)
    except TransportError as exc:
        return _error(str(exc), EXIT_CONNECTION)
    except ValueError as exc:
        return _error(str(exc))
    rows = select_peers(peers, query)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows]))
    elif not rows:
        seen = f"{len(peers)} peer{'' if len(peers) == 1 else 's'} seen"
        print(f"no peers match ({seen} on federation {federation!r} in {args.listen_s:g} s)")
    else:
        print(render_peers(rows))
        print(
            f"\n{len(rows)} of {len(peers)} peers match on federation {federation!r} "
            f"(adverts collected for {args.listen_s:g} s)"
        )
    return 0


# ----------------------------------------------------------------------------- top


def message_kind(subject: str) -> str | None:
    """Which of :data:`MESSAGE_KINDS` a subject carries; None for anything else."""
    try:
        info = subjects.parse_subject(subject)
    except ValueError:
        return None
    if info.kind == "bids":  # jobs.<cid>.bids carries bids; bids.<node> the persisted winners
        return "bids" if info.job_cid is not None else "records"
    return _KIND_OF.get(info.kind)


@dataclass
class MessageCounter:
    """Totals per kind, and the counts since the last :meth:`take`."""

    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MESSAGE_KINDS, 0))
    _taken: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MESSAGE_KINDS, 0))

    def observe(self, subject: str) -> str | None:
        kind = message_kind(subject)
        if kind is not None:
            self.totals[kind] += 1
        return kind

    def take(self) -> dict[str, int]:
        """Counts since the previous call."""
        recent = {k: self.totals[k] - self._taken[k] for k in MESSAGE_KINDS}
        self._taken = dict(self.totals)
        return recent


@dataclass
class ExecutorActivity:
    """What the receipts on ``receipts.<executor>`` say each executor did since the last
    :meth:`take`: jobs finished and the wall time they ran (µs, from the receipts'
    metering).  ``top``'s LOAD is that busy time over the interval and the advertised
    capacity: measured, where the advertised running+queued is a snapshot that quick
    jobs rarely show."""

    _jobs: dict[str, int] = field(default_factory=dict)
    _wall_us: dict[str, int] = field(default_factory=dict)

    def observe_receipt(self, data: bytes) -> None:
        from ..protocol.messages import Receipt, decode_message

        try:
            _, receipt = decode_message(data, Receipt)
        except ProtocolError:
            return
        did = receipt.signer
        self._jobs[did] = self._jobs.get(did, 0) + 1
        self._wall_us[did] = self._wall_us.get(did, 0) + receipt.metering.wall_us

    def take(self) -> dict[str, tuple[int, int]]:
        """``{executor: (jobs, wall_us)}`` since the previous call."""
        out = {d: (n, self._wall_us.get(d, 0)) for d, n in self._jobs.items()}
        self._jobs, self._wall_us = {}, {}
        return out


def _busy(peer: Peer, activity: dict[str, tuple[int, int]], elapsed_s: float) -> float:
    _, wall_us = activity.get(peer.did, (0, 0))
    return wall_us / (max(elapsed_s, 1e-9) * 1e6 * max(peer.advert.load.capacity, 1))


def _load_style(ratio: float, draining: bool) -> str:
    if draining:
        return "magenta"
    return "green" if ratio < 0.5 else "yellow" if ratio < 0.9 else "bold red"


def _top_frame(
    *,
    federation: str,
    server: str,
    peers: Sequence[Peer],
    recent: dict[str, int],
    totals: dict[str, int],
    elapsed_s: float,
    activity: dict[str, tuple[int, int]] | None = None,
    color: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The text (with ANSI colours when ``color``) and the JSON object of one ``top``
    frame."""
    from .._tables import table as rich_table
    from .._tables import to_text

    activity = activity or {}
    now = time.time()
    per_s = max(elapsed_s, 1e-9)
    peers = sorted(peers, key=lambda p: (p.advert.name or "", p.did))
    title = (
        f"crankmesh top  federation {federation!r} on {server}  "
        f"{time.strftime('%H:%M:%S', time.localtime(now))}"
    )
    rows, row_styles = [], []
    for p in peers:
        a = p.advert
        busy = _busy(p, activity, elapsed_s)
        ratio = max(busy, _load_ratio(p))
        jobs = activity.get(p.did, (0, 0))[0]
        rows.append(
            (
                a.name or "-",
                short_did(p.did),
                a.region or "-",
                f"{busy:.2f}",
                f"{jobs / per_s:.1f}",
                _load_text(p, _load_ratio(p)),
                ", ".join(f"{c.name} ({fmt_money(c.price, c.currency)})" for c in a.capabilities),
            )
        )
        row_styles.append(_load_style(ratio, a.draining))
    header = ("NAME", "DID", "REGION", "LOAD", "JOBS/S", "ADVERTISED", "CAPABILITIES")
    mrows = [
        (kind, str(recent[kind]), f"{recent[kind] / per_s:.1f}", str(totals[kind]))
        for kind in MESSAGE_KINDS
    ]
    mheader = ("KIND", f"LAST {elapsed_s:.1f}s", "PER SEC", "TOTAL")
    if color:
        from rich.console import Group
        from rich.padding import Padding
        from rich.text import Text

        parts: list[Any] = [Text(title, style="bold"), Text(""), Text(f"PEERS ({len(peers)})")]
        parts.append(
            Padding(
                rich_table(header, rows, right=(3, 4), styles={0: "cyan"}, row_styles=row_styles),
                (0, 0, 0, 2),
            )
        )
        if not peers:
            parts.append(Text("  (no adverts yet: peers advertise about every second)"))
        parts += [Text(""), Text("MESSAGES")]
        parts.append(
            Padding(rich_table(mheader, mrows, right=(1, 2, 3), styles={0: "cyan"}), (0, 0, 0, 2))
        )
        parts.append(Text("q: quit", style="dim"))
        text = to_text(Group(*parts), color=True)
    else:
        lines = [title, "", f"PEERS ({len(peers)})"]
        lines.extend("  " + line for line in _table([header, *rows], right=(3, 4)))
        if not peers:
            lines.append("  (no adverts yet: peers advertise about every second)")
        lines += ["", "MESSAGES"]
        lines.extend("  " + line for line in _table([mheader, *mrows], right=(1, 2, 3)))
        text = "\n".join(lines)
    obj = {
        "ts": round(now, 3),
        "federation": federation,
        "interval_s": round(elapsed_s, 3),
        "peers": [
            {
                "did": p.did,
                "name": p.advert.name,
                "region": p.advert.region,
                "load": round(max(_busy(p, activity, elapsed_s), _load_ratio(p)), 4),
                "busy": round(_busy(p, activity, elapsed_s), 4),
                "advertised_load": round(_load_ratio(p), 4),
                "jobs_per_s": round(activity.get(p.did, (0, 0))[0] / per_s, 3),
                "draining": p.advert.draining,
                "capabilities": [c.name for c in p.advert.capabilities],
            }
            for p in peers
        ],
        "messages": {k: {"last": recent[k], "total": totals[k]} for k in MESSAGE_KINDS},
    }
    return text, obj


async def _run_top(args: argparse.Namespace, federation: str) -> None:
    from ..transport import NatsOptions

    nc = await _connect(args, "crankmesh-top", reconnect=True)
    try:
        directory = PeerDirectory(federation=federation)
        counter = MessageCounter()
        activity = ExecutorActivity()

        async def on_message(msg: Any) -> None:
            kind = counter.observe(msg.subject)
            if kind == "adverts":
                try:
                    directory.handle(msg.data)
                except ProtocolError:
                    pass
            elif kind == "receipts":
                activity.observe_receipt(msg.data)

        sub = await nc.subscribe(f"{subjects.ROOT}.{federation}.>", cb=on_message)
        try:
            await nc.flush()
            tty = sys.stdout.isatty() and not args.json
            server = ", ".join(NatsOptions.from_url(args.nats).redacted_servers)
            iterations = args.iterations
            interval = float(args.interval)
            last = anyio.current_time()
            deadline = last
            frame = 0
            quit_pressed = anyio.Event()
            with _keys(quit_pressed, enabled=tty):
                while iterations is None or frame < iterations:
                    deadline += interval
                    with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                        await quit_pressed.wait()
                    if quit_pressed.is_set():
                        break
                    now = anyio.current_time()
                    text, obj = _top_frame(
                        federation=federation,
                        server=server,
                        peers=directory.peers(),
                        recent=counter.take(),
                        totals=dict(counter.totals),
                        elapsed_s=now - last,
                        activity=activity.take(),
                        color=tty,
                    )
                    last = now
                    if args.json:
                        out = json.dumps(obj)
                    elif tty:
                        out = _CLEAR_SCREEN + text
                    else:
                        out = text if frame == 0 else f"{_SEPARATOR}\n{text}"
                    print(out, flush=True)
                    frame += 1
        finally:
            await unsubscribe_quietly(sub)
    finally:
        await _close(nc)


@contextmanager
def _keys(quit_pressed: anyio.Event, *, enabled: bool) -> Iterator[None]:
    """While ``top`` draws on a terminal: stdin in cbreak mode (keys arrive unbuffered,
    unechoed) and ``q`` (or ``Q``) sets ``quit_pressed``; the terminal is restored after."""
    import asyncio

    fd = sys.stdin.fileno() if enabled and sys.stdin.isatty() else None
    if fd is None:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def on_key() -> None:
        try:
            data = os.read(fd, 32)
        except OSError:
            return
        if b"q" in data.lower():
            quit_pressed.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def cmd_top(args: argparse.Namespace) -> int:
    """A live view of peers and message rates; see the module docstring."""
    try:
        federation = _federation(args)
    except ValueError as exc:
        return _error(str(exc))
    if args.iterations is not None and args.iterations < 1:
        return _error("--iterations must be at least 1")
    try:
        run_loop(_run_top, args, federation)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `crankmesh top | head`: the reader is gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except TransportError as exc:
        return _error(str(exc), EXIT_CONNECTION)
    except ValueError as exc:
        return _error(str(exc))
    return 0


# ----------------------------------------------------------------------------- explain


def _render_explanation_dict(expl: dict[str, Any]) -> str:
    """A readable table from ``Explanation.to_dict()`` (for replies without ``render``)."""
    lines = [f"Selection for job {expl.get('job_cid')} — policy {expl.get('policy')!r}"]
    if expl.get("algorithm"):
        lines.append(f"  algorithm:    {expl['algorithm']}")
    terms = expl.get("terms")
    if isinstance(terms, dict) and terms:
        lines.append("  terms:        " + ", ".join(f"{k}={v}" for k, v in terms.items()))
    table: list[tuple[str, ...]] = [("rank", "executor", "price", "p95", "load", "score / filter")]
    considered = expl.get("considered")
    for c in considered if isinstance(considered, list) else []:
        if not isinstance(c, dict):
            continue
        if c.get("failed_filter"):
            last = f"{c.get('failed_filter')}: {c.get('failure_reason')}"
        else:
            last = str(c.get("score"))
        p95 = c.get("p95_us")
        load = c.get("load")
        table.append(
            (
                str(c.get("rank") if c.get("rank") is not None else "-"),
                short_did(str(c.get("executor"))),
                f"{c.get('price_micros')} µ{c.get('currency')}",
                fmt_us(p95) if isinstance(p95, int | float) else "-",
                f"{load:.2f}" if isinstance(load, int | float) else "-",
                last,
            )
        )
    lines.append("")
    lines.extend("  " + line for line in _table(table, right=(0, 2, 3, 4)))
    winner = expl.get("winner")
    lines.append("")
    if isinstance(winner, dict):
        lines.append(f"  selected:     {winner.get('executor')} (bid {winner.get('bid_cid')})")
    else:
        lines.append("  selected:     nothing")
    lines.append(f"  reason:       {expl.get('reason')}")
    warnings = expl.get("warnings")
    if isinstance(warnings, list) and warnings:
        lines.append("  warnings:")
        lines.extend(f"    - {w}" for w in warnings)
    return "\n".join(lines)


async def _ask(args: argparse.Namespace, federation: str, job_cid: str) -> Any:
    from ..originator.explain_service import request_explanation

    nc = await _connect(args, "crankmesh-explain", reconnect=False)
    try:
        return await request_explanation(
            nc, federation=federation, job_cid=job_cid, timeout_s=float(args.timeout)
        )
    finally:
        await _close(nc)


def cmd_explain(args: argparse.Namespace) -> int:
    """Print why a job's executor was chosen, as told by the node that ran it."""
    from ..protocol.cid import parse_cid

    try:
        federation = _federation(args)
    except ValueError as exc:
        return _error(str(exc))
    job_cid = str(args.job_cid).strip()
    try:
        parse_cid(job_cid)
    except ProtocolError as exc:
        return _error(f"{job_cid!r:.100} is not a job CID ({exc})")
    from ..originator.explain_service import load_explanation

    # Jobs `crankmesh submit` ran on this machine: their explanation was saved when they
    # ended (the submitting process has exited since, so no node could answer for them).
    reply = load_explanation(job_cid)
    try:
        if reply is None:
            reply = run_loop(_ask, args, federation, job_cid)
    except TransportError as exc:
        return _error(str(exc), EXIT_CONNECTION)
    except ValueError as exc:
        return _error(str(exc))
    if reply is None:
        return _error(
            f"no node on federation {federation!r} answered for job {job_cid} within "
            f"{args.timeout:g} s: no node on this federation ran job {job_cid}, or it has "
            "forgotten it (nodes keep the last 1024 jobs)",
            1,
        )
    if args.json:
        print(json.dumps(reply.to_dict()))
    else:
        text = reply.render or _render_explanation_dict(reply.explanation)
        print(f"explained by {reply.node}\n{text}")
    return 0
