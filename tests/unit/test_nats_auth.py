"""Per-identity NATS permissions: nkeys derived from DIDs, allow-lists per role, the CLI."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import nkeys
import pytest

from crankmesh.keystore import save_identity
from crankmesh.nats_auth import (
    ROLES,
    authorization_block,
    main,
    nkey_seed,
    permissions,
    server_config,
    user_nkey,
)
from crankmesh.protocol.errors import InvalidDID
from crankmesh.protocol.identity import Identity

A = Identity.from_seed(bytes(32))
B = Identity.from_seed(bytes([1]) * 32)


def test_the_user_nkey_is_the_dids_key_and_the_seed_its_identity_seed() -> None:
    kp = nkeys.from_seed(nkey_seed(A).encode())
    assert kp.public_key.decode() == user_nkey(A.did)
    assert user_nkey(A.did).startswith("U") and nkey_seed(A).startswith("SU")
    assert user_nkey(A.did) != user_nkey(B.did)
    with pytest.raises(InvalidDID):
        user_nkey("did:key:nope")


def test_a_node_publishes_audit_records_under_its_own_id_only() -> None:
    allow = permissions("node", A.did, federation="f")["publish"]["allow"]
    for area in ("receipts", "bids", "settlements", "tokens"):
        assert f"crank.f.{area}.{A.node_id}" in allow
        assert f"crank.f.{area}.{B.node_id}" not in allow
        assert not any(
            p.startswith(f"crank.f.{area}.") and p != f"crank.f.{area}.{A.node_id}" for p in allow
        )
    assert "crank.f.jobs.*.bids" in allow and "crank.f.nodes.adverts" in allow
    assert not any(p.startswith("_INBOX") or p == ">" for p in allow)  # replies: allow_responses
    assert "$JS.API.STREAM.CREATE.CRANKMESH_F" in allow
    assert not any("DELETE" in p or "PURGE" in p or "UPDATE" in p for p in allow)


def test_a_node_puts_its_own_directory_key_only_and_may_sample_announces() -> None:
    allow = permissions("node", A.did, federation="f")["publish"]["allow"]
    assert f"$KV.crank_f_directory.{A.node_id}" in allow
    assert not any(p.startswith("$KV.") and not p.endswith(A.node_id) for p in allow)
    assert "$JS.API.CONSUMER.CREATE.KV_crank_f_directory.>" in allow  # it may watch
    assert "crank.f.nodes.*.announce" in allow
    orig = permissions("originator", B.did, federation="f")["publish"]["allow"]
    assert not any(p.startswith("$KV.") for p in orig)  # watches, never puts
    assert "$JS.API.STREAM.INFO.KV_crank_f_directory" in orig


def test_a_node_subscribes_to_its_own_assignments_only() -> None:
    perms = permissions("node", A.did, federation="f")
    sub = perms["subscribe"]["allow"]
    assert f"crank.f.jobs.*.assignment.{A.node_id}" in sub
    assert not any(p.endswith("assignment.*") or p.endswith(".>") and "jobs.*" in p for p in sub)
    assert perms["allow_responses"] is True


def test_originator_and_auditor_roles_are_narrower() -> None:
    orig = permissions("originator", A.did)["publish"]["allow"]
    assert "crank.default.jobs.*.bids" not in orig and "crank.default.nodes.adverts" not in orig
    assert f"crank.default.receipts.{A.node_id}" not in orig
    assert f"crank.default.settlements.{A.node_id}" in orig
    audit = permissions("auditor", A.did)["publish"]["allow"]
    assert not any(p.startswith("crank.") for p in audit)
    assert "$JS.API.CONSUMER.MSG.NEXT.CRANKMESH_DEFAULT.>" in audit
    assert permissions("admin", A.did)["publish"]["allow"] == [">"]


def test_unknown_roles_duplicates_and_empty_member_lists_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        permissions("root", A.did)
    with pytest.raises(ValueError, match="unknown role"):
        authorization_block({"root": [A.did]})
    with pytest.raises(ValueError, match="give one role"):
        authorization_block({"node": [A.did], "admin": [A.did]})
    with pytest.raises(ValueError, match="no members"):
        authorization_block({"node": []})
    with pytest.raises(ValueError, match="federation"):
        permissions("node", A.did, federation="a.b")
    assert set(ROLES) == {"node", "originator", "auditor", "admin"}


def test_the_block_lists_one_nkey_user_per_did() -> None:
    body = authorization_block({"node": [A.did], "auditor": [B.did]}, federation="demo")
    users = json.loads(body.removeprefix("users: "))
    assert [u["nkey"] for u in users] == [user_nkey(A.did), user_nkey(B.did)]
    assert users[0]["permissions"] == permissions("node", A.did, federation="demo")
    text = server_config({"node": [A.did]}, federation="demo", extra="max_payload: 8MB")
    assert text.count("authorization {") == 1 and text.rstrip().endswith("max_payload: 8MB")


def test_cli_config_seed_and_nkey(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dids = tmp_path / "nodes.txt"
    dids.write_text(f"# members\n{A.did}\n\n{B.did}  # second\n")
    out = tmp_path / "auth.conf"
    assert main(["config", "--federation", "demo", "--node", f"@{dids}", "--out", str(out)]) == 0
    text = out.read_text()
    assert user_nkey(A.did) in text and user_nkey(B.did) in text and "crank.demo." in text
    key = tmp_path / "node.key"
    save_identity(A, key)
    seed = tmp_path / "node.nk"
    assert main(["seed", "--key", str(key), "--out", str(seed)]) == 0
    assert seed.read_text().strip() == nkey_seed(A)
    assert stat.S_IMODE(seed.stat().st_mode) == 0o600
    capsys.readouterr()
    assert main(["seed", "--key", str(key), "--out", str(seed)]) == 2  # no silent overwrite
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["seed", "--key", str(key), "--out", str(seed), "--force"]) == 0
    assert main(["nkey", A.did]) == 0
    assert capsys.readouterr().out.strip().endswith(user_nkey(A.did))
    assert main(["config", "--node", "did:key:bad"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
