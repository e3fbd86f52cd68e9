"""Key files: created 0600, refused when unsafe, malformed or mismatched."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from crankmesh.keystore import (
    KEY_TYPE,
    default_key_path,
    load_identity,
    load_or_create_identity,
    save_identity,
)
from crankmesh.protocol.errors import KeystoreError
from crankmesh.protocol.identity import Identity

IDENT = Identity.from_seed(bytes(range(32)))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_key_file(path: Path, content: str | bytes, file_mode: int = 0o600) -> Path:
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    path.chmod(file_mode)
    return path


def test_round_trip_and_mode(tmp_path: Path) -> None:
    path = save_identity(IDENT, tmp_path / "node.key")
    assert mode(path) == 0o600
    loaded = load_identity(path)
    assert loaded.did == IDENT.did
    assert loaded.seed == IDENT.seed
    doc = json.loads(path.read_text())
    assert doc == {"type": KEY_TYPE, "did": IDENT.did, "seed": IDENT.seed.hex()}


def test_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = save_identity(IDENT, tmp_path / "node.key")
    finally:
        os.umask(old)
    assert mode(path) == 0o600


def test_parent_directory_is_created_private(tmp_path: Path) -> None:
    path = save_identity(IDENT, tmp_path / "home" / "node.key")
    assert mode(path.parent) & 0o077 == 0


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = save_identity(IDENT, tmp_path / "node.key")
    other = Identity.from_seed(bytes(32))
    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        save_identity(other, path)
    assert load_identity(path).did == IDENT.did
    save_identity(other, path, overwrite=True)
    assert load_identity(path).did == other.did
    assert mode(path) == 0o600


def test_overwrite_tightens_a_loose_mode(tmp_path: Path) -> None:
    path = save_identity(IDENT, tmp_path / "node.key")
    path.chmod(0o644)
    save_identity(IDENT, path, overwrite=True)
    assert mode(path) == 0o600


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o700 | 0o007])
def test_loose_permissions_are_refused(tmp_path: Path, file_mode: int) -> None:
    path = save_identity(IDENT, tmp_path / "node.key")
    path.chmod(file_mode)
    with pytest.raises(KeystoreError, match="chmod 600") as info:
        load_identity(path)
    assert str(path) in str(info.value)


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    path = save_identity(IDENT, tmp_path / "node.key")
    path.chmod(0o400)
    assert load_identity(path).did == IDENT.did


def test_symlink_is_refused(tmp_path: Path) -> None:
    real = save_identity(IDENT, tmp_path / "real.key")
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(KeystoreError):
        load_identity(link)


def test_save_does_not_follow_a_symlink_to_create(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.key"
    link = tmp_path / "node.key"
    link.symlink_to(target)  # dangling
    with pytest.raises(KeystoreError):
        save_identity(IDENT, link)
    assert not target.exists()


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="crankmesh identity new"):
        load_identity(tmp_path / "absent.key")


def test_directory_is_not_a_key_file(tmp_path: Path) -> None:
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeystoreError):
        load_identity(directory)


GOOD = {"type": KEY_TYPE, "did": IDENT.did, "seed": IDENT.seed.hex()}


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "{",
        b"\xff\xfe",
        "[]",
        '"a string"',
        "null",
        json.dumps({**GOOD, "type": "other-key-v1"}),
        json.dumps({k: v for k, v in GOOD.items() if k != "type"}),
        json.dumps({k: v for k, v in GOOD.items() if k != "seed"}),
        json.dumps({**GOOD, "seed": "zz" * 32}),
        json.dumps({**GOOD, "seed": "00" * 31}),
        json.dumps({**GOOD, "seed": 12}),
        json.dumps({**GOOD, "seed": None}),
        json.dumps({**GOOD, "did": Identity.from_seed(bytes(32)).did}),
        json.dumps({**GOOD, "did": "did:key:zbogus"}),
        json.dumps({**GOOD, "did": 5}),
    ],
)
def test_malformed_key_files_are_refused(tmp_path: Path, content: str | bytes) -> None:
    path = write_key_file(tmp_path / "node.key", content)
    with pytest.raises(KeystoreError):
        load_identity(path)


def test_did_is_optional_in_the_file(tmp_path: Path) -> None:
    doc = {"type": KEY_TYPE, "seed": IDENT.seed.hex()}
    path = write_key_file(tmp_path / "node.key", json.dumps(doc))
    assert load_identity(path).did == IDENT.did


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "node.key"
    first = load_or_create_identity(path)
    assert mode(path) == 0o600
    again = load_or_create_identity(path)
    assert again.did == first.did


def test_default_key_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CRANKMESH_HOME", str(tmp_path))
    assert default_key_path() == tmp_path / "node.key"
    monkeypatch.delenv("CRANKMESH_HOME")
    assert default_key_path() == Path.home() / ".crankmesh" / "node.key"


@pytest.mark.parametrize("dir_mode", [0o777, 0o770, 0o722, 0o757])
def test_key_in_a_directory_others_can_write_is_refused(tmp_path: Path, dir_mode: int) -> None:
    folder = tmp_path / "keys"
    path = save_identity(IDENT, folder / "node.key")
    folder.chmod(dir_mode)
    try:
        with pytest.raises(KeystoreError, match="group or others can write") as info:
            load_identity(path)
        assert str(folder) in str(info.value) and f"{dir_mode:04o}" in str(info.value)
        with pytest.raises(KeystoreError, match="chmod go-w"):
            save_identity(IDENT, folder / "other.key")
        assert not (folder / "other.key").exists()
    finally:
        folder.chmod(0o700)


def test_key_below_a_writable_ancestor_is_refused(tmp_path: Path) -> None:
    outer = tmp_path / "shared"
    path = save_identity(IDENT, outer / "inner" / "node.key")
    outer.chmod(0o777)  # anyone can rename inner/ away and put their own in its place
    try:
        with pytest.raises(KeystoreError, match=str(outer)):
            load_identity(path)
    finally:
        outer.chmod(0o700)


def test_sticky_world_writable_directory_is_accepted_for_an_own_entry(tmp_path: Path) -> None:
    shared = tmp_path / "tmp-like"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: others cannot rename or remove what we own there
    path = save_identity(IDENT, shared / "node.key")
    assert load_identity(path).did == IDENT.did
    path.unlink()
    shared.chmod(0o0777)  # the same without the sticky bit: refused
    with pytest.raises(KeystoreError, match="0777"):
        save_identity(IDENT, shared / "node.key")
