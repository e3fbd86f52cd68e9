"""Real nats-server processes for tests: one server, a routed cluster, and pytest fixtures.

Every :class:`NatsServer` is its own ``nats-server`` OS process on a port the server picks
itself, with its own temporary config and JetStream store, so tests can run in parallel and
never depend on a broker somebody left running. Readiness is read from the server's log.

In a project's ``conftest.py``::

    from crankmesh.testing import nats_cluster, nats_server  # noqa: F401

then a test takes ``nats_server`` (one server with JetStream) or ``nats_cluster`` (three
routed servers with clustered JetStream) as an argument and connects to ``.url``.

Neither class is thread-safe: drive one from one thread (or one task) at a time.
"""

from __future__ import annotations

import abc
import collections
import enum
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.to_thread

from crankmesh.protocol.errors import ClientStateError, ServerError
from crankmesh.transport import NatsOptions, find_nats_server_binary

__all__ = ["NatsCluster", "NatsServer", "closed_nats_server", "member_options"]

_LOG_LINES_KEPT = 5000
_TAIL_LINES = 30
_READY = "Server is ready"
_ADDRESS_IN_USE = "address already in use"
_CLIENT_PREFIX = "Listening for client connections on "
_MONITOR_PREFIX = "Starting http monitor on "
_ROUTE_PREFIX = "Listening for route connections on "
# Monitoring requests must never go through an http_proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    DOWN = "down"  # killed, or stopped for a restart; ports and store are kept
    CLOSED = "closed"


class _LogBook:
    """The lines a server wrote, across restarts; bounded, shared with the pump thread."""

    def __init__(self) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=_LOG_LINES_KEPT)
        self._lock = threading.Lock()

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self._lines)

    def tail(self, n: int = _TAIL_LINES) -> list[str]:
        with self._lock:
            return list(self._lines)[-n:]


