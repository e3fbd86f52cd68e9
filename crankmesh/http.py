"""The node's HTTP endpoint: Prometheus ``/metrics`` and ``/healthz``.

Served by ``prometheus_client``'s own exposition (``make_wsgi_app``: the text format,
OpenMetrics on request, gzip, ``name[]`` filtering) on its threaded ``wsgiref`` server
(``ThreadingWSGIServer``, the one ``prometheus_client.start_http_server`` uses), run in a
thread beside the node's event loop.  No HTTP parsing of our own: requests are parsed by the
standard library's ``http.server``.

- ``/metrics``: the registry (``text/plain; version=0.0.4``; ``application/openmetrics-text``
  when the scraper asks for it).
- ``/healthz``: ``health()`` as JSON; ``200`` when its ``"status"`` is ``"ok"``, else ``503``
  (also ``503`` when ``health()`` raises, or when the event loop does not answer in time).
  ``health()`` is called on the node's event loop, not in the server's thread, so it reads
  the node's state where that state is written.
- anything else: ``404``; methods other than ``GET`` and ``HEAD``: ``405``.
Answers are HTTP/1.0 with ``Cache-Control: no-store``: one request per connection, which the
server closes after answering.

Resource handling:
    :func:`serve_http` owns the listening socket, the server thread and one thread per
    connection; it runs until cancelled, then stops the server thread and closes the
    socket.  It reports the bound port through ``task_status.started(port)`` (useful with
    ``port=0``).

Error handling:
    A client is never trusted: ``http.server`` answers a malformed request line ``400``, an
    unsupported HTTP version ``505``, a request line over 64 KiB ``414`` and oversized or too
    many header lines ``431``; a connection that sends or reads nothing for ``timeout_s`` is
    closed, and connections beyond ``max_connections`` are closed at once.  A failure in one
    connection (including ``health()`` or a collector raising) is logged and answered
    (``500``/``503``), never propagated.  Only a failure to bind the listening socket
    propagates (:class:`OSError`), before ``task_status.started`` is called.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

__all__ = ["METRICS_CONTENT_TYPE", "serve_http"]

log = logging.getLogger("crankmesh.http")

METRICS_CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"
_COMMON: Final = [("Cache-Control", "no-store")]
_POLL_S: Final = 0.05


async def serve_http(
    registry: Collector,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    health: Callable[[], Mapping[str, Any]],
    timeout_s: float = 5.0,
    max_connections: int = 64,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` and ``/healthz`` on ``host:port`` until cancelled.

    ``registry`` is what ``prometheus_client`` exposes (a node's ``Metrics().registry``).
    ``health`` is called (on this event loop) for every ``/healthz`` request and must return
    a JSON-serialisable mapping with ``"status": "ok"`` when healthy. ``timeout_s`` bounds
    every read and write of a connection;
    ``max_connections`` bounds the connections served at once. The bound port is reported
    with ``task_status.started(port)``; use it as
    ``port = await tg.start(partial(serve_http, registry, host=..., port=0, health=...))``.
    See the module docstring for resource and error handling.
    """
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    token = anyio.lowlevel.current_token()

    def healthz() -> Mapping[str, Any]:
        # On the event loop: the node's state is only ever touched from there.
        return anyio.from_thread.run_sync(health, token=token)

    # Like http.server's own choice: the family of the first address ``host`` resolves to.
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(_Server):
        address_family = family
        limit = threading.BoundedSemaphore(max_connections)

    class Handler(_Handler):
        timeout = timeout_s

    server = make_server(str(sockaddr[0]), port, _App(registry, healthz), Server, Handler)
    bound = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _POLL_S},
        name=f"crankmesh-http-{bound}",
        daemon=True,
    )
    thread.start()
    log.info("metrics and health endpoint on http://%s:%d/", host, bound)
    try:
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.shutdown)
            server.server_close()


class _Server(ThreadingWSGIServer):
    """``prometheus_client``'s thread-per-connection server, with a connection limit."""

    limit: threading.BoundedSemaphore
    allow_reuse_address = True

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.limit.acquire(blocking=False):
            log.debug("metrics endpoint: too many connections; closing one")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.limit.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.limit.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that times out or goes away mid-request: not the server's problem.
        log.debug("metrics endpoint: connection from %s failed", client_address, exc_info=True)


class _Handler(WSGIRequestHandler):
    # Error answers to request lines too broken to carry a version get a status line
    # (http.server's default, HTTP/0.9, answers them with a bare HTML body).
    default_request_version = "HTTP/1.0"
    server_version = "crankmesh"  # the Server header: no interpreter version for scanners
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("metrics endpoint: %s %s", self.address_string(), format % args)


class _App:
    """The WSGI application: routes to ``prometheus_client``'s exposition or the health check."""

    def __init__(self, registry: Collector, health: Callable[[], Mapping[str, Any]]) -> None:
        self.metrics = make_wsgi_app(registry)
        self.health = health

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        if len(path) > 1:
            path = path.rstrip("/")
        if path not in ("/metrics", "/healthz"):
            status, ctype, body = "404 Not Found", _TEXT, b"not found; try /metrics or /healthz\n"
        elif method not in ("GET", "HEAD"):
            start_response(
                "405 Method Not Allowed",
                [("Content-Type", _TEXT), ("Allow", "GET, HEAD"), *_COMMON],
            )
            return [b"only GET and HEAD are supported\n"]
        elif path == "/metrics":
            return self._metrics(environ, start_response, head=method == "HEAD")
        else:
            status, ctype, body = self._healthz()
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), *_COMMON]
        start_response(status, headers)
        return [] if method == "HEAD" else [body]

    def _metrics(
        self, environ: WSGIEnvironment, start_response: StartResponse, *, head: bool
    ) -> Iterable[bytes]:
        reply: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            reply["status"], reply["headers"] = status, headers
            return lambda _data: None

        try:  # prometheus_client answers GET only: a HEAD is a GET without the body
            body = b"".join(self.metrics({**environ, "REQUEST_METHOD": "GET"}, capture))
        except Exception:
            log.exception("metrics endpoint: a collector failed")
            text = b"collecting metrics failed; see the node's log\n"
            start_response(
                "500 Internal Server Error",
                [("Content-Type", _TEXT), ("Content-Length", str(len(text))), *_COMMON],
            )
            return [text]
        headers = [(k, v) for k, v in reply["headers"] if k.lower() != "content-length"]
        start_response(reply["status"], [*headers, ("Content-Length", str(len(body))), *_COMMON])
        return [] if head else [body]

    def _healthz(self) -> tuple[str, str, bytes]:
        try:
            doc = dict(self.health())
            body = json.dumps(doc, default=str, sort_keys=True).encode()
        except Exception as exc:
            log.warning("health check failed: %s", exc, exc_info=True)
            doc = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            body = json.dumps(doc).encode()
        ok = doc.get("status") == "ok"
        return ("200 OK" if ok else "503 Service Unavailable"), _JSON, body + b"\n"
