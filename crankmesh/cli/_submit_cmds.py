"""``crankmesh submit``: run jobs on a mesh and print their verified results.

Every argument is validated before anything connects (a bad value is exit 2 with one
``error:`` line).  ``--key`` (default ``$CRANKMESH_KEY``) is the identity that signs the
announcements, assignments and settlements, so a trust-listed key can submit to a
production mesh; without it a fresh identity is generated.  ``--budget`` pays from a
token chain whose leaf audience is that key.  ``--count N --concurrency C`` runs N jobs, C
at a time, with a progress bar on a terminal and a summary (also after Ctrl-C, then exit
130).  Each job's explanation is saved under ``$CRANKMESH_HOME/explanations`` so that
``crankmesh explain JOB_CID`` answers after this process has exited; ``--explain`` prints
it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import anyio

from .._loop import run as run_loop
from ._connect import (
    add_connection_arguments,
    federation_of,
    nats_options,
    nats_url_of,
    positive_float,
)
from ._errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError

__all__ = ["add_submit_arguments", "cmd_submit"]


def _policy_names() -> list[str]:
    from ..market import POLICIES

    return sorted(POLICIES)


def _accelerators() -> list[str]:
    from ..protocol.messages import Constraints

    ann = Constraints.model_fields["accelerator"].annotation
    return [a for arg in get_args(ann) for a in get_args(arg)]


def _capability(text: str) -> str:
    from ..protocol.messages import CAPABILITY_RE

    if not CAPABILITY_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r:.80} is not a capability name (lower-case dotted tokens, e.g. python.run)"
        )
    return text


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object like '{{\"n\": 3}}', not a {type(value).__name__}"
        )
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _price(text: str) -> int:
    from . import _parse_price

    return _parse_price(text)


def add_submit_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``crankmesh submit`` (sets ``fn=cmd_submit``)."""
    # Without --nats or $CRANKMESH_NATS: a local mesh (an embedded nats-server and one node
    # in this process, stopped at exit), as Client() does.
    add_connection_arguments(p, required=False)
    p.add_argument("--capability", type=_capability, default="python.run")
    p.add_argument("--code", help="Python code for python.run")
    p.add_argument("--file", help="file with Python code for python.run")
    p.add_argument("--args", type=_json_object, help="JSON object passed to the code as `args`")
    p.add_argument("--payload", help="payload (UTF-8 text) for other capabilities")
    p.add_argument("--env-profile", default="python-core")
    p.add_argument("--accelerator", choices=_accelerators(), default="cpu")
    p.add_argument("--timeout", type=positive_float, default=10.0, help="job timeout (s)")
    p.add_argument(
        "--max-price", type=_price, help="integer micro-units (1500) or decimal units (0.0015)"
    )
    p.add_argument(
        "--policy",
        choices=_policy_names(),
        help="selection policy (default: cost; slo when --slo-p95-ms is given)",
    )
    p.add_argument(
        "--slo-p95-ms",
        type=positive_float,
        help="required p95 latency (ms): bids promising (or observed) worse are filtered "
        "out; implies --policy slo",
    )
    p.add_argument(
        "--budget", metavar="TOKENFILE", help="pay from this budget token chain (needs --key)"
    )
    p.add_argument(
        "--key",
        help="originator key file that signs the jobs (default: $CRANKMESH_KEY, else a "
        "fresh identity); a trust-listed key is needed on a production mesh",
    )
    p.add_argument(
        "--explain", action="store_true", help="print why each job's executor was chosen"
    )
    p.add_argument("--count", type=_positive_int, default=1, help="run the job N times")
    p.add_argument(
        "--concurrency", type=_positive_int, default=1, help="jobs in flight at once (default 1)"
    )
    p.add_argument(
        "--wait-peers",
        type=float,
        default=3.0,
        help="seconds to wait for a peer offering the capability",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per job (then a summary)")
    p.set_defaults(fn=cmd_submit)


# ----------------------------------------------------------------------------- validation


def _code_of(args: argparse.Namespace) -> str:
    if args.code is not None and args.file:
        raise UsageError("give --code or --file, not both")
    if args.file:
        path = Path(args.file)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --file {path}: {exc.strerror}") from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"--file {path} is not UTF-8 text") from None
    if args.code is None:
        raise UsageError("python.run needs --code or --file")
    code = str(args.code)
    try:
        code.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 arrive as surrogate escapes
        raise UsageError("--code is not UTF-8 text") from None
    return code


def _identity(args: argparse.Namespace) -> Any:
    import os

    from ..keystore import load_identity
    from ..protocol.identity import Identity

    key = args.key or os.environ.get("CRANKMESH_KEY") or None
    if key is None:
        if args.budget:
            raise UsageError("--budget needs --key (the key the token was issued or delegated to)")
        return Identity.generate()
    return load_identity(key)  # KeystoreError: exit 2, with the path and what to do


def _budget(args: argparse.Namespace, job: Any, identity: Any) -> Any:
    if not args.budget:
        return job
    import time

    from ..protocol.errors import ProtocolError
    from ..protocol.tokens import verify_chain
    from ._token_cmds import read_chain_file

    try:
        chain = read_chain_file(args.budget)
    except (ValueError, ProtocolError) as exc:
        raise UsageError(str(exc)) from None
    try:
        verify_chain(
            [e.raw for e in chain],
            now_ms=time.time_ns() // 1_000_000,
            capability=job.capability,
            holder=identity.did,
        )
    except ProtocolError as exc:
        raise UsageError(f"--budget {args.budget}: {exc}") from None
    except Exception as exc:  # TokenInvalid / BudgetError: the token does not fit
        raise UsageError(f"--budget {args.budget}: {exc}") from None
    return job.with_budget(chain)


def _policy(args: argparse.Namespace) -> str:
    if args.slo_p95_ms is not None:
        if args.policy not in (None, "slo"):
            raise UsageError(
                f"--slo-p95-ms filters bids under --policy slo, not --policy {args.policy}"
            )
        return "slo"
    return str(args.policy or "cost")


def _job(args: argparse.Namespace) -> Any:
    from ..originator import Job

    args.policy = _policy(args)

    if args.capability == "python.run":
        return Job.python(
            _code_of(args),
            args.args,
            env_profile=args.env_profile,
            accelerator=args.accelerator,
            timeout_sec=args.timeout,
            max_price=args.max_price,
            slo_p95_ms=args.slo_p95_ms,
            policy=args.policy,
        )
    for flag in ("code", "file", "args"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag} is for python.run; use --payload for {args.capability}")
    payload = args.payload or ""
    try:
        data = payload.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("--payload is not UTF-8 text") from None
    return Job.call(
        args.capability,
        data,
        timeout_sec=args.timeout,
        max_price=args.max_price,
        slo_p95_ms=args.slo_p95_ms,
        policy=args.policy,
    )


# ----------------------------------------------------------------------------- output


@dataclass
class _Tally:
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def summary(self, total: int, interrupted: bool) -> dict[str, Any]:
        done = self.ok + self.failed
        return {
            "summary": True,
            "total": total,
            "ok": self.ok,
            "failed": self.failed,
            "not_run": total - done,
            "interrupted": interrupted,
            "errors": self.errors,
        }

    def text(self, total: int, interrupted: bool) -> str:
        line = f"{self.ok} ok, {self.failed} failed"
        if total - self.ok - self.failed:
            line += f", {total - self.ok - self.failed} not run"
        if interrupted:
            line += " (interrupted)"
        if self.errors:
            line += " — " + ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items()))
        return line


