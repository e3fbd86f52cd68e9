"""Explanations on request: "why did job X go to executor Y?" asked over NATS.

Only the originator that ran a job knows how it chose (it ranked the bids); nothing about
a selection is published.  Every node therefore answers requests on
``crank.<fed>.explain.<job_cid>`` for the jobs *its* client ran and stays silent about the
rest, so a request reaches whichever node ran the job and the first reply wins.  The
``crankmesh explain`` command is the asking side (:func:`request_explanation`).

The reply is a JSON object (explanations are plain, unsigned data)::

    {"job_cid": "bafy…", "node": "did:key:z6Mk…",
     "explanation": {…Explanation.to_dict()…}, "render": "…Explanation.render()…"}
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ..protocol import subjects
from ..protocol.errors import TransportError
from ..transport import unsubscribe_quietly
from .client import Client

__all__ = [
    "ExplanationReply",
    "explain_subject",
    "explain_subject_all",
    "explanations_dir",
    "load_explanation",
    "request_explanation",
    "save_explanation",
    "serve_explanations",
]

log = logging.getLogger("crankmesh.originator.explain")

#: Replies larger than this are not sent (NATS' default max_payload is 1 MiB).
MAX_REPLY_BYTES = 900 * 1024
#: A JSON reply larger than this is not parsed by the asking side.
MAX_ACCEPTED_REPLY_BYTES = 4 * 1024 * 1024


def explain_subject(federation: str, job_cid: str) -> str:
    """``crank.<fed>.explain.<job_cid>``: where the explanation of a job is requested."""
    return f"{subjects.ROOT}.{federation}.explain.{job_cid}"


def explain_subject_all(federation: str) -> str:
    """``crank.<fed>.explain.*``: what an explaining node subscribes to."""
    return f"{subjects.ROOT}.{federation}.explain.*"


def _reply_for(client: Client, job_cid: str) -> bytes | None:
    """The JSON reply for ``job_cid``, or None when this client did not run it."""
    explanation = client.explain(job_cid)
    if explanation is None:
        return None
    body = {
        "job_cid": job_cid,
        "node": client.identity.did,
        "explanation": explanation.to_dict(),
        "render": explanation.render(),
    }
    data = json.dumps(body, default=str).encode()
    if len(data) > MAX_REPLY_BYTES:
        log.warning(
            "explanation of job %s not sent: %d bytes is more than %d",
            job_cid,
            len(data),
            MAX_REPLY_BYTES,
        )
        return None
    return data


async def serve_explanations(
    nc: Any,
    *,
    federation: str,
    client: Client,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer explanation requests for the jobs ``client`` ran, until cancelled.

    Signals readiness (``await tg.start(...)``) once the subscription is flushed to the
    server.  A request for a job this client does not know (never ran, or forgotten: the
    client keeps the last 1024 rankings) gets no reply, so another node may answer it.

    Resource handling:
        Subscribes on ``nc`` (which the caller owns and keeps open) and unsubscribes on
        exit, shielded from cancellation.

    Error handling:
        Requests without a reply subject, with any payload, or naming no job this client
        knows are ignored.  A failure building or sending one reply is logged on
        ``crankmesh.originator.explain`` and the service carries on.  Cancellation
        propagates.
    """
    subjects.check_federation(federation)
    prefix = explain_subject(federation, "")

    async def on_request(msg: Any) -> None:
        try:
            reply_to = msg.reply
            subject = msg.subject
            if not reply_to or not isinstance(subject, str) or not subject.startswith(prefix):
                return
            job_cid = subject[len(prefix) :]
            data = _reply_for(client, job_cid)
            if data is None:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("explanation of job %.80s requested: not ours", job_cid)
                return
            await nc.publish(reply_to, data)
            log.info("explained job %s to %.80s", job_cid, reply_to)
        except Exception:
            log.exception("answering an explanation request on %.120r failed", msg.subject)

    sub = await nc.subscribe(explain_subject_all(federation), cb=on_request)
    try:
        await nc.flush()
        task_status.started()
        await anyio.sleep_forever()
    finally:
        await unsubscribe_quietly(sub)


