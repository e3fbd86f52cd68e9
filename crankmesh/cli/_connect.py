"""Connection arguments shared by every command that talks to NATS.

``--nats`` (default ``$CRANKMESH_NATS``), ``--federation`` (default
``$CRANKMESH_FEDERATION``, else ``default``) and ``--connect-timeout`` (seconds).
:func:`nats_options` validates them *before* anything connects, so a bad URL or
federation is a usage error (exit 2), and :func:`connect` turns a failure to reach or
authenticate with NATS into :class:`~crankmesh.protocol.errors.TransportError` (exit 3).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Final
from urllib.parse import urlsplit

from ..protocol import subjects
from ._errors import UsageError

__all__ = [
    "NATS_SCHEMES",
    "add_connection_arguments",
    "connect",
    "federation_of",
    "nats_options",
    "positive_float",
]

NATS_SCHEMES: Final = ("nats", "tls", "ws", "wss")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def add_connection_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--nats``, ``--federation`` and ``--connect-timeout``; with ``required`` a missing
    URL (no flag, no ``$CRANKMESH_NATS``) is a usage error when the command runs."""
    p.add_argument(
        "--nats",
        default=None,
        help="NATS URL(s), comma-separated (default: $CRANKMESH_NATS)"
        + ("" if required else "; optional"),
    )
    p.add_argument(
        "--federation", help="federation name (default: $CRANKMESH_FEDERATION or 'default')"
    )
    p.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=5.0,
        help="seconds to reach NATS before giving up (default 5)",
    )
    p.add_argument(
        "--nats-nkey-seed-file",
        help="NATS nkey seed file (`python -m crankmesh.nats_auth seed`), for servers with "
        "closed audit subjects (docs/operating.md); with --key where the command signs",
    )
    p.set_defaults(_nats_required=required)


def federation_of(args: argparse.Namespace) -> str:
    name = getattr(args, "federation", None) or os.environ.get("CRANKMESH_FEDERATION") or "default"
    try:
        return subjects.check_federation(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def nats_url_of(args: argparse.Namespace) -> str | None:
    url = getattr(args, "nats", None) or os.environ.get("CRANKMESH_NATS") or None
    if url is None:
        if getattr(args, "_nats_required", True):
            raise UsageError("no NATS URL: pass --nats nats://HOST:4222 or set CRANKMESH_NATS")
        return None
    for server in (s.strip() for s in url.replace(" ", ",").split(",")):
        if not server:
            continue
        if "://" not in server:
            continue  # host:port, as nats-py accepts it
        scheme = urlsplit(server).scheme.lower()
        if scheme not in NATS_SCHEMES:
            raise UsageError(
                f"{scheme}:// is not a NATS URL scheme in {server!r:.200}: use "
                + ", ".join(f"{s}://" for s in NATS_SCHEMES)
                + " (e.g. nats://127.0.0.1:4222)"
            )
        try:
            urlsplit(server).port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise UsageError(f"bad NATS URL {server!r:.200}: {exc}") from None
    return url


def nats_options(args: argparse.Namespace, name: str, *, reconnect: bool = False) -> Any:
    """Validated :class:`~crankmesh.transport.NatsOptions` from the arguments."""
    from ..transport import NatsOptions

    url = nats_url_of(args)
    if url is None:
        raise UsageError("no NATS URL: pass --nats nats://HOST:4222 or set CRANKMESH_NATS")
    try:
        seed = getattr(args, "nats_nkey_seed_file", None)
        return NatsOptions.from_url(
            url,
            name=name,
            initial_connect_timeout_s=float(getattr(args, "connect_timeout", 5.0)),
            max_reconnect_attempts=-1 if reconnect else 0,
            **({"nkeys_seed": seed} if seed else {}),
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


async def connect(options: Any) -> Any:
    """Connect (raises TransportError, exit 3, naming the servers and the cause)."""
    from ..transport import connect as transport_connect

    return await transport_connect(options)
