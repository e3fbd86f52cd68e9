"""``crankmesh audit`` and ``crankmesh receipts export`` (RFC 0002).

The parser is built in :mod:`crankmesh.cli`; :func:`add_audit_arguments` and
:func:`add_receipts_export_arguments` add the arguments these commands read. Attributes
read from the ``argparse.Namespace``:

``cmd_audit``
    ``nats`` (str | None: NATS URL(s), comma-separated), ``file`` (str | None: an export
    file), exactly one of the two; ``stream`` (str | None: stream name, default
    ``CRANKMESH_<FED>``), ``federation`` (str | None, default ``"default"``; with
    ``--file`` the export header's), ``json`` (bool), and, optional on the namespace,
    ``trusted`` (list of DIDs | None) and ``connect_timeout`` (float seconds, default 5).

``cmd_receipts_export``
    ``nats`` (str, required), ``out`` (str, required), ``stream``, ``federation``,
    ``json``, ``connect_timeout`` as above.

Exit status: 0 everything verified (export: written), 1 at least one finding (each
printed with its receipt or record CID and what is wrong), 2 usage errors: neither or
both of ``--nats`` / ``--file``, an unreadable export file, no such stream, an export
onto an existing file without ``--force`` (on a terminal it asks); 3 NATS unreachable or
credentials refused.  ``--nats`` defaults to ``$CRANKMESH_NATS``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import anyio

from .._loop import run as run_loop
from ..protocol.errors import StreamNotFound, TransportError
from ..receipts.audit import Record, audit
from ..receipts.export import ExportError, ExportHeader, read_export, read_stream, write_export
from ..receipts.store import stream_name
from ._connect import nats_options, nats_url_of, positive_float
from ._errors import EXIT_CONNECTION, UsageError

__all__ = [
    "add_audit_arguments",
    "add_receipts_export_arguments",
    "cmd_audit",
    "cmd_receipts_export",
]

_DEFAULT_FEDERATION = "default"


def _federation_default() -> str:
    return os.environ.get("CRANKMESH_FEDERATION", _DEFAULT_FEDERATION)


def add_audit_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``crankmesh audit`` (sets ``fn=cmd_audit``)."""
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--nats", help="NATS URL(s), comma-separated: audit the live stream (or $CRANKMESH_NATS)"
    )
    src.add_argument("--file", help="audit an export file (crankmesh receipts export)")
    p.add_argument("--stream", help="JetStream stream (default CRANKMESH_<FEDERATION>)")
    p.add_argument(
        "--federation", help="federation name (default: $CRANKMESH_FEDERATION or 'default')"
    )
    p.add_argument(
        "--trusted",
        action="append",
        metavar="DID",
        help="accept only records signed by these DIDs (repeatable); others are findings",
    )
    p.add_argument(
        "--connect-timeout", type=positive_float, default=5.0, help="seconds (default 5)"
    )
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.add_argument(
        "--pipeline-runs",
        metavar="STATE_DIR",
        help="also group the receipts by pipeline run, from the run logs in this directory "
        "(crankmesh pipeline run --state-dir; default $CRANKMESH_HOME/pipelines)",
    )
    p.add_argument(
        "--run",
        action="append",
        metavar="RUN_ID",
        help="with --pipeline-runs: only these runs (repeatable)",
    )
    p.set_defaults(fn=cmd_audit)


def add_receipts_export_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``crankmesh receipts export`` (sets ``fn=cmd_receipts_export``)."""
    p.add_argument("--nats", help="NATS URL(s), comma-separated (default: $CRANKMESH_NATS)")
    p.add_argument("--out", required=True, help="export file to write (JSON Lines)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--stream", help="JetStream stream (default CRANKMESH_<FEDERATION>)")
    p.add_argument(
        "--federation", help="federation name (default: $CRANKMESH_FEDERATION or 'default')"
    )
    p.add_argument(
        "--connect-timeout", type=positive_float, default=5.0, help="seconds (default 5)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(fn=cmd_receipts_export)


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _fetch(options: Any, stream: str) -> list[Record]:
    from ..transport import connect

    nc = await connect(options)
    try:
        return await read_stream(nc, stream)
    finally:
        with anyio.move_on_after(2.0, shield=True):
            try:
                await nc.close()
            except Exception:
                pass


def _optional(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` for :func:`nats_url_of` where a missing URL is not an error (``--file``)."""
    return argparse.Namespace(**{**vars(args), "_nats_required": False})