def _port_of(line: str, prefix: str) -> int | None:
    at = line.find(prefix)
    if at < 0:
        return None
    address = line[at + len(prefix) :].strip()
    try:
        return int(address.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def _reap(popen: subprocess.Popen[str]) -> None:
    """Last-resort cleanup (garbage collection or interpreter exit): never leave a server."""
    if popen.poll() is None:
        popen.kill()
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class _Process:
    """One nats-server OS process and the daemon thread that drains its output.

    The thread reads stdout+stderr line by line so the pipe never fills, records the
    lines in the log book, and picks the listening ports and readiness out of them.
    """

    def __init__(self, argv: Sequence[str], logs: _LogBook, *, expect_routes: bool) -> None:
        self._logs = logs
        self._expect_routes = expect_routes
        self._cond = threading.Condition()
        self.ready = False
        self.exited = False
        self.client_port: int | None = None
        self.monitor_port: int | None = None
        self.route_port: int | None = None
        self.popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            # Its own process group: a terminal's Ctrl-C (SIGINT to the foreground group)
            # reaches the node, which drains and then stops this server, not both at once.
            process_group=0,
        )
        self._finalizer = weakref.finalize(self, _reap, self.popen)
        self._thread = threading.Thread(
            target=self._pump, name=f"nats-server-{self.popen.pid}-log", daemon=True
        )
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self) -> None:
        stream = self.popen.stdout
        assert stream is not None
        try:
            for raw in stream:
                line = raw.rstrip("\r\n")
                self._logs.append(line)
                self._parse(line)
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        finally:
            stream.close()
            with self._cond:
                self.exited = True
                self._cond.notify_all()

    def _parse(self, line: str) -> None:
        if (port := _port_of(line, _CLIENT_PREFIX)) is not None:
            self.client_port = port
        elif (port := _port_of(line, _MONITOR_PREFIX)) is not None:
            self.monitor_port = port
        elif (port := _port_of(line, _ROUTE_PREFIX)) is not None:
            self.route_port = port
            with self._cond:
                self._cond.notify_all()
        elif _READY in line:
            with self._cond:
                self.ready = True
                self._cond.notify_all()

    def _is_up(self) -> bool:
        return self.ready and (not self._expect_routes or self.route_port is not None)

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the server logged readiness (and its route port); False if it died."""
        with self._cond:
            self._cond.wait_for(lambda: self.exited or self._is_up(), timeout_s)
            return self._is_up() and not self.exited

    def terminate(self, timeout_s: float) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._join()

    def kill(self) -> None:
        """SIGKILL at once."""
        if self.popen.poll() is None:
            self.popen.kill()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired as exc:
                raise ServerError(
                    f"nats-server (pid {self.pid}) did not die within 5 s of SIGKILL"
                ) from exc
        self._join()

    def _join(self) -> None:
        self._thread.join(timeout=5)
        self._finalizer.detach()


def _quote(value: str) -> str:
    """A nats-server config string literal (the config syntax accepts JSON escapes)."""
    return json.dumps(value)


class _Lifecycle(abc.ABC):
    """Sync and async context-manager plumbing shared by :class:`NatsServer` and
    :class:`NatsCluster`: subclasses provide blocking ``start()``/``stop()`` and
    ``astart()``."""

    @abc.abstractmethod
    def start(self) -> Self: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    async def astart(self) -> Self: ...

    async def aclose(self) -> None:
        """:meth:`stop` in a worker thread, shielded from cancellation; idempotent."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class NatsServer(_Lifecycle):
    """One ``nats-server`` subprocess with its own temporary config and JetStream store.

    By default the server listens on ``127.0.0.1`` on a client port it picks itself
    (``port: -1``; the real port is read from its log), with JetStream enabled. Optional:
    a fixed ``port``, a ``server_name``, the HTTP monitoring endpoint, cluster routes,
    client authentication (``token``, ``user``/``password``, or a raw ``authorization``
    block body), TLS files, and ``extra_config`` text appended to the config file.

    Use it as a context manager (``with NatsServer() as s:`` or ``async with``), or call
    :meth:`start` and :meth:`stop`. :meth:`kill` stops it with SIGKILL for failure tests;
    :meth:`restart` brings it back on the same ports with the same store.

    Resource handling:
        Owns the process, a daemon thread draining its output, and a temporary directory
        (config and JetStream store, unless ``store_dir`` was given, which is kept).
        :meth:`stop` (and leaving the context) ends the process and removes the temporary
        directory; it is idempotent. A server that is garbage-collected or still running
        at interpreter exit is killed.

    Error handling:
        :meth:`start`/:meth:`restart` raise :class:`ServerError`, with the last log lines,
        when the binary is missing, the server exits early, or it is not ready within
        ``startup_timeout_s``. Using the object in the wrong state (start twice, start
        after stop, restart before start) raises :class:`ClientStateError`.
    """

    def __init__(
        self,
        *,
        jetstream: bool = True,
        server_name: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        monitoring: bool = False,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        authorization: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_ca_file: str | None = None,
        tls_verify: bool = False,
        extra_config: str = "",
        store_dir: str | Path | None = None,
        startup_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
        binary: str | None = None,
    ) -> None:
        if token is not None and (user is not None or password is not None):
            raise ValueError("give either token or user/password, not both")
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        if authorization is not None and (token is not None or user is not None):
            raise ValueError("give either an authorization block or token/user, not both")
        if routes and cluster_name is None:
            raise ValueError("routes need a cluster_name")
        if (tls_cert_file is None) != (tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if startup_timeout_s <= 0 or stop_timeout_s <= 0:
            raise ValueError("startup_timeout_s and stop_timeout_s must be positive")
        self._jetstream = jetstream
        self._server_name = server_name
        self._host = host
        self._port = port
        self._monitoring = monitoring
        self._monitor_port: int | None = None
        self._cluster_name = cluster_name
        self._cluster_port = cluster_port
        self._routes = tuple(routes)
        self._token = token
        self._user = user
        self._password = password
        self._authorization = authorization
        self._tls_cert_file = tls_cert_file
        self._tls_key_file = tls_key_file
        self._tls_ca_file = tls_ca_file
        self._tls_verify = tls_verify
        self._extra_config = extra_config
        self._given_store_dir = Path(store_dir) if store_dir is not None else None
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._binary = binary
        self._state = _State.NEW
        self._workdir: Path | None = None
        self._process: _Process | None = None
        self._logs = _LogBook()

    # ----------------------------------------------------------------- properties

    @property
    def server_name(self) -> str | None:
        return self._server_name

    @property
    def is_running(self) -> bool:
        """True while the process is alive (False before start, after kill and stop)."""
        return self._process is not None and self._process.popen.poll() is None

    @property
    def port(self) -> int:
        """The client port (known once started)."""
        if self._state is _State.NEW or self._port is None:
            raise ClientStateError("This NatsServer has not been started yet; call start().")
        return self._port

    @property
    def url(self) -> str:
        """``nats://HOST:PORT`` (``tls://`` when TLS is configured), without credentials."""
        scheme = "tls" if self._tls_cert_file is not None else "nats"
        return f"{scheme}://{self._host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """``http://HOST:PORT`` of the monitoring endpoint (needs ``monitoring=True``)."""
        if not self._monitoring:
            raise ClientStateError("This NatsServer was created without monitoring=True.")
        self.port  # noqa: B018 - raises when not started
        return f"http://{self._host}:{self._monitor_port}"

    @property
    def route_url(self) -> str:
        """``nats-route://HOST:PORT`` other cluster members connect to."""
        if self._cluster_name is None or self._cluster_port is None:
            raise ClientStateError("This NatsServer has no cluster port (yet).")
        return f"nats-route://{self._host}:{self._cluster_port}"

    @property
    def pid(self) -> int:
        """The process id of the current (or last) server process."""
        if self._process is None:
            raise ClientStateError("This NatsServer has not been started yet; call start().")
        return self._process.pid

    @property
    def store_dir(self) -> Path | None:
        """The JetStream store directory (None without JetStream or before start)."""
        if not self._jetstream:
            return None
        if self._given_store_dir is not None:
            return self._given_store_dir
        return self._workdir / "jetstream" if self._workdir is not None else None

    @property
    def logs(self) -> str:
        """Everything the server logged so far, across restarts (last 5000 lines)."""
        return self._logs.text()

    def client_options(self, **overrides: Any) -> NatsOptions:
        """:class:`NatsOptions` for this server, with its token or user/password."""
        options: dict[str, Any] = {"servers": (self.url,)}
        if self._token is not None:
            options["token"] = self._token
        if self._user is not None:
            options.update(user=self._user, password=self._password)
        options.update(overrides)
        return NatsOptions(**options)

    def __repr__(self) -> str:
        where = self.url if self._port is not None and self._state is not _State.NEW else "-"
        name = f" {self._server_name!r}" if self._server_name else ""
        pid = f" pid={self._process.pid}" if self._process is not None else ""
        return f"<NatsServer{name} {where} {self._state.value}{pid}>"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start the server and wait until it is ready; returns ``self``."""
        if self._state is _State.RUNNING:
            raise ClientStateError("This NatsServer is already running.")
        if self._state is _State.DOWN:
            raise ClientStateError("This NatsServer was killed; call restart() to bring it back.")
        if self._state is _State.CLOSED:
            raise ClientStateError(
                "Cannot start a NatsServer once it has been stopped; create a new one."
            )
        self._workdir = Path(tempfile.mkdtemp(prefix="crankmesh-nats-"))
        try:
            self._launch()
        except BaseException:
            self._state = _State.CLOSED
            self._remove_workdir()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_timeout_s``); idempotent.

        Removes the temporary directory. The object cannot be started again.
        """
        if self._state is _State.CLOSED:
            return
        try:
            if self._process is not None:
                self._process.terminate(self._stop_timeout_s)
        finally:
            self._state = _State.CLOSED
            self._remove_workdir()

    def kill(self) -> None:
        """Kill the server with SIGKILL at once (no clean shutdown); :meth:`restart` later."""
        if self._state in (_State.NEW, _State.CLOSED):
            raise ClientStateError(f"Cannot kill a NatsServer that is {self._state.value}.")
        if self._process is not None:
            self._process.kill()
        self._state = _State.DOWN

    def restart(self) -> Self:
        """Stop the server if it runs, then start it on the same ports with the same store."""
        if self._state in (_State.NEW, _State.CLOSED):
            raise ClientStateError(
                f"Cannot restart a NatsServer that is {self._state.value}; "
                "restart() is for a server that was started (and maybe killed)."
            )
        if self._process is not None:
            self._process.terminate(self._stop_timeout_s)
        self._state = _State.DOWN
        self._launch()
        return self

    async def astart(self) -> Self:
        """:meth:`start` in a worker thread, so the event loop keeps running."""
        await anyio.to_thread.run_sync(self.start)
        return self

    async def arestart(self) -> Self:
        """:meth:`restart` in a worker thread."""
        await anyio.to_thread.run_sync(self.restart)
        return self

    # ------------------------------------------------------------------ internals

    def _launch(self) -> None:
        assert self._workdir is not None
        binary = self._binary or find_nats_server_binary()
        config = self._workdir / "nats-server.conf"
        config.write_text(self._config_text(), encoding="utf-8")
        argv = [binary, "-c", str(config)]
        self._logs.append(f"--- crankmesh.testing: starting {' '.join(argv)}")
        try:
            process = _Process(argv, self._logs, expect_routes=self._cluster_name is not None)
        except OSError as exc:
            raise ServerError(f"could not run {binary}: {exc}") from exc
        self._process = process
        if not process.wait_ready(self._startup_timeout_s):
            exited = process.exited
            process.kill()
            what = (
                f"exited with status {process.popen.returncode} before it was ready"
                if exited
                else f"was not ready within {self._startup_timeout_s:g} s"
            )
            raise ServerError(self._failure(what))
        if process.client_port is None:
            process.kill()
            raise ServerError(self._failure("never logged its client port"))
        self._port = process.client_port
        if process.monitor_port is not None:
            self._monitor_port = process.monitor_port
        if process.route_port is not None:
            self._cluster_port = process.route_port
        self._state = _State.RUNNING

    def _failure(self, what: str) -> str:
        name = f" {self._server_name!r}" if self._server_name else ""
        tail = "\n  ".join(self._logs.tail())
        hint = ""
        if _ADDRESS_IN_USE in tail:
            hint = " (a port it needs is taken by another process)"
        return f"nats-server{name} {what}{hint}; last log lines:\n  {tail}"

    def _config_text(self) -> str:
        port = self._port if self._port is not None else -1
        lines = [
            "# written by crankmesh.testing.NatsServer",
            f"host: {_quote(self._host)}",
            f"port: {port}",
        ]
        if self._server_name is not None:
            lines.append(f"server_name: {_quote(self._server_name)}")
        if self._monitoring:
            monitor_port = self._monitor_port if self._monitor_port is not None else -1
            lines.append(f"http: {_quote(f'{self._host}:{monitor_port}')}")
        if self._jetstream:
            store = self.store_dir
            assert store is not None
            lines += ["jetstream {", f"  store_dir: {_quote(str(store))}", "}"]
        if self._cluster_name is not None:
            cluster_port = self._cluster_port if self._cluster_port is not None else -1
            lines += [
                "cluster {",
                f"  name: {_quote(self._cluster_name)}",
                f"  listen: {_quote(f'{self._host}:{cluster_port}')}",
            ]
            if self._routes:
                lines.append("  routes: [")
                lines += [f"    {_quote(route)}" for route in self._routes]
                lines.append("  ]")
            lines.append("}")
        if self._token is not None:
            lines += ["authorization {", f"  token: {_quote(self._token)}", "}"]
        elif self._user is not None and self._password is not None:
            lines += [
                "authorization {",
                f"  user: {_quote(self._user)}",
                f"  password: {_quote(self._password)}",
                "}",
            ]
        elif self._authorization is not None:
            lines += ["authorization {", self._authorization, "}"]
        if self._tls_cert_file is not None and self._tls_key_file is not None:
            lines += [
                "tls {",
                f"  cert_file: {_quote(self._tls_cert_file)}",
                f"  key_file: {_quote(self._tls_key_file)}",
            ]
            if self._tls_ca_file is not None:
                lines.append(f"  ca_file: {_quote(self._tls_ca_file)}")
            lines += [f"  verify: {'true' if self._tls_verify else 'false'}", "}"]
        if self._extra_config:
            lines.append(self._extra_config)
        return "\n".join(lines) + "\n"

    def _remove_workdir(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def _free_ports(count: int, host: str) -> list[int]:
    """Ports the OS says are free now (bound together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _fetch_json(url: str) -> dict[str, Any]:
    with _HTTP.open(url, timeout=1.0) as response:
        data = json.loads(response.read().decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{url} did not return a JSON object")
    return data


class NatsCluster(_Lifecycle):
    """``size`` routed ``nats-server`` processes (default 3) with clustered JetStream.

    Each server gets a unique ``server_name`` (``n0``, ``n1``, ...), a client port it picks
    itself, a monitoring port, and a pre-allocated cluster port; every server lists the
    routes of all the others. Started means: every server is ready, every running server
    has a route to every other running one, and (with JetStream) they agree on a meta
    leader that sees every running peer as current.

    Resource handling:
        Owns its :class:`NatsServer` objects; :meth:`stop` (or leaving the context)
        stops them all and removes their directories; it is idempotent.

    Error handling:
        Cluster ports are chosen free just before the start, so another process may grab
        one in between; the whole start is then retried once with new ports. Otherwise
        :meth:`start` raises :class:`ServerError` (with log lines) when a server fails or
        the cluster does not form within ``formation_timeout_s``; whatever was started is
        stopped first. Wrong-state use raises :class:`ClientStateError`.
    """

    def __init__(
        self,
        *,
        size: int = 3,
        jetstream: bool = True,
        cluster_name: str = "crankmesh-test",
        server_name_prefix: str = "n",
        host: str = "127.0.0.1",
        extra_config: str = "",
        startup_timeout_s: float = 10.0,
        formation_timeout_s: float = 20.0,
        stop_timeout_s: float = 5.0,
        binary: str | None = None,
    ) -> None:
        if size < 2:
            raise ValueError("a NatsCluster needs at least 2 servers")
        if formation_timeout_s <= 0:
            raise ValueError("formation_timeout_s must be positive")
        self._size = size
        self._jetstream = jetstream
        self._cluster_name = cluster_name
        self._prefix = server_name_prefix
        self._host = host
        self._extra_config = extra_config
        self._startup_timeout_s = startup_timeout_s
        self._formation_timeout_s = formation_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._binary = binary
        self._servers: tuple[NatsServer, ...] = ()
        self._state = _State.NEW

    @property
    def servers(self) -> tuple[NatsServer, ...]:
        """The member servers, in order (server ``i`` is named ``f"{prefix}{i}"``)."""
        return self._servers

    @property
    def urls(self) -> list[str]:
        """Client URLs of all members (including any that are killed right now)."""
        return [server.url for server in self._servers]

    @property
    def url(self) -> str:
        """All client URLs, comma-joined (for :meth:`NatsOptions.from_url`)."""
        return ",".join(self.urls)

    def client_options(self, **overrides: Any) -> NatsOptions:
        """:class:`NatsOptions` listing every member, so a client can fail over."""
        return NatsOptions(servers=tuple(self.urls), **overrides)

    def __repr__(self) -> str:
        return f"<NatsCluster {self._cluster_name!r} {self._state.value} {self._servers!r}>"

    def __len__(self) -> int:
        return self._size

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start every server and wait until the cluster has formed; returns ``self``."""
        if self._state is not _State.NEW:
            raise ClientStateError(
                f"Cannot start a NatsCluster that is {self._state.value}; create a new one."
            )
        self._state = _State.RUNNING
        for attempt in (1, 2):
            try:
                self._servers = self._make_servers(_free_ports(self._size, self._host))
                for server in self._servers:
                    server.start()
                self._wait_formed(self._formation_timeout_s)
            except BaseException as exc:
                self._stop_servers()
                collided = any(_ADDRESS_IN_USE in server.logs for server in self._servers)
                if attempt == 1 and collided and isinstance(exc, ServerError):
                    continue
                self._state = _State.CLOSED
                raise
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stop every server and remove their directories; idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._stop_servers()

    def kill(self, i: int) -> None:
        """SIGKILL server ``i`` (the others keep running)."""
        self._require_running()
        self._servers[i].kill()

    def restart(self, i: int) -> Self:
        """(Re)start server ``i`` on its ports and store; wait until it rejoined."""
        self._require_running()
        self._servers[i].restart()
        self._wait_formed(self._formation_timeout_s)
        return self

    async def astart(self) -> Self:
        """:meth:`start` in a worker thread."""
        await anyio.to_thread.run_sync(self.start)
        return self

    async def arestart(self, i: int) -> Self:
        """:meth:`restart` in a worker thread."""
        await anyio.to_thread.run_sync(self.restart, i)
        return self

    # ------------------------------------------------------------------ internals

    def _require_running(self) -> None:
        if self._state is not _State.RUNNING:
            raise ClientStateError(f"This NatsCluster is {self._state.value}, not running.")

    def _make_servers(self, cluster_ports: list[int]) -> tuple[NatsServer, ...]:
        routes = [f"nats-route://{self._host}:{port}" for port in cluster_ports]
        return tuple(
            NatsServer(
                jetstream=self._jetstream,
                server_name=f"{self._prefix}{i}",
                host=self._host,
                monitoring=True,
                cluster_name=self._cluster_name,
                cluster_port=port,
                routes=[route for j, route in enumerate(routes) if j != i],
                extra_config=self._extra_config,
                startup_timeout_s=self._startup_timeout_s,
                stop_timeout_s=self._stop_timeout_s,
                binary=self._binary,
            )
            for i, port in enumerate(cluster_ports)
        )

    def _stop_servers(self) -> None:
        # SIGTERM all first, then wait: a cluster stops in the time of its slowest member.
        threads = [threading.Thread(target=server.stop, daemon=True) for server in self._servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _wait_formed(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        problem = "not checked yet"
        while time.monotonic() < deadline:
            problem = self._formation_problem() or ""
            if not problem:
                return
            time.sleep(0.05)
        tails = "\n".join(
            f"--- {s.server_name}:\n  " + "\n  ".join(s._logs.tail(10)) for s in self._servers
        )
        raise ServerError(
            f"the NATS cluster {self._cluster_name!r} did not form within {timeout_s:g} s: "
            f"{problem}\n{tails}"
        )

    def _formation_problem(self) -> str | None:
        """What is still missing for the running members to form a cluster, or None."""
        running = [s for s in self._servers if s.is_running]
        names = {s.server_name for s in running}
        try:
            for server in running:
                routez = _fetch_json(server.monitor_url + "/routez")
                remotes = {route.get("remote_name") for route in routez.get("routes") or []}
                missing = names - remotes - {server.server_name}
                if missing:
                    return f"{server.server_name} has no route to {sorted(map(str, missing))}"
            if not self._jetstream:
                return None
            leaders: dict[str, str] = {}
            for server in running:
                meta = _fetch_json(server.monitor_url + "/jsz").get("meta_cluster") or {}
                leaders[str(server.server_name)] = str(meta.get("leader") or "")
            if len(set(leaders.values())) != 1 or "" in leaders.values():
                return f"no agreed JetStream meta leader yet ({leaders})"
            leader_name = next(iter(leaders.values()))
            leader = next((s for s in running if s.server_name == leader_name), None)
            if leader is None:
                return f"the meta leader {leader_name!r} is not running"
            meta = _fetch_json(leader.monitor_url + "/jsz").get("meta_cluster") or {}
            current = {r.get("name") for r in meta.get("replicas") or [] if r.get("current")}
            behind = names - current - {leader_name}
            if behind:
                return f"meta leader {leader_name} does not see {sorted(map(str, behind))} current"
        except (OSError, ValueError, urllib.error.URLError) as exc:
            return f"monitoring endpoint not answering ({exc!r})"
        return None


def closed_nats_server(
    members: Mapping[str, Iterable[str]], *, federation: str = "default", **kwargs: Any
) -> NatsServer:
    """A :class:`NatsServer` with closed audit subjects: only the listed DIDs connect
    (each as its own nkey), with the permissions of its role (``node``, ``originator``,
    ``auditor``, ``admin``; see :mod:`crankmesh.nats_auth`). ``kwargs`` go to
    :class:`NatsServer`. Connect with :func:`member_options`."""
    from crankmesh.nats_auth import authorization_block

    block = authorization_block(members, federation=federation)
    return NatsServer(authorization=block, **kwargs)


def member_options(url: str, identity: Any, directory: str | Path) -> NatsOptions:
    """NatsOptions that authenticate to a :func:`closed_nats_server` as ``identity``:
    writes its nkey seed file (mode 0600) into ``directory``."""
    from crankmesh.nats_auth import nkey_seed

    path = Path(directory) / f"{identity.node_id}.nk"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(nkey_seed(identity) + "\n")
    return NatsOptions(servers=(url,), nkeys_seed=str(path))


# ---------------------------------------------------------------------- pytest fixtures

if importlib.util.find_spec("pytest") is not None:
    import pytest

    @pytest.fixture
    def nats_server() -> Iterator[NatsServer]:
        """A fresh nats-server with JetStream on a free port, stopped after the test."""
        with NatsServer() as server:
            yield server

    @pytest.fixture
    def nats_cluster() -> Iterator[NatsCluster]:
        """A fresh 3-server routed cluster with clustered JetStream, stopped after the test."""
        with NatsCluster() as cluster:
            yield cluster

    __all__ += ["nats_cluster", "nats_server"]
