"""The event loop crankmesh's own entry points run on.

crankmesh runs anyio on the asyncio backend (nats-py is asyncio-only).  Its
entry points (the ``crankmesh`` CLI, :class:`~crankmesh.SyncClient`, the
benchmark and the tests) use uvloop, a drop-in asyncio event loop written in
Cython, when it is installed: every NATS message costs a read, a parse, a
queue hand-off and a task switch in the loop, and with uvloop a whole signed
job costs about 20% less CPU (``scripts/bench.py``).  uvloop is a dependency on
the platforms it supports; where it is missing, the standard loop is used.

``CRANKMESH_EVENT_LOOP`` chooses: ``auto`` (the default: uvloop when
installed), ``uvloop`` (required; a clear error when missing) or ``asyncio``
(the standard library loop).  An application that starts its own loop
(``anyio.run``, ``asyncio.run``) picks its own; crankmesh works on either.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

__all__ = ["ENV_VAR", "backend_options", "event_loop_name", "run"]

ENV_VAR = "CRANKMESH_EVENT_LOOP"
_CHOICES = ("auto", "uvloop", "asyncio")

T = TypeVar("T")


def backend_options() -> dict[str, Any]:
    """anyio ``backend_options`` for the asyncio backend, per ``CRANKMESH_EVENT_LOOP``.

    Raises :class:`ValueError` for an unknown choice, and :class:`RuntimeError`
    when ``uvloop`` is required but not installed.
    """
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(_CHOICES)}, not {choice!r}")
    if choice == "asyncio":
        return {}
    if importlib.util.find_spec("uvloop") is None:
        if choice == "uvloop":
            raise RuntimeError(f"{ENV_VAR}=uvloop, but uvloop is not installed")
        return {}
    return {"use_uvloop": True}


def event_loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: what :func:`run` would use now."""
    return "uvloop" if backend_options().get("use_uvloop") else "asyncio"


def run(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``anyio.run`` on the asyncio backend with the loop :func:`backend_options` picks."""
    return anyio.run(func, *args, backend="asyncio", backend_options=backend_options())
