"""`crankmesh token issue | delegate | inspect`: a round trip through token files."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from crankmesh.cli._token_cmds import (
    CHAIN_FILE_TYPE,
    cmd_token_delegate,
    cmd_token_inspect,
    cmd_token_issue,
    parse_amount,
    parse_ttl,
    read_chain_file,
)
from crankmesh.keystore import save_identity
from crankmesh.protocol.errors import TokenInvalid
from crankmesh.protocol.identity import Identity
from crankmesh.protocol.tokens import decode_token, verify_chain


def _parser() -> argparse.ArgumentParser:
    """The parser the lead wires into ``crankmesh`` (attributes as documented)."""
    p = argparse.ArgumentParser(prog="crankmesh token")
    sub = p.add_subparsers(required=True)
    i = sub.add_parser("issue")
    i.add_argument("--key", required=True)
    i.add_argument("--audience", required=True)
    i.add_argument("--scope", required=True)
    i.add_argument("--amount")
    i.add_argument("--amount-micros")
    i.add_argument("--currency", default="USD")
    i.add_argument("--ttl", default="1h")
    i.add_argument("--out", required=True)
    i.add_argument("--force", action="store_true")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_token_issue)
    d = sub.add_parser("delegate")
    d.add_argument("--token", required=True)
    d.add_argument("--key", required=True)
    d.add_argument("--audience", required=True)
    d.add_argument("--amount")
    d.add_argument("--amount-micros")
    d.add_argument("--scope")
    d.add_argument("--ttl")
    d.add_argument("--out", required=True)
    d.add_argument("--force", action="store_true")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_token_delegate)
    n = sub.add_parser("inspect")
    n.add_argument("--token", required=True)
    n.add_argument("--capability")
    n.add_argument("--holder")
    n.add_argument("--trust", action="append")
    n.add_argument("--json", action="store_true")
    n.set_defaults(fn=cmd_token_inspect)
    return p


Run = Callable[..., int]


@pytest.fixture
def run() -> Run:
    parser = _parser()

    def run(*argv: str) -> int:
        args = parser.parse_args([str(a) for a in argv])
        code: int = args.fn(args)
        return code

    return run


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Identity, Path]]:
    out = {}
    for name in ("treasury", "alice", "bob"):
        ident = Identity.generate()
        out[name] = (ident, save_identity(ident, tmp_path / f"{name}.key"))
    return out


def test_issue_delegate_inspect_round_trip(
    run: Run,
    keys: dict[str, tuple[Identity, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    treasury, tkey = keys["treasury"]
    alice, akey = keys["alice"]
    bob, _ = keys["bob"]
    root_file, child_file = tmp_path / "root.json", tmp_path / "child.json"

    assert run("issue", "--key", tkey, "--audience", alice.did, "--scope", "python.*",
               "--amount", "1.50", "--ttl", "2h", "--out", root_file) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "1.50 USD (1500000 µUSD)" in out and f"token written to {root_file}" in out
    doc = json.loads(root_file.read_text())
    assert doc["type"] == CHAIN_FILE_TYPE and len(doc["chain"]) == 1

    assert run("delegate", "--token", root_file, "--key", akey, "--audience", bob.did,
               "--amount-micros", "250000", "--scope", "python.run", "--ttl", "30m",
               "--out", child_file, "--json") == 0  # fmt: skip
    shown = json.loads(capsys.readouterr().out)
    assert (shown["links"], shown["amount_micros"], shown["scope"]) == (2, 250_000, "python.run")
    assert shown["issuer"] == alice.did and shown["audience"] == bob.did

    chain = read_chain_file(child_file)
    grant = verify_chain(
        chain,
        now_ms=decode_token(chain[1])[1].ts,
        holder=bob.did,
        capability="python.run",
        trusted_roots={treasury.did}.__contains__,
    )
    assert (grant.amount, grant.exp - decode_token(chain[1])[1].ts) == (250_000, 30 * 60_000)

    assert run("inspect", "--token", child_file) == 0
    out = capsys.readouterr().out
    assert "link 1 (root)" in out and "link 2 (delegation)" in out
    assert f"valid now: {bob.did} may spend up to 0.25 USD on 'python.run'" in out
    assert "(root issuer trust not checked)" in out

    assert run("inspect", "--token", child_file, "--trust", treasury.did, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True and report["error"] is None
    assert [link["cid"] for link in report["links"]] == [e.cid for e in chain]

    assert run("inspect", "--token", child_file, "--trust", alice.did) == 1
    assert "INVALID: root issuer" in capsys.readouterr().out
    assert run("inspect", "--token", child_file, "--capability", "gpu.run", "--json") == 1
    assert "outside the token's scope" in json.loads(capsys.readouterr().out)["error"]


def test_delegation_refusals(
    run: Run,
    keys: dict[str, tuple[Identity, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, tkey = keys["treasury"]
    alice, akey = keys["alice"]
    bob, bkey = keys["bob"]
    root_file = tmp_path / "root.json"
    assert run("issue", "--key", tkey, "--audience", alice.did, "--scope", "python.*",
               "--amount-micros", "1000", "--out", root_file) == 0  # fmt: skip
    capsys.readouterr()
    base = ("delegate", "--token", root_file, "--audience", bob.did, "--out", tmp_path / "c.json")
    assert run(*base, "--key", akey, "--amount", "1") == 1
    assert "amount 1000000 exceeds parent's 1000" in capsys.readouterr().err
    assert run(*base, "--key", akey, "--scope", "*") == 1
    assert "not within parent scope" in capsys.readouterr().err
    assert run(*base, "--key", akey, "--ttl", "3h") == 1
    assert "later than parent's" in capsys.readouterr().err
    assert run(*base, "--key", bkey) == 1  # bob is not the audience
    assert "issued to" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
    assert run(*base, "--key", akey) == 0
    assert run(*base, "--key", akey) == 2  # exists: a usage error
    assert "--force" in capsys.readouterr().err
    assert run(*base, "--key", akey, "--force") == 0


def test_usage_and_file_errors(
    run: Run,
    keys: dict[str, tuple[Identity, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, tkey = keys["treasury"]
    alice, _ = keys["alice"]
    common = ("issue", "--key", tkey, "--audience", alice.did, "--out", tmp_path / "t.json")
    assert run(*common, "--scope", "python.*") == 2  # no amount
    assert run(*common, "--scope", "python.*", "--amount", "1", "--amount-micros", "1") == 2
    assert run(*common, "--scope", "python.*", "--amount", "0.0000001") == 2
    assert run(*common, "--scope", "python.*", "--amount", "1", "--ttl", "soon") == 2
    assert run(*common, "--scope", "Python", "--amount", "1") == 2
    assert "scope 'Python'" in capsys.readouterr().err
    assert run("issue", "--key", tmp_path / "missing.key", "--audience", alice.did,
               "--scope", "a", "--amount", "1", "--out", tmp_path / "t.json") == 2  # fmt: skip
    assert "no key file" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "something-else", "chain": []}))
    assert run("inspect", "--token", bad) == 2
    assert "not a token file" in capsys.readouterr().err
    bad.write_text(json.dumps({"type": CHAIN_FILE_TYPE, "chain": ["zz"]}))
    assert run("inspect", "--token", bad) == 2
    assert "link 1 is not a hex string" in capsys.readouterr().err
    bad.write_text(json.dumps({"type": CHAIN_FILE_TYPE, "chain": ["c0"]}))
    assert run("inspect", "--token", bad) == 2
    assert "link 1 is not a token" in capsys.readouterr().err
    assert run("inspect", "--token", tmp_path / "nothing.json") == 2
    assert "cannot read token file" in capsys.readouterr().err


def test_expired_chain_is_reported_invalid(
    keys: dict[str, tuple[Identity, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crankmesh.cli._token_cmds import write_chain_file
    from crankmesh.protocol.tokens import issue

    treasury, _ = keys["treasury"]
    alice, _ = keys["alice"]
    env = issue(treasury, audience=alice.did, scope="*", amount=1, now_ms=1_000, ttl_ms=1_000)
    path = write_chain_file(tmp_path / "old.json", [env])
    assert cmd_token_inspect(argparse.Namespace(token=str(path), json=False)) == 1
    assert "INVALID: link 1: expired" in capsys.readouterr().out
    with pytest.raises(TokenInvalid):
        verify_chain(read_chain_file(path), now_ms=3_000)


@pytest.mark.parametrize(
    ("text", "micros"),
    [("1.50", 1_500_000), ("0", 0), ("3", 3_000_000), ("0.000001", 1), ("1e2", 100_000_000)],
)
def test_parse_amount(text: str, micros: int) -> None:
    assert parse_amount(text) == micros


@pytest.mark.parametrize("text", ["-1", "abc", "0.0000001", "nan", "inf", ""])
def test_parse_amount_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_amount(text)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("90s", 90_000),
        ("15m", 900_000),
        ("1h", 3_600_000),
        ("7d", 604_800_000),
        ("500ms", 500),
        ("30", 30_000),
    ],
)
def test_parse_ttl(text: str, ms: int) -> None:
    assert parse_ttl(text) == ms


@pytest.mark.parametrize("text", ["0s", "1w", "h", "-1h", "1.5h", ""])
def test_parse_ttl_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)