@dataclass(frozen=True, slots=True)
class ExplanationReply:
    """A node's answer: who ran the job, the explanation as a dict, and its rendering."""

    job_cid: str
    node: str
    explanation: dict[str, Any]
    render: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"job_cid": self.job_cid, "node": self.node, "explanation": self.explanation}


def parse_reply(data: bytes, job_cid: str) -> ExplanationReply | None:
    """Validate a reply; None when it is not a well-formed answer about ``job_cid``."""
    if len(data) > MAX_ACCEPTED_REPLY_BYTES:
        return None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("job_cid") != job_cid:
        return None
    node, explanation, render = obj.get("node"), obj.get("explanation"), obj.get("render")
    if not isinstance(node, str) or not isinstance(explanation, dict):
        return None
    return ExplanationReply(
        job_cid=job_cid,
        node=node,
        explanation=explanation,
        render=render if isinstance(render, str) else None,
    )


def _is_no_responders(msg: Any) -> bool:
    headers = getattr(msg, "headers", None)
    return isinstance(headers, dict) and headers.get("Status") == "503" and not msg.data


async def request_explanation(
    nc: Any, *, federation: str, job_cid: str, timeout_s: float
) -> ExplanationReply | None:
    """Ask the federation for the explanation of ``job_cid``; the first valid reply wins.

    Returns None when no node answers within ``timeout_s`` (or at once, when nobody
    serves explanations at all).  Malformed replies are skipped, so one broken node
    cannot hide the answer of the node that ran the job.

    Resource handling:
        Uses a private inbox subscription on ``nc`` and removes it before returning.

    Error handling:
        A failed publish raises :class:`~crankmesh.protocol.errors.TransportError`.
    """
    subjects.check_federation(federation)
    send, receive = anyio.create_memory_object_stream[Any](16)

    async def on_reply(msg: Any) -> None:
        try:
            send.send_nowait(msg)
        except anyio.WouldBlock:  # a flood of replies: the first ones suffice
            pass

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        try:
            await nc.publish(explain_subject(federation, job_cid), b"", reply=inbox)
            await nc.flush()
        except Exception as exc:
            raise TransportError(f"could not send the explanation request: {exc!r}") from exc
        with anyio.move_on_after(timeout_s):
            async for msg in receive:
                if _is_no_responders(msg):
                    return None
                reply = parse_reply(msg.data, job_cid)
                if reply is not None:
                    return reply
                log.warning("ignored a malformed explanation reply (%d bytes)", len(msg.data))
        return None
    finally:
        send.close()
        receive.close()
        await unsubscribe_quietly(sub)


# --------------------------------------------------------------------------- persisted


def explanations_dir() -> Path:
    """``$CRANKMESH_HOME/explanations`` (default ``~/.crankmesh/explanations``): where the
    ``crankmesh submit`` command keeps the explanations of the jobs it ran, so that
    ``crankmesh explain JOB_CID`` can answer after the submitting process has exited."""
    base = os.environ.get("CRANKMESH_HOME") or os.path.join(Path.home(), ".crankmesh")
    return Path(base) / "explanations"


def _explanation_path(directory: Path, job_cid: str) -> Path | None:
    # A CID is base32 lower-case: refuse anything that could leave the directory.
    if not job_cid or not job_cid.isalnum() or len(job_cid) > 200:
        return None
    return directory / f"{job_cid}.json"


def save_explanation(client: Client, job_cid: str, directory: Path | None = None) -> Path | None:
    """Write the explanation of ``job_cid`` (a job ``client`` ran) as the JSON reply
    :func:`serve_explanations` would send; returns the file, or None when ``client`` has
    no explanation for it.

    Error handling: an OSError writing the file propagates (the caller decides whether a
    missing explanation is worth failing for); the write is atomic (temp file + rename).
    """
    data = _reply_for(client, job_cid)
    path = _explanation_path(directory or explanations_dir(), job_cid)
    if data is None or path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def load_explanation(job_cid: str, directory: Path | None = None) -> ExplanationReply | None:
    """The explanation :func:`save_explanation` wrote for ``job_cid``, or None when there is
    none (or the file is not a valid reply about that job)."""
    path = _explanation_path(directory or explanations_dir(), job_cid)
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return parse_reply(data, job_cid)
