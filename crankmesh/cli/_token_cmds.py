"""``crankmesh token issue | delegate | inspect``: budget tokens on the command line.

Token files
-----------
A token file holds one chain, root first, as JSON (one object)::

    {"type": "crankmesh-token-chain-v1",
     "chain": ["<hex of the root token envelope>", ..., "<hex of the leaf envelope>"]}

Each element is the exact signed envelope bytes of one ``"token"`` message (RFC 0001 §8.12),
lower-case hex.  ``delegate`` reads a chain and writes a new file with the chain plus one link.
Token files hold no secret (a token only empowers its audience, who must sign to use or
delegate it), so they are written with the default mode; an existing file is not overwritten
without ``--force``.

Parser attributes (every value as argparse gives it, a ``str`` unless noted; the functions
parse amounts and durations themselves, so no ``type=`` is needed)
---------------------------------------------------------------------------------------------
``cmd_token_issue``:
    ``key`` (req., issuer key file), ``audience`` (req., DID), ``scope`` (req., pattern),
    ``amount`` (decimal units, e.g. ``1.50``) or ``amount_micros`` (integer micro-units):
    exactly one; ``currency`` (default ``"USD"``), ``ttl`` (default ``"1h"``), ``out`` (req.),
    ``force`` (bool, default False), ``json`` (bool, default False).
``cmd_token_delegate``:
    ``token`` (req., parent chain file), ``key`` (req., holder key file), ``audience`` (req.),
    ``amount`` / ``amount_micros`` (optional, at most one), ``scope`` (optional), ``ttl``
    (optional; default: the parent's expiry), ``out`` (req.), ``force``, ``json``.
``cmd_token_inspect``:
    ``token`` (req.), ``json`` (bool); optional ``capability`` (check the leaf covers it),
    ``holder`` (DID the leaf must be issued to), ``trust`` (list of root-issuer DIDs to trust;
    ``None`` = trust not checked).

Optional attributes are read with ``getattr(args, name, default)``, so a parser may omit them.

Exit status (the CLI's one table, :mod:`crankmesh.cli._errors`): 0 success (inspect: the chain
verifies now), 1 the operation failed (a refused delegation, an invalid chain), 2 usage: a
malformed argument (amount, ttl, scope, DID), a missing, unreadable or malformed key or token
file, an existing ``--out`` without ``--force``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from ..keystore import load_identity
from ..protocol.envelope import Envelope
from ..protocol.errors import KeystoreError, ProtocolError, TokenInvalid
from ..protocol.tokens import (
    MAX_CHAIN_LINKS,
    Token,
    TokenGrant,
    decode_token,
    delegate,
    issue,
    verify_chain,
)

__all__ = [
    "CHAIN_FILE_TYPE",
    "cmd_token_delegate",
    "cmd_token_inspect",
    "cmd_token_issue",
    "parse_amount",
    "parse_ttl",
    "read_chain_file",
    "write_chain_file",
]

CHAIN_FILE_TYPE: Final = "crankmesh-token-chain-v1"
_MAX_FILE_BYTES: Final = 64 * 1024  # 8 links of at most 1 KiB, hex-encoded, fit easily
_TTL_RE: Final = re.compile(r"\s*(\d+)\s*(ms|s|m|h|d)?\s*\Z")
_TTL_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class _UsageError(Exception):
    """A malformed argument: exit status 2."""


def parse_amount(text: str) -> int:
    """Decimal currency units (``1.50``, ``0.000001``, ``3``) to integer micro-units.

    Raises :class:`ValueError` for negative amounts, more than 6 decimals, or non-numbers.
    """
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not an amount: {text!r} (expected decimal units such as 1.50)") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"not an amount: {text!r} (expected a non-negative number)")
    micros = value * 1_000_000
    if micros != micros.to_integral_value():
        raise ValueError(f"amount {text!r} has more than 6 decimals (the unit is 1 micro)")
    return int(micros)


def parse_ttl(text: str) -> int:
    """A duration such as ``90s``, ``15m``, ``1h``, ``7d``, ``500ms`` (bare number: seconds),
    in milliseconds.  Raises :class:`ValueError` unless positive."""
    m = _TTL_RE.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 90s, 15m, 1h, 7d)")
    ms = int(m.group(1)) * _TTL_UNIT_MS[m.group(2) or "s"]
    if ms <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return ms


def read_chain_file(path: str | os.PathLike[str]) -> list[Envelope]:
    """Read a token file (module docstring) into parsed, unverified envelopes.

    Raises :class:`ValueError` (with the path) for a missing, unreadable or malformed file, and
    a :class:`ProtocolError` subclass for an element that is not a token envelope.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read token file {p}: {exc.strerror}") from exc
    if len(raw) > _MAX_FILE_BYTES:
        raise ValueError(f"{p} is {len(raw)} bytes; a token file is at most {_MAX_FILE_BYTES}")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{p} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != CHAIN_FILE_TYPE:
        raise ValueError(f"{p} is not a token file (expected type {CHAIN_FILE_TYPE!r})")
    chain = doc.get("chain")
    if not isinstance(chain, list) or not 1 <= len(chain) <= MAX_CHAIN_LINKS:
        raise ValueError(f"{p}: 'chain' must be a list of 1 to {MAX_CHAIN_LINKS} hex strings")
    envs = []
    for i, item in enumerate(chain, start=1):
        try:
            data = bytes.fromhex(item)
        except (TypeError, ValueError):
            raise ValueError(f"{p}: link {i} is not a hex string") from None
        try:
            envs.append(decode_token(data)[0])
        except ProtocolError as exc:
            raise ProtocolError(f"{p}: link {i} is not a token: {exc}") from exc
    return envs