def _executor_label(client: Any, did: str) -> str:
    peer = client.directory.get(did)
    name = getattr(getattr(peer, "advert", None), "name", None)
    return f"{name} ({did})" if name else did


def _result_obj(client: Any, job: Any, r: Any) -> dict[str, Any]:
    peer = client.directory.get(r.executor)
    obj: dict[str, Any] = {
        "job_cid": r.job_cid,
        "status": r.status,
        "executor": r.executor,
        "executor_name": getattr(getattr(peer, "advert", None), "name", None),
        "attempts": len(r.attempts) + 1,
        "failed_attempts": [str(a) for a in r.attempts],
        "price": r.price,
        "currency": r.currency,
        "latency_ms": round(r.latency_ms, 3),
        "receipt_cid": r.receipt_cid,
        "verified": r.verified,
    }
    if job.capability == "python.run":
        try:
            value = r.return_value
        except Exception:
            value = None
        obj.update(stdout=r.stdout, stderr=r.stderr, exit_code=r.exit_code, result=value)
        if r.status != "ok":
            obj["detail"] = r.receipt.detail
    else:
        obj["output"] = (r.output or b"").decode("utf-8", "replace")
    return obj


def _result_text(client: Any, job: Any, r: Any, obj: dict[str, Any]) -> str:
    parts: list[str] = []
    if job.capability == "python.run":
        if r.stdout:
            parts.append(r.stdout.rstrip("\n"))
        if obj.get("result") is not None:
            parts.append(f"result: {json.dumps(obj['result'], default=repr)}")
        if r.status != "ok":
            if r.stderr:
                parts.append(r.stderr.rstrip("\n"))
            if r.receipt.detail:
                parts.append(f"detail: {r.receipt.detail}")
    else:
        parts.append(str(obj["output"]))
    attempts = len(r.attempts) + 1
    for a in r.attempts:
        parts.append(f"  {a}")
    parts.append(
        f"[{r.status}] job {r.job_cid} on {_executor_label(client, r.executor)} "
        f"(attempt {attempts}) for {r.price} µ{r.currency} in {r.latency_ms:.1f} ms, "
        f"receipt {r.receipt_cid} {'verified' if r.verified else 'NOT verified'}"
    )
    return "\n".join(parts)


