"""``crankmesh pipeline plan|run FILE``: pipelines from a YAML file (docs/pipelines.md).

Exit status: 0 the plan matches every step / the run verified every step; 1 a step has
no compatible executor (plan), a step failed or the budget ran out (run); 2 usage
errors (an unreadable or invalid file, an unknown run to resume, a bad token file).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._loop import run as run_loop

__all__ = ["add_pipeline_parsers", "load_run_logs"]


def load_run_logs(state_dir: str, only: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every run log under ``state_dir`` (or only the runs ``only``), by run id;
    :class:`ValueError` when a named run has no log or the directory has none."""
    from pathlib import Path

    from ..originator._pipeline_log import RunLog

    runs_dir = Path(state_dir) / "runs"
    ids = list(only) if only else sorted(p.stem for p in runs_dir.glob("*.jsonl"))
    if not ids:
        raise ValueError(f"no pipeline run logs in {runs_dir}")
    out: dict[str, list[dict[str, Any]]] = {}
    for run_id in ids:
        runlog = RunLog(state_dir, run_id)
        if not runlog.exists():
            raise ValueError(f"no pipeline run {run_id!r} in {runs_dir}")
        out[run_id] = runlog.entries()
    return out


def _client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"federation": args.federation}
    if args.nats:
        kw["nats"] = args.nats
    return kw


def _load(args: argparse.Namespace, budget: Any = None) -> Any:
    from ..originator._pipeline_file import load_pipeline

    return load_pipeline(args.file, budget=budget)


def cmd_pipeline_plan(args: argparse.Namespace) -> int:
    from ..originator import Client
    from ..originator._pipeline_file import PipelineFileError
    from ..protocol.errors import CrankmeshError

    try:
        pipeline = _load(args)
    except PipelineFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        async with Client(**_client_kwargs(args)) as client:
            plan = await pipeline.plan(client, wait_s=args.wait_peers)
        print(plan.render(args.format))
        return 0 if plan.ok else 1

    try:
        return int(run_loop(run))
    except CrankmeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    from ..originator import Client
    from ..originator._pipeline_file import PipelineFileError
    from ..originator._pipeline_log import UnknownRun, new_run_id
    from ..protocol.errors import BudgetExceeded, CrankmeshError

    kwargs = _client_kwargs(args)
    budget = None
    if args.budget:
        from ..keystore import load_identity
        from ._token_cmds import read_chain_file

        if not args.key:
            print("error: --budget needs --key (the token's audience key)", file=sys.stderr)
            return 2
        try:
            budget = read_chain_file(args.budget)
            kwargs["identity"] = load_identity(args.key)
        except (CrankmeshError, OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        pipeline = _load(args, budget)
    except PipelineFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.resume and args.run_id and args.resume != args.run_id:
        print("error: give --run-id or --resume, not both", file=sys.stderr)
        return 2
    run_id = args.resume or args.run_id or new_run_id()

    async def run() -> int:
        async with Client(**kwargs) as client:
            if args.wait_peers > 0:
                for cap in dict.fromkeys(s.job.capability for s in pipeline.steps):
                    await client.wait_for_peers(cap, 1, wait_s=args.wait_peers, settle_s=0.05)
            print(
                json.dumps({"event": "run", "run_id": run_id, "pipeline": pipeline.name}),
                file=sys.stderr,
                flush=True,
            )
            result = await pipeline.run(
                client,
                run_id=None if args.resume else run_id,
                resume=args.resume,
                reuse=args.reuse,
                state_dir=args.state_dir,
            )
        if args.json:
            print(json.dumps({"run": result.to_dict(), "costs": result.costs().to_dict()}))
        else:
            print(result.render(args.format))
        return 0

    try:
        return int(run_loop(run))
    except UnknownRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BudgetExceeded as exc:
        _report_failure(args, exc, run_id)
        return 1
    except CrankmeshError as exc:
        _report_failure(args, exc, run_id)
        return 1


def _report_failure(args: argparse.Namespace, exc: Exception, run_id: str) -> None:
    if args.json:
        doc: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc), "run_id": run_id}
        spent = getattr(exc, "spent_by_step", None)
        if spent is not None:
            doc["spent_by_step"] = spent
        print(json.dumps(doc))
    print(f"error: {exc} (resume with --resume {run_id})", file=sys.stderr)


def add_pipeline_parsers(sub: Any) -> None:
    from ..originator._pipeline_render import FORMATS

    p = sub.add_parser(
        "pipeline",
        help="plan or run a pipeline file (a DAG of steps; docs/pipelines.md)",
        description="Plan or run a YAML pipeline file. Without --nats (and without "
        "CRANKMESH_NATS) a local mesh is started for the command.",
    )
    psub = p.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    for name, fn, helptext in (
        ("plan", cmd_pipeline_plan, "match every step against the directory (nothing runs)"),
        ("run", cmd_pipeline_run, "run the pipeline, print the verified mapping"),
    ):
        a = psub.add_parser(name, help=helptext, description=helptext)
        a.add_argument("file", help="pipeline file (YAML)")
        a.add_argument("--nats", help="NATS URL(s) (default: $CRANKMESH_NATS, else a local mesh)")
        a.add_argument("--federation", default="default")
        a.add_argument("--format", choices=FORMATS, default="tree", help="output format")
        a.add_argument(
            "--wait-peers",
            type=float,
            default=3.0,
            help="seconds to wait for a peer offering each step's capability",
        )
        a.set_defaults(fn=fn)
        if name == "run":
            a.add_argument("--run-id", help="id of this run (default: a new one, printed)")
            a.add_argument("--resume", metavar="RUN_ID", help="skip the verified steps of RUN_ID")
            a.add_argument(
                "--reuse",
                action="store_true",
                help="take verified results of identical steps from earlier runs",
            )
            a.add_argument(
                "--state-dir",
                help="run log directory (default: $CRANKMESH_HOME/pipelines)",
            )
            a.add_argument("--budget", metavar="TOKENFILE", help="pay every step from this chain")
            a.add_argument("--key", help="originator key file (the --budget token's audience)")
            a.add_argument(
                "--json",
                action="store_true",
                help="print the run and its costs (per step, total, budget left) as JSON",
            )