def write_chain_file(
    path: str | os.PathLike[str], chain: list[Envelope], *, overwrite: bool = False
) -> Path:
    """Write ``chain`` as a token file; :class:`ValueError` if it exists and not ``overwrite``."""
    p = Path(path)
    doc = {"type": CHAIN_FILE_TYPE, "chain": [e.raw.hex() for e in chain]}
    try:
        with open(p, "w" if overwrite else "x", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    except FileExistsError:
        raise ValueError(f"{p} already exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise ValueError(f"cannot write token file {p}: {exc.strerror}") from exc
    return p


# ----------------------------------------------------------------------------- formatting


def _fmt_units(micros: int, currency: str) -> str:
    whole, frac = divmod(micros, 1_000_000)
    digits = f"{frac:06d}".rstrip("0")
    return f"{whole}.{digits.ljust(2, '0')} {currency}"


def _fmt_time(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def _link_obj(env: Envelope, tok: Token) -> dict[str, Any]:
    return {
        "cid": env.cid,
        "issuer": tok.signer,
        "audience": tok.aud,
        "scope": tok.scope,
        "amount_micros": tok.amount,
        "amount": _fmt_units(tok.amount, tok.currency),
        "currency": tok.currency,
        "nbf": tok.nbf,
        "exp": tok.exp,
        "parent": tok.parent,
    }


def _link_text(i: int, obj: dict[str, Any]) -> str:
    role = "root" if i == 1 else "delegation"
    return "\n".join(
        [
            f"link {i} ({role}) {obj['cid']}",
            f"  issuer    {obj['issuer']}",
            f"  audience  {obj['audience']}",
            f"  scope     {obj['scope']}",
            f"  amount    {obj['amount']} ({obj['amount_micros']} µ{obj['currency']})",
            f"  valid     {_fmt_time(obj['nbf'])} → {_fmt_time(obj['exp'])}",
        ]
    )


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj) if getattr(args, "json", False) else text)


def _fail(message: str, status: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _amount_arg(args: argparse.Namespace, *, required: bool) -> int | None:
    amount = getattr(args, "amount", None)
    micros = getattr(args, "amount_micros", None)
    if amount is not None and micros is not None:
        raise _UsageError("give --amount or --amount-micros, not both")
    if amount is not None:
        try:
            return parse_amount(str(amount))
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
    if micros is not None:
        try:
            value = int(micros)
        except ValueError:
            raise _UsageError(f"--amount-micros must be an integer, got {micros!r}") from None
        if value < 0:
            raise _UsageError(f"--amount-micros must not be negative, got {value}")
        return value
    if required:
        raise _UsageError("give --amount (decimal units) or --amount-micros")
    return None


def _ttl_arg(args: argparse.Namespace, default: str | None) -> int | None:
    ttl = getattr(args, "ttl", None) or default
    if ttl is None:
        return None
    try:
        return parse_ttl(str(ttl))
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ----------------------------------------------------------------------------- commands


def cmd_token_issue(args: argparse.Namespace) -> int:
    """Issue a root token with the issuer key ``args.key`` and write it to ``args.out``."""
    try:
        amount = _amount_arg(args, required=True)
        ttl_ms = _ttl_arg(args, "1h")
    except _UsageError as exc:
        return _fail(str(exc), 2)
    assert amount is not None and ttl_ms is not None
    try:
        issuer = load_identity(args.key)
    except KeystoreError as exc:
        return _fail(str(exc), 2)
    try:
        env = issue(
            issuer,
            audience=args.audience,
            scope=args.scope,
            amount=amount,
            currency=getattr(args, "currency", None) or "USD",
            ttl_ms=ttl_ms,
            now_ms=_now_ms(),
        )
    except ValueError as exc:
        return _fail(str(exc), 2)
    try:
        path = write_chain_file(args.out, [env], overwrite=getattr(args, "force", False))
    except ValueError as exc:  # exists without --force, or cannot be written
        return _fail(str(exc), 2)
    obj = _link_obj(*decode_token(env))
    _emit(args, {**obj, "path": str(path)}, f"{_link_text(1, obj)}\ntoken written to {path}")
    return 0


def cmd_token_delegate(args: argparse.Namespace) -> int:
    """Delegate the leaf of chain ``args.token`` with holder key ``args.key`` to
    ``args.audience``, attenuated by the optional amount/scope/ttl; write the longer chain."""
    try:
        amount = _amount_arg(args, required=False)
        ttl_ms = _ttl_arg(args, None)
    except _UsageError as exc:
        return _fail(str(exc), 2)
    try:
        chain = read_chain_file(args.token)
    except (ValueError, ProtocolError) as exc:
        return _fail(str(exc), 2)
    if len(chain) >= MAX_CHAIN_LINKS:
        return _fail(f"{args.token} already has {len(chain)} links, the most a chain may have")
    try:
        holder = load_identity(args.key)
    except KeystoreError as exc:
        return _fail(str(exc), 2)
    now = _now_ms()
    try:
        verify_chain(chain, now_ms=now, holder=holder.did)
        child = delegate(
            chain[-1],
            holder,
            audience=args.audience,
            amount=amount,
            scope=getattr(args, "scope", None),
            ttl_ms=ttl_ms,
            now_ms=now,
        )
    except TokenInvalid as exc:
        return _fail(f"cannot delegate: {exc}")
    except ValueError as exc:
        return _fail(str(exc), 2)
    new_chain = [*chain, child]
    try:
        path = write_chain_file(args.out, new_chain, overwrite=getattr(args, "force", False))
    except ValueError as exc:  # exists without --force, or cannot be written
        return _fail(str(exc), 2)
    obj = _link_obj(*decode_token(child))
    n = len(new_chain)
    _emit(
        args,
        {**obj, "links": n, "path": str(path)},
        f"{_link_text(n, obj)}\nchain of {n} links written to {path}",
    )
    return 0


def cmd_token_inspect(args: argparse.Namespace) -> int:
    """Print every link of chain ``args.token`` and whether the chain verifies now."""
    try:
        chain = read_chain_file(args.token)
    except (ValueError, ProtocolError) as exc:
        return _fail(str(exc), 2)
    links = [_link_obj(*decode_token(env)) for env in chain]
    trust = getattr(args, "trust", None)
    trusted = None if trust is None else set(trust).__contains__
    grant: TokenGrant | None = None
    problem: str | None = None
    try:
        grant = verify_chain(
            chain,
            now_ms=_now_ms(),
            trusted_roots=trusted,
            capability=getattr(args, "capability", None),
            holder=getattr(args, "holder", None),
        )
    except TokenInvalid as exc:
        problem = str(exc)
    obj: dict[str, Any] = {"links": links, "valid": problem is None, "error": problem}
    lines = [_link_text(i, link) for i, link in enumerate(links, start=1)]
    if grant is not None:
        lines.append(
            f"valid now: {grant.holder} may spend up to "
            f"{_fmt_units(grant.amount, grant.currency)} on {grant.scope!r}"
            + ("" if trusted else " (root issuer trust not checked)")
        )
    else:
        lines.append(f"INVALID: {problem}")
    _emit(args, obj, "\n".join(lines))
    return 0 if problem is None else 1
