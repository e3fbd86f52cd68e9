"""Closed audit subjects: per-identity NATS permissions, keyed by the nodes' own DIDs.

Every crankmesh identity is an Ed25519 key, and so is a NATS *nkey*: the public user nkey
(``U…``) of a node is its DID's public key in nkey encoding, and its nkey seed (``SU…``)
is its identity seed. A NATS server that knows only the DIDs of the federation's members
can therefore authenticate each connection as one DID and give it a publish allow-list in
which the audit subjects (RFC 0001 §9) carry *its own* node id only::

    crank.<fed>.receipts.<own id>      crank.<fed>.bids.<own id>
    crank.<fed>.settlements.<own id>   crank.<fed>.tokens.<own id>

so no identity can write receipts, winning bids, settlements or budget records into another
one's name (RFC 0002's stream then holds only what each signer could publish). The shared
protocol subjects (announce, per-job bids / assignment / receipt / close, adverts) stay
open to every member -- their messages are signed and checked by their receivers -- and
replies go back through ``allow_responses`` (no one may publish into another's
``_INBOX``). A node subscribes only to its own assignments.

Roles (:data:`ROLES`): ``node`` (executor + originator, what ``crankmesh node`` needs),
``originator`` (an SDK ``Client`` / ``crankmesh submit``: no bids, receipts or adverts),
``auditor`` (reads the record stream: ``crankmesh audit`` / ``receipts export``; publishes
nothing on ``crank.>``) and ``admin`` (everything: creates and manages the stream).

Generate a server's ``authorization`` block, and each member's nkey seed file::

    python -m crankmesh.nats_auth config --federation demo --node did:key:z6Mk… \\
        --originator did:key:z6Mk… --admin did:key:z6Mk… > auth.conf
    python -m crankmesh.nats_auth seed --key node.key --out node.nk
    # then: CRANKMESH_NATS_NKEY_SEED_FILE=node.nk crankmesh node ...

Everything here but :func:`main` is pure (no I/O, no NATS).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import nkeys  # type: ignore[import-untyped]

from .protocol import subjects
from .protocol.errors import CrankmeshError, InvalidDID
from .protocol.identity import Identity, did_node_id, public_key_from_did

__all__ = [
    "ROLES",
    "authorization_block",
    "nkey_seed",
    "permissions",
    "server_config",
    "user_nkey",
]

ROLES: Final = ("node", "originator", "auditor", "admin")


def user_nkey(did: str) -> str:
    """The public NATS user nkey (``U…``) of a did:key identity.

    Raises :class:`~crankmesh.protocol.errors.InvalidDID` for anything else.
    """
    public = public_key_from_did(did)
    raw = bytearray([nkeys.PREFIX_BYTE_USER]) + bytearray(public)
    raw += bytearray(nkeys.crc16_checksum(raw))
    return base64.b32encode(bytes(raw)).rstrip(b"=").decode("ascii")


def nkey_seed(identity: Identity) -> str:
    """The NATS user nkey seed (``SU…``) of ``identity``: the same secret as its key file."""
    return bytes(nkeys.encode_seed(identity.seed, nkeys.PREFIX_BYTE_USER)).decode("ascii")


def _stream(federation: str) -> str:
    from .receipts.store import stream_name

    return stream_name(federation)


def permissions(role: str, did: str, *, federation: str = "default") -> dict[str, Any]:
    """The NATS ``permissions`` map of one identity in ``role`` (see the module docstring).

    Raises :class:`ValueError` for an unknown role or federation, ``InvalidDID`` for a
    bad DID.
    """
    fed = f"{subjects.ROOT}.{subjects.check_federation(federation)}"
    node = did_node_id(did)
    public_key_from_did(did)
    stream = _stream(federation)
    js_info = [f"$JS.API.STREAM.INFO.{stream}"]
    own_records = [
        subjects.receipts(federation, did),
        subjects.bid_records(federation, did),
        subjects.settlements(federation, did),
        subjects.tokens(federation, did),
    ]
    # The directory bucket (RFC 0001 §8.15): every member may find, create and watch it
    # (watchers are ephemeral ordered consumers: the server removes them when idle); a
    # node may put under its own key only.
    kv_stream = f"KV_{subjects.directory_bucket(federation)}"
    directory_watch = [
        f"$JS.API.STREAM.INFO.{kv_stream}",
        f"$JS.API.STREAM.CREATE.{kv_stream}",
        f"$JS.API.CONSUMER.CREATE.{kv_stream}",
        f"$JS.API.CONSUMER.CREATE.{kv_stream}.>",
        f"$JS.API.CONSUMER.INFO.{kv_stream}.>",
        f"$JS.FC.{kv_stream}.>",
    ]
    own_directory_key = f"$KV.{subjects.directory_bucket(federation)}.{node}"
    if role == "admin":
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    if role == "auditor":
        return {
            "publish": {
                "allow": [
                    *js_info,
                    f"$JS.API.CONSUMER.CREATE.{stream}",
                    f"$JS.API.CONSUMER.CREATE.{stream}.>",
                    f"$JS.API.CONSUMER.INFO.{stream}.>",
                    f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
                    f"$JS.API.CONSUMER.DELETE.{stream}.>",
                ]
            },
            "subscribe": {"allow": ["_INBOX.>"]},
        }
    originating = [
        f"{fed}.jobs.announce.>",
        f"{fed}.jobs.*.assignment.*",
        f"{fed}.jobs.*.closed",
        f"{fed}.nodes.sync",
        f"{fed}.nodes.*.announce",  # calls for bids sampled to one executor (§10.8)
        f"{fed}.explain.*",
        *directory_watch,
    ]
    # The first member to start creates the record stream; CREATE cannot alter an
    # existing one (UPDATE, DELETE and PURGE are the admin's).
    js = [*js_info, f"$JS.API.STREAM.CREATE.{stream}"]
    if role == "originator":
        return {
            "publish": {
                "allow": [
                    *originating,
                    subjects.settlements(federation, did),
                    subjects.tokens(federation, did),
                    *js,
                ]
            },
            "subscribe": {"allow": [f"{fed}.jobs.*.*", f"{fed}.nodes.adverts", "_INBOX.>"]},
            "allow_responses": True,
        }
    if role == "node":
        return {
            "publish": {
                "allow": [
                    *originating,
                    f"{fed}.jobs.*.bids",
                    f"{fed}.jobs.*.receipt",
                    f"{fed}.nodes.adverts",
                    own_directory_key,
                    *own_records,
                    *js,
                ]
            },
            "subscribe": {
                "allow": [
                    f"{fed}.jobs.announce.>",
                    f"{fed}.jobs.*.*",
                    f"{fed}.jobs.*.assignment.{node}",
                    f"{fed}.nodes.>",
                    f"{fed}.receipts.*",
                    f"{fed}.bids.*",
                    f"{fed}.settlements.*",
                    f"{fed}.explain.*",
                    "_INBOX.>",
                ]
            },
            "allow_responses": True,
        }
    raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def authorization_block(
    members: Mapping[str, Iterable[str]], *, federation: str = "default"
) -> str:
    """The body of a nats-server ``authorization { … }`` block: one nkey user per DID.

    ``members`` maps a role (:data:`ROLES`) to DIDs. A DID listed under two roles is an
    error (NATS has one user per nkey): give it the wider role only. The text is JSON,
    which the NATS configuration format accepts.
    """
    users: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for role, dids in members.items():
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        for did in dids:
            if did in seen:
                raise ValueError(f"{did} is listed as {seen[did]} and as {role}; give one role")
            seen[did] = role
            users.append(
                {
                    "nkey": user_nkey(did),
                    "permissions": permissions(role, did, federation=federation),
                }
            )
    if not users:
        raise ValueError("no members: list at least one DID")
    return "users: " + json.dumps(users, indent=2)


def server_config(
    members: Mapping[str, Iterable[str]],
    *,
    federation: str = "default",
    extra: str = "",
) -> str:
    """A complete include file for nats-server: ``authorization { … }`` plus ``extra``."""
    body = authorization_block(members, federation=federation)
    head = (
        f"# crankmesh: closed audit subjects for federation {federation!r}\n"
        "# generated by `python -m crankmesh.nats_auth config`; one nkey user per DID\n"
    )
    return head + "authorization {\n" + body + "\n}\n" + (extra + "\n" if extra else "")


# ----------------------------------------------------------------------------- command line


def _read_dids(values: Sequence[str]) -> list[str]:
    """DIDs from arguments; ``@FILE`` reads one per line (``#`` comments)."""
    out: list[str] = []
    for value in values:
        if value.startswith("@"):
            text = Path(value[1:]).read_text(encoding="utf-8")
            out.extend(d for line in text.splitlines() if (d := line.split("#", 1)[0].strip()))
        else:
            out.append(value.strip())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m crankmesh.nats_auth config|seed``; user errors end in one line, exit 2."""
    parser = argparse.ArgumentParser(
        prog="python -m crankmesh.nats_auth",
        description="NATS permissions that close the audit subjects: each DID publishes "
        "receipts, bids, settlements and tokens under its own node id only.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("config", help="print a nats-server authorization include file")
    cfg.add_argument("--federation", default="default")
    for role in ROLES:
        cfg.add_argument(
            f"--{role}",
            action="append",
            default=[],
            metavar="DID",
            help=f"a DID with the {role} role (repeatable; @FILE reads one per line)",
        )
    cfg.add_argument("--extra", default="", help="text appended (e.g. 'max_payload: 8MB')")
    cfg.add_argument("--out", help="write here (mode 0644) instead of stdout")
    seed = sub.add_parser("seed", help="write the NATS nkey seed file of an identity key")
    seed.add_argument("--key", required=True, help="crankmesh identity key file")
    seed.add_argument("--out", required=True, help="nkey seed file to write (mode 0600)")
    seed.add_argument("--force", action="store_true", help="replace an existing file")
    did = sub.add_parser("nkey", help="print the public user nkey of a DID")
    did.add_argument("did")
    args = parser.parse_args(argv)
    try:
        if args.command == "config":
            members = {role: _read_dids(getattr(args, role)) for role in ROLES}
            text = server_config(members, federation=args.federation, extra=args.extra)
            if args.out:
                Path(args.out).write_text(text, encoding="utf-8")
            else:
                sys.stdout.write(text)
        elif args.command == "seed":
            from .keystore import load_identity

            identity = load_identity(args.key)
            flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
            fd = os.open(args.out, flags, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(nkey_seed(identity) + "\n")
            print(f"{identity.did} -> {user_nkey(identity.did)} (seed in {args.out}, mode 0600)")
        else:
            print(user_nkey(args.did))
    except (CrankmeshError, InvalidDID, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