def _explanation_of(client: Any, job_cid: str) -> Any:
    return client.explain(job_cid)


# ----------------------------------------------------------------------------- run


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate everything, then run ``--count`` jobs; see the module docstring."""
    federation = federation_of(args)
    # no URL and no $CRANKMESH_NATS: None, and the Client starts a local mesh itself
    options = nats_options(args, "crankmesh-submit") if nats_url_of(args) is not None else None
    job = _job(args)
    identity = _identity(args)
    job = _budget(args, job, identity)
    return run_loop(_run, args, job, identity, federation, options)


async def _run(
    args: argparse.Namespace, job: Any, identity: Any, federation: str, options: Any
) -> int:
    from ..originator import Client
    from ..originator.explain_service import save_explanation
    from ..protocol.errors import CrankmeshError, TransportError

    tally = _Tally()
    total = int(args.count)
    interrupted = False
    as_json = bool(args.json)
    single = total == 1
    last_error: BaseException | None = None

    def emit(obj: dict[str, Any], text: str, *, err: bool = False) -> None:
        if as_json:
            print(json.dumps(obj, default=str), flush=True)
        else:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)

    async with Client(
        nats=options, federation=federation, identity=identity, policy=args.policy
    ) as client:
        # The nodes answer the client's advert sync together: settle briefly so the first
        # job can go to the best of them, not the first to answer.
        await client.wait_for_peers(job.capability, 1, wait_s=args.wait_peers, settle_s=0.05)
        progress = _progress(total, as_json)
        task = progress.add_task("jobs", total=total) if progress is not None else None
        limiter = anyio.Semaphore(int(args.concurrency))

        async def one() -> None:
            nonlocal last_error
            async with limiter:
                started_ms = time.time_ns() // 1_000_000
                try:
                    r = await client.run(job)
                except TransportError:
                    raise
                except CrankmeshError as exc:
                    tally.failed += 1
                    name = type(exc).__name__
                    tally.errors[name] = tally.errors.get(name, 0) + 1
                    last_error = exc
                    if not single:
                        emit({"error": name, "message": str(exc)}, f"error: {exc}", err=True)
                    return
                finally:
                    if progress is not None and task is not None:
                        progress.advance(task)
                if r.ok:
                    tally.ok += 1
                else:
                    tally.failed += 1
                    tally.errors[r.status] = tally.errors.get(r.status, 0) + 1
                try:
                    save_explanation(client, r.job_cid)
                except OSError:
                    pass  # `crankmesh explain` then asks the federation
                obj = _result_obj(client, job, r)
                obj["started_ms"], obj["ended_ms"] = started_ms, time.time_ns() // 1_000_000
                text = _result_text(client, job, r, obj)
                if args.explain:
                    expl = _explanation_of(client, r.job_cid)
                    if expl is not None:
                        obj["explanation"] = expl.to_dict()
                        text += "\n" + expl.render()
                emit(obj, text)

        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:

                async def stop_on_signal() -> None:
                    nonlocal interrupted
                    async for _sig in signals:
                        interrupted = True
                        tg.cancel_scope.cancel()
                        return

                tg.start_soon(stop_on_signal)
                try:
                    async with anyio.create_task_group() as jobs:
                        for _ in range(total):
                            jobs.start_soon(one)  # each waits for one of --concurrency slots
                finally:
                    if progress is not None:
                        progress.stop()
                tg.cancel_scope.cancel()
    if single and last_error is not None and not interrupted:
        raise last_error  # one line with its exit code, from the one handler
    if not single or interrupted:
        emit(tally.summary(total, interrupted), tally.text(total, interrupted), err=not as_json)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if tally.failed else EXIT_OK


def _progress(total: int, as_json: bool) -> Any:
    """A rich progress bar on stderr for a batch on a terminal; None otherwise."""
    if total < 2 or as_json or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    progress.start()
    return progress
