"""A tiny HTTP/1.1 endpoint for Prometheus (``/metrics``) and health checks (``/healthz``).

No framework and no new dependency: anyio TCP listeners and a strict, minimal request
parser. Every response closes the connection (``Connection: close``). Methods: ``GET``
and ``HEAD`` (``405`` for others).

- ``/metrics``: the registry in the Prometheus text format (``text/plain; version=0.0.4``).
- ``/healthz``: ``health()`` as JSON; ``200`` when its ``"status"`` is ``"ok"``, else ``503``
  (also ``503`` when ``health()`` raises).
- anything else: ``404``.

Resource handling:
    :func:`serve_http` owns its listening sockets and one task per connection; it runs
    until cancelled, then closes every socket it opened. It reports the bound port through
    ``task_status.started(port)`` (useful with ``port=0``).

Error handling:
    A client is never trusted: a request head larger than 8 KiB gets ``431``, a malformed
    one ``400``, a client that does not send its head within ``read_timeout_s`` (or does
    not read the answer within ``write_timeout_s``) is disconnected, and connections
    beyond ``max_connections`` are closed at once. A failure in one connection (including
    ``health()`` or a collector raising) is logged and answered, never propagated; a
    failing ``accept()`` (e.g. out of file descriptors) is logged and retried. Only a
    failure to bind the listening socket propagates (:class:`OSError`), before
    ``task_status.started`` is called.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
from anyio.abc import SocketListener, SocketStream, TaskGroup, TaskStatus
from prometheus_client import generate_latest
from prometheus_client.registry import Collector

__all__ = ["METRICS_CONTENT_TYPE", "serve_http"]

log = logging.getLogger("crankmesh.http")

METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"
_MAX_HEAD: Final = 8 * 1024
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_ACCEPT_RETRY_S: Final = 0.1


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def serve_http(
    registry: Collector,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    health: Callable[[], Mapping[str, Any]],
    read_timeout_s: float = 5.0,
    write_timeout_s: float = 10.0,
    max_connections: int = 64,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` and ``/healthz`` on ``host:port`` until cancelled.

    ``registry`` is what :func:`prometheus_client.generate_latest` renders (a node's
    ``Metrics().registry``). ``health`` is called on every ``/healthz`` request and must
    return a JSON-serialisable mapping with ``"status": "ok"`` when healthy. The bound
    port is reported with ``task_status.started(port)``; use it as
    ``port = await tg.start(partial(serve_http, registry, host=..., port=0, health=...))``.
    See the module docstring for resource and error handling.
    """
    if read_timeout_s <= 0 or write_timeout_s <= 0:
        raise ValueError("read_timeout_s and write_timeout_s must be positive")
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with multi:
        listeners = [lst for lst in multi.listeners if isinstance(lst, SocketListener)]
        bound = listeners[0].extra(anyio.abc.SocketAttribute.local_port)
        server = _Server(registry, health, read_timeout_s, write_timeout_s, max_connections)
        async with anyio.create_task_group() as tg:
            for listener in listeners:
                tg.start_soon(server.accept_loop, listener, tg)
            log.info("metrics and health endpoint on http://%s:%d/", host, bound)
            task_status.started(bound)


class _Server:
    def __init__(
        self,
        registry: Collector,
        health: Callable[[], Mapping[str, Any]],
        read_timeout_s: float,
        write_timeout_s: float,
        max_connections: int,
    ) -> None:
        self.registry = registry
        self.health = health
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self.max_connections = max_connections
        self.active = 0

    async def accept_loop(self, listener: SocketListener, tg: TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ECONNABORTED, ...: back off, go on
                log.warning("metrics endpoint: accept failed: %s", exc)
                await anyio.sleep(_ACCEPT_RETRY_S)
                continue
            if self.active >= self.max_connections:
                log.debug("metrics endpoint: too many connections; closing one")
                await _close(stream)
                continue
            self.active += 1
            tg.start_soon(self.handle, stream)

    async def handle(self, stream: SocketStream) -> None:
        try:
            response: bytes | None = None
            head: bytes | None = None
            with anyio.move_on_after(self.read_timeout_s):
                try:
                    head = await _read_head(stream)
                except _BadRequest as exc:
                    response = _response(exc.status, _TEXT, f"{exc}\n".encode())
            if response is None:
                if head is None:  # timed out, or the client went away
                    return
                response = self.respond(head)
            with anyio.move_on_after(self.write_timeout_s):
                await stream.send(response)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
            pass
        except OSError as exc:
            log.debug("metrics endpoint: connection error: %s", exc)
        except Exception:
            log.exception("metrics endpoint: unexpected error while serving a request")
        finally:
            self.active -= 1
            await _close(stream)

    def respond(self, head: bytes) -> bytes:
        try:
            method, path = _parse_request_line(head)
        except _BadRequest as exc:
            return _response(exc.status, _TEXT, f"{exc}\n".encode())
        if method not in ("GET", "HEAD"):
            return _response(
                405, _TEXT, b"only GET and HEAD are supported\n", extra=(("Allow", "GET, HEAD"),)
            )
        status, content_type, body = self.route(path)
        return _response(status, content_type, body, head_only=method == "HEAD")

    def route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            try:
                return 200, METRICS_CONTENT_TYPE, generate_latest(self.registry)
            except Exception:
                log.exception("metrics endpoint: a collector failed")
                return 500, _TEXT, b"collecting metrics failed; see the node's log\n"
        if path == "/healthz":
            try:
                doc = dict(self.health())
                body = json.dumps(doc, default=str, sort_keys=True).encode()
            except Exception as exc:
                log.warning("health check failed: %s", exc, exc_info=True)
                doc = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
                body = json.dumps(doc).encode()
            return (200 if doc.get("status") == "ok" else 503), _JSON, body + b"\n"
        return 404, _TEXT, b"not found; try /metrics or /healthz\n"


async def _read_head(stream: SocketStream) -> bytes | None:
    """Bytes up to the end of the request head; None if the client closed first."""
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            end = buf.find(b"\n\n")
        if end >= 0:
            return bytes(buf[:end])
        if len(buf) > _MAX_HEAD:
            raise _BadRequest(431, "request head too large")
        try:
            chunk = await stream.receive(4096)
        except anyio.EndOfStream:
            if buf.strip():
                raise _BadRequest(400, "incomplete request") from None
            return None
        buf += chunk


def _parse_request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest(400, "request line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) != 3 or not all(parts):
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if not version.startswith("HTTP/"):
        raise _BadRequest(400, "malformed request line")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if not method.isalpha() or not method.isupper():
        raise _BadRequest(400, "malformed method")
    if target.startswith(("http://", "https://")):  # absolute form: keep the path
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    if not target.startswith("/"):
        raise _BadRequest(400, "request target must be a path")
    path = target.split("?", 1)[0].split("#", 1)[0]
    if len(path) > 1:
        path = path.rstrip("/")
    return method, path


def _response(
    status: int,
    content_type: str,
    body: bytes,
    *,
    head_only: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{k}: {v}" for k, v in extra),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


async def _close(stream: SocketStream) -> None:
    with anyio.move_on_after(1, shield=True):
        try:
            await stream.aclose()
        except Exception:
            pass