def _confirm_overwrite(path: str) -> bool:
    """Ask on a terminal whether to overwrite ``path``; never (False) without one."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    from rich.prompt import Confirm

    return Confirm.ask(f"{path} exists; overwrite it?", default=False)


def _stream_and_federation(args: argparse.Namespace) -> tuple[str, str]:
    federation = getattr(args, "federation", None) or _federation_default()
    stream = getattr(args, "stream", None) or stream_name(federation)
    return stream, federation


def cmd_audit(args: argparse.Namespace) -> int:
    """Audit a live stream (``--nats``) or an export file (``--file``); see the module doc."""
    path: str | None = getattr(args, "file", None)
    url: str | None = getattr(args, "nats", None) or (
        None if path is not None else nats_url_of(_optional(args))
    )
    if (url is None) == (path is None):
        return _usage("give exactly one of --nats URL (the live stream) or --file PATH (an export)")
    trusted: list[str] | None = getattr(args, "trusted", None)
    source: str
    try:
        if path is not None:
            header, records = read_export(path)
            source = f"export {path} (federation {header.federation!r}, stream {header.stream!r})"
        else:
            assert url is not None
            stream, federation = _stream_and_federation(args)
            args.nats = url
            options = nats_options(args, "crankmesh-audit")
            records = run_loop(_fetch, options, stream)
            source = f"stream {stream!r} (federation {federation!r})"
        report = audit(records, now_ms=_now_ms(), trusted=trusted)
    except StreamNotFound as exc:  # the server answered: a wrong --stream / --federation
        return _usage(str(exc))
    except TransportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONNECTION
    except (ExportError, ValueError) as exc:
        return _usage(str(exc))
    runs_dir: str | None = getattr(args, "pipeline_runs", None)
    groups = None
    if runs_dir is not None:
        from ._pipeline_cmds import load_run_logs

        try:
            runs = load_run_logs(runs_dir, getattr(args, "run", None))
        except ValueError as exc:
            return _usage(str(exc))
        from ..receipts.pipeline_audit import group_by_pipeline_run

        groups = group_by_pipeline_run(records, report, runs)
    if getattr(args, "json", False):
        obj: dict[str, Any] = report.to_dict()
        obj["source"] = source
        if groups is not None:
            obj["pipeline_runs"] = [g.to_dict() for g in groups]
        print(json.dumps(obj))
    else:
        print(f"source: {source}")
        print(report.render())
        for g in groups or ():
            print(g.render())
    if groups is not None and not all(g.ok for g in groups):
        return 1
    return 0 if report.ok else 1


def cmd_receipts_export(args: argparse.Namespace) -> int:
    """Write every record of the stream to ``--out``; see the module doc."""
    out: str | None = getattr(args, "out", None)
    if not out:
        return _usage("crankmesh receipts export needs --out PATH")
    if os.path.lexists(out) and not getattr(args, "force", False):
        if not _confirm_overwrite(out):
            raise UsageError(f"{out} exists; pass --force to overwrite it")
    options = nats_options(args, "crankmesh-export")  # before connecting: exit 2
    try:
        stream, federation = _stream_and_federation(args)
        records = run_loop(_fetch, options, stream)
        header = ExportHeader(federation=federation, stream=stream, exported_ms=_now_ms())
        write_export(out, records, header)
    except TransportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONNECTION
    except (ExportError, ValueError) as exc:
        return _usage(str(exc))
    summary = {
        "out": out,
        "stream": stream,
        "federation": federation,
        "records": len(records),
        "first_seq": records[0].seq if records else None,
        "last_seq": records[-1].seq if records else None,
    }
    if getattr(args, "json", False):
        print(json.dumps(summary))
    else:
        print(f"exported {len(records)} record(s) of stream {stream!r} to {out}")
    return 0
