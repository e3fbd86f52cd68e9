"""The CLI's one exit-code table and the one place errors become exit codes.

Every command returns one of :data:`EXIT_CODES`; :func:`run_command` is the only place
exceptions are caught and turned into a one-line ``error:`` message and an exit code.
``--debug`` (before the command: ``crankmesh --debug submit ...``) prints the traceback
as well.

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      success
1      the operation failed: a job failed or nobody could run it, audit findings
2      usage: a bad option value, a missing or unreadable file, a refused overwrite
3      connection or authorization: NATS unreachable, refused credentials
130    interrupted (Ctrl-C)
=====  ==========================================================================
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Final, NoReturn

__all__ = [
    "EXIT_CODES",
    "EXIT_CODES_HELP",
    "EXIT_CONNECTION",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliParser",
    "ConnectionFailed",
    "UsageError",
    "exit_code_for",
    "run_command",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_CONNECTION: Final = 3
EXIT_INTERRUPTED: Final = 130

EXIT_CODES: Final = {
    EXIT_OK: "success",
    EXIT_FAILED: "the operation failed (a job failed or nobody could run it; audit findings)",
    EXIT_USAGE: "usage error (bad option value, unreadable file, refused overwrite)",
    EXIT_CONNECTION: "NATS unreachable, or the server refused the credentials",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

EXIT_CODES_HELP: Final = "exit status:\n" + "\n".join(
    f"  {code:<4} {text}" for code, text in EXIT_CODES.items()
)


class UsageError(Exception):
    """A bad argument value found after parsing (exit 2)."""


class ConnectionFailed(Exception):
    """NATS could not be reached or refused this client (exit 3)."""


class CliParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``error: ... (see 'crankmesh submit --help')``."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            out.extend(_leaves(sub))
        return out
    return [exc]


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code for an exception a command let through; None: a bug (traceback)."""
    from ..protocol.errors import (
        BudgetError,
        CapabilityMismatch,
        CrankmeshError,
        InvalidJob,
        JobFailed,
        KeystoreError,
        SelectionError,
        StateDirError,
        TransportError,
    )

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, UsageError | KeystoreError | InvalidJob | StateDirError):
        return EXIT_USAGE  # e.g. `submit --timeout nan`, a read-only state dir
    if isinstance(exc, ConnectionFailed | TransportError):
        return EXIT_CONNECTION
    if isinstance(exc, JobFailed | SelectionError | BudgetError | CapabilityMismatch):
        return EXIT_FAILED
    if isinstance(exc, CrankmeshError):
        return EXIT_FAILED
    try:
        from ..config import ConfigError
    except ImportError:  # pragma: no cover - config is being reworked elsewhere
        pass
    else:
        if isinstance(exc, ConfigError):
            return EXIT_USAGE
    if isinstance(exc, BrokenPipeError):
        return EXIT_OK
    if isinstance(exc, OSError):
        return EXIT_USAGE  # a file named on the command line
    return None


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    text = str(exc).strip()
    return text or type(exc).__name__


def run_command(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command: its return value is the exit code; a known exception becomes
    ``error: <message>`` on stderr and its code from the table; an unknown one (a bug)
    keeps its traceback.  ``args.debug`` prints the traceback for known ones too."""
    debug = bool(getattr(args, "debug", False))
    try:
        return int(fn(args))
    except (Exception, KeyboardInterrupt) as exc:
        leaves = _leaves(exc)
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            if debug:
                traceback.print_exception(exc)
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        codes = [(exit_code_for(e), e) for e in leaves]
        known = [(c, e) for c, e in codes if c is not None]
        if not known or len(known) < len(codes):
            raise  # a bug: keep the traceback
        code, first = known[0]
        if isinstance(first, BrokenPipeError):
            _silence_stdout()
            return EXIT_OK
        if debug:
            traceback.print_exception(exc)
        for _, e in known[:3]:
            print(f"error: {_message(e)}", file=sys.stderr)
        return code


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
