"""The ``crankmesh`` command line.

Every command has ``--help``; those that report results take ``--json`` for
machine output.  Exit status, for every command (:mod:`crankmesh.cli._errors`):
0 success, 1 the operation failed (a job failed or nobody could run it, audit
findings), 2 usage errors, 3 NATS unreachable or credentials refused, 130
interrupted.  Errors are one ``error:`` line; ``crankmesh --debug ...`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from .._loop import backend_options
from .._loop import run as run_loop
from . import _pipeline_cmds
from ._errors import EXIT_CODES_HELP, EXIT_USAGE, CliParser, run_command

__all__ = ["main"]


def _parse_price(text: str) -> int:
    """Prices on the command line: integer micro-units (``1500``) or decimals (``0.0015``)."""
    if any(c in text for c in ".eE"):
        from decimal import Decimal, InvalidOperation

        try:
            return int(Decimal(text) * 1_000_000)
        except InvalidOperation:
            raise argparse.ArgumentTypeError(f"not a price: {text!r}") from None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a price: {text!r}") from None


def _emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str))
    else:
        print(text)


# ----------------------------------------------------------------------------- identity


def _cmd_identity_new(args: argparse.Namespace) -> int:
    from ..keystore import save_identity
    from ..protocol.errors import KeystoreError
    from ..protocol.identity import Identity

    identity = Identity.generate()
    try:
        path = save_identity(identity, args.out, overwrite=args.force)
    except KeystoreError as exc:  # e.g. the file exists and no --force: a usage error
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _emit(
        args,
        {"did": identity.did, "path": str(path)},
        f"{identity.did}\nkey written to {path} (mode 0600)",
    )
    return 0


def _cmd_identity_show(args: argparse.Namespace) -> int:
    from ..keystore import default_key_path, load_identity
    from ..protocol.errors import KeystoreError
    from ..protocol.identity import spiffe_alias

    path = Path(args.key) if args.key else default_key_path()
    try:
        identity = load_identity(path)
    except KeystoreError as exc:  # missing, malformed or unsafe key file: usage
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    obj = {"did": identity.did, "path": str(path), "public_key": identity.public_key.hex()}
    if args.trust_domain:
        obj["spiffe"] = spiffe_alias(identity.did, args.trust_domain)
    _emit(args, obj, "\n".join(f"{k}: {v}" for k, v in obj.items()))
    return 0


# ----------------------------------------------------------------------------- node


def _cmd_node(args: argparse.Namespace) -> int:
    """Run a node until SIGINT/SIGTERM (drain, exit 0; a second signal exits at once)."""
    from ..config import ConfigError, flags_from_args, load_settings, validate_for_mode
    from ..keystore import load_identity, load_or_create_identity
    from ..node import Node
    from ..observability import configure_logging
    from ..protocol.errors import KeystoreError

    try:
        settings = load_settings(flags=flags_from_args(args), file=args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems = validate_for_mode(settings)
    if args.print_config:
        print(settings.to_toml())
        for problem in problems:
            print(f"# problem ({settings.mode} mode): {problem}")
        return 1 if problems else 0
    if problems:
        print(f"error: refusing to start in {settings.mode} mode:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    from ..protocol.errors import StateDirError
    from ..state_dir import check_state_dir

    try:  # before anything creates files there (key, lock, receipt chain)
        check_state_dir(settings.state_dir)
    except StateDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(json=settings.log_format == "json", level=settings.log_level)
    log = logging.getLogger("crankmesh.node")
    for warning in settings.warnings:
        log.warning("%s", warning)
    try:
        identity = (
            load_identity(settings.key_file)
            if settings.is_production
            else load_or_create_identity(settings.key_file)
        )
    except KeystoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def serve(stop: anyio.Event) -> None:
        from ..testing import NatsServer

        async with AsyncExitStack() as stack:
            servers = None
            if settings.embedded_nats:
                # The server runs in its own process group (the terminal's Ctrl-C reaches
                # only the node) and, entered first, stops after the node has drained.
                server = await stack.enter_async_context(NatsServer())
                servers = [server.url]
                log.info("no NATS URL given: started an embedded nats-server at %s", server.url)
            options = settings.nats_options(servers)
            node = await stack.enter_async_context(
                Node(identity=identity, nats=options, config=settings.node_config())
            )
            ready = {
                "event": "ready",
                "did": node.did,
                "mode": settings.mode,
                "nats": ",".join(options.redacted_servers),
                "federation": settings.federation,
                "metrics": (
                    f"http://{settings.metrics_host}:{node.metrics_port}/metrics"
                    if node.metrics_port is not None
                    else None
                ),
            }
            print(json.dumps(ready), flush=True)
            log.info("node %s ready (%s mode)", node.did, settings.mode)
            await stop.wait()
            # leaving the stack uncancelled: the node drains (running jobs finish and
            # publish their receipts), then the embedded server stops

    async def run() -> None:
        # The daemon's shape: the signal receiver is open before anything starts (a
        # Ctrl-C during startup is not a KeyboardInterrupt: the node finishes starting,
        # then drains), and a signal ends serve() normally, not by cancellation, so the
        # drain can wait for running jobs; the embedded server stops after the node.
        stop = anyio.Event()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:

                async def stop_on_signal() -> None:
                    async for _sig in signals:
                        log.info("signal received: draining (a second signal exits at once)")
                        signal.signal(signal.SIGINT, signal.SIG_DFL)
                        signal.signal(signal.SIGTERM, signal.SIG_DFL)
                        stop.set()
                        return

                tg.start_soon(stop_on_signal)
                await serve(stop)
                tg.cancel_scope.cancel()

    run_loop(run)  # errors: one line and an exit code from crankmesh.cli._errors
    return 0


# ----------------------------------------------------------------------------- demo


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        nodes=args.nodes,
        jobs=args.jobs,
        as_json=args.json,
        python=not args.echo_only,
        nats=args.nats,
    )


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="crankmesh",
        description="crankmesh: a decentralized pub/sub bidding mesh over NATS.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version="crankmesh 0.1.0")
    p.add_argument(
        "--debug", action="store_true", help="print the traceback of an error, not just its line"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CliParser)

    d = sub.add_parser(
        "demo",
        help="run a demo mesh on an embedded nats-server",
        description="Start an embedded nats-server and N nodes with different "
        "prices, run jobs through the full signed flow, print each result. "
        "Exits 0 only if every job ended with a verified receipt.",
    )
    d.add_argument("--nodes", type=int, default=3)
    d.add_argument("--jobs", type=int, default=20)
    d.add_argument("--echo-only", action="store_true", help="skip python.run jobs")
    d.add_argument(
        "--nats",
        help="use this NATS server (with JetStream) instead of an embedded one, e.g. to "
        "audit its stream afterwards with `crankmesh audit --nats URL`",
    )
    d.add_argument("--json", action="store_true", help="one JSON object per job, then a summary")
    d.set_defaults(fn=_cmd_demo)

    ident = sub.add_parser("identity", help="create or show a node identity (did:key)")
    isub = ident.add_subparsers(dest="identity_command", required=True, metavar="ACTION")
    n = isub.add_parser("new", help="generate an Ed25519 key and write it (mode 0600)")
    n.add_argument("--out", required=True, help="key file to create")
    n.add_argument("--force", action="store_true", help="overwrite an existing file")
    n.add_argument("--json", action="store_true")
    n.set_defaults(fn=_cmd_identity_new)
    s = isub.add_parser("show", help="print the DID of a key file")
    s.add_argument(
        "--key", help="key file (default: $CRANKMESH_HOME/node.key or ~/.crankmesh/node.key)"
    )
    s.add_argument("--trust-domain", help="also print a SPIFFE-style alias in this trust domain")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_cmd_identity_show)

    nd = sub.add_parser(
        "node",
        help="run a node (executor + originator) until SIGINT/SIGTERM",
        description="Run a crankmesh node. Settings come from flags > CRANKMESH_* environment "
        "variables > a TOML file (--config) > defaults; see docs/operating.md. Development mode "
        "(the default outside CI) needs nothing: it generates an identity and starts an "
        "embedded nats-server; production mode (CRANKMESH_ENV=production) requires a key "
        "file, a NATS URL with TLS and/or credentials, and a trust list.",
    )
    from ..config import add_node_arguments

    add_node_arguments(nd)
    nd.set_defaults(fn=_cmd_node)

    sb = sub.add_parser(
        "submit",
        help="submit jobs to a mesh and print the verified results",
        description="Run a job (or --count of them, --concurrency at a time) on the mesh and "
        "print each verified result: output, the executor by name, attempts, price, receipt.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from ._submit_cmds import add_submit_arguments

    add_submit_arguments(sb)
    _add_token_parsers(sub)
    _add_executor_parsers(sub)
    _add_audit_parsers(sub)
    _add_ops_parsers(sub)
    _pipeline_cmds.add_pipeline_parsers(sub)
    return p


def _add_ops_parsers(sub: Any) -> None:
    from . import _ops_cmds as ops

    pe = sub.add_parser(
        "peers",
        help="discover peers by capability, GPU, price and region",
        description="Follow the signed adverts for --listen-s seconds and list matching peers: "
        "closest region first, then most available, then cheapest.",
    )
    ops.add_peers_arguments(pe)
    tp = sub.add_parser("top", help="live view of peers and message rates on the federation")
    ops.add_top_arguments(tp)
    ex = sub.add_parser(
        "explain", help="why a job went to its executor (asks the node that ran it)"
    )
    ops.add_explain_arguments(ex)


def _add_token_parsers(sub: Any) -> None:
    from . import _token_cmds as tok

    t = sub.add_parser(
        "token",
        help="issue, delegate or inspect budget tokens",
        description="Budget capability tokens (RFC 0001 §8.12): signed, delegable with "
        "attenuation (less money, narrower scope, earlier expiry). Token files hold the "
        "whole chain, root first.",
    )
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    i = tsub.add_parser("issue", help="issue a root token from your key")
    i.add_argument("--key", required=True, help="issuer key file")
    i.add_argument("--audience", required=True, help="DID that may spend or delegate it")
    i.add_argument("--scope", required=True, help="capability pattern: python.run, python.*, *")
    i.add_argument("--amount", help="amount in units, e.g. 1.50")
    i.add_argument("--amount-micros", help="amount in integer micro-units")
    i.add_argument("--currency", default="USD")
    i.add_argument("--ttl", default="1h", help="validity, e.g. 90s, 5m, 1h, 2d")
    i.add_argument("--out", required=True, help="token chain file to write")
    i.add_argument("--force", action="store_true", help="overwrite --out")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=tok.cmd_token_issue)
    d = tsub.add_parser("delegate", help="delegate a token you hold, attenuated")
    d.add_argument("--token", required=True, help="the chain you hold")
    d.add_argument("--key", required=True, help="your key (the token's audience)")
    d.add_argument("--audience", required=True, help="DID receiving the delegation")
    d.add_argument("--amount")
    d.add_argument("--amount-micros")
    d.add_argument("--scope")
    d.add_argument("--ttl")
    d.add_argument("--out", required=True)
    d.add_argument("--force", action="store_true")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=tok.cmd_token_delegate)
    n = tsub.add_parser("inspect", help="show a chain link by link and verify it now")
    n.add_argument("--token", required=True)
    n.add_argument("--capability", help="also check the scope covers this capability")
    n.add_argument("--holder", help="also check the leaf audience is this DID")
    n.add_argument("--trust", action="append", help="trusted root issuer DID (repeatable)")
    n.add_argument("--json", action="store_true")
    n.set_defaults(fn=tok.cmd_token_inspect)


def _add_executor_parsers(sub: Any) -> None:
    from . import _executor_cmds as ex

    c = sub.add_parser(
        "capabilities",
        help="what this machine offers, as advertised",
        description="Detect hardware (CPU, memory, GPUs through torch, frameworks, codecs) "
        "and the sandbox isolation level, and print what a node on this machine advertises.",
    )
    c.add_argument("--no-gpu", action="store_true", help="skip GPU detection (no torch import)")
    c.add_argument("--storage-dir", help="directory whose free space is reported")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=ex.cmd_capabilities)
    b = sub.add_parser(
        "bench",
        help="run the self-benchmark and print the profile",
        description="Calibrate every capability this machine offers: p50/p95/p99 latency, "
        "throughput, load sensitivity (concurrency 1, 2, 4), accuracy for ML capabilities, "
        "and unit cost. Latencies are service time, as bids promise it: the job plus the "
        "executor's measured work on each assignment (decode, signature, payload box).",
    )
    b.add_argument("--capabilities", help="comma-separated subset to benchmark")
    b.add_argument("--runs", type=int, default=30)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--concurrency", default="1,2,4", help="load levels, e.g. 1,2,4")
    b.add_argument("--max-concurrency", type=int, default=2)
    b.add_argument("--time-budget", type=float, default=10.0, help="seconds per capability")
    b.add_argument("--price-per-cpu-second", type=int, help="µ-units per CPU-second")
    b.add_argument("--price-per-gpu-second", type=int, help="µ-units per GPU-second")
    b.add_argument("--min-price", type=int, help="minimum µ-units per job")
    b.add_argument("--currency", default="USD")
    b.add_argument("--no-gpu", action="store_true")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=ex.cmd_bench)


def _add_audit_parsers(sub: Any) -> None:
    from . import _audit_cmds as au

    a = sub.add_parser(
        "audit",
        help="verify persisted receipts, chains and cross-references",
        description="Verify every signature, CID and hash-chain link, cross-check job -> bid "
        "-> assignment -> receipt -> settlement, detect equivocation and overspend, and report "
        "SLO compliance per executor. Exit 0: everything verifies; 1: findings; 2: usage.",
    )
    au.add_audit_arguments(a)
    a.set_defaults(fn=au.cmd_audit)
    r = sub.add_parser("receipts", help="receipt records: export for offline audit")
    rsub = r.add_subparsers(dest="receipts_command", required=True, metavar="ACTION")
    e = rsub.add_parser("export", help="export the record stream to a file")
    au.add_receipts_export_arguments(e)
    e.set_defaults(fn=au.cmd_receipts_export)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        backend_options()  # a bad CRANKMESH_EVENT_LOOP is a usage error, not a traceback
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_command(args.fn, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
