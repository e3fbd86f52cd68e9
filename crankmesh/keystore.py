"""Key files: one Ed25519 identity per file, created 0600, refused if others can read it.

Format (JSON, one object)::

    {"type": "crankmesh-ed25519-v1", "did": "did:key:z6Mk…", "seed": "<64 hex chars>"}

The DID is stored for humans and checked against the seed on load.

Error handling: every problem (missing file, bad JSON, wrong DID, unsafe mode)
raises :class:`~crankmesh.protocol.errors.KeystoreError` with the path and what
to do.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from pathlib import Path

from .protocol.errors import KeystoreError
from .protocol.identity import Identity

__all__ = [
    "KEY_TYPE",
    "check_key_directory",
    "default_key_path",
    "load_identity",
    "load_or_create_identity",
    "lock_state_dir",
    "save_identity",
]

KEY_TYPE = "crankmesh-ed25519-v1"


def default_key_path() -> Path:
    base = os.environ.get("CRANKMESH_HOME") or os.path.join(Path.home(), ".crankmesh")
    return Path(base) / "node.key"


def save_identity(
    identity: Identity, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``identity`` to ``path`` with mode 0600 (parent created 0700); refused in a
    directory group or others can write (:func:`check_key_directory`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_key_directory(p)
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | getattr(os, "O_NOFOLLOW", 0)  # never write a seed through a symlink
        | (os.O_TRUNC if overwrite else os.O_EXCL)
    )
    data = json.dumps({"type": KEY_TYPE, "did": identity.did, "seed": identity.seed.hex()})
    try:
        fd = os.open(p, flags, 0o600)
    except FileExistsError:
        raise KeystoreError(f"{p} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeystoreError(f"cannot create key file {p}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return p


def check_key_directory(path: str | os.PathLike[str]) -> None:
    """Refuse a key whose directory, or a directory above it, group or others can write.

    Whoever can write to a directory on the way can swap the key file (or a directory in
    its path) for their own, or read the seed through a link they plant. The one safe
    exception is a sticky directory (like ``/tmp``, mode 1777) whose next entry on the
    path belongs to this uid or to root: others cannot rename or remove it.

    Error handling: :class:`KeystoreError` naming the directory, its mode, and the fix.
    """
    p = Path(os.path.abspath(path))
    me = os.geteuid()
    child = p
    for directory in p.parents:
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            child = directory
            continue  # not created yet: its parent is what matters
        except OSError as exc:
            msg = f"cannot check the directory {directory} of key file {p}: {exc.strerror}"
            raise KeystoreError(msg) from exc
        try:
            child_uid = os.lstat(child).st_uid
        except OSError:
            child_uid = me  # to be created by us
        if st.st_mode & 0o022:
            sticky_safe = st.st_mode & stat.S_ISVTX and child_uid in (me, 0)
            if not sticky_safe:
                raise KeystoreError(
                    f"key file {p} is in {directory}, which has mode "
                    f"{stat.S_IMODE(st.st_mode):04o}: group or others can write there and "
                    f"replace the key; run `chmod go-w {directory}` or keep the key in a "
                    "directory only its owner can write (e.g. mode 0700)"
                )
        child = directory


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Load a key file, refusing one that group or others can read or write, or that lies
    in a directory group or others can write (:func:`check_key_directory`)."""
    p = Path(path)
    check_key_directory(p)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KeystoreError(
            f"no key file at {p}; create one with `crankmesh identity new --out {p}`"
        ) from None
    except OSError as exc:
        raise KeystoreError(f"cannot open key file {p}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeystoreError(f"{p} is not a regular file")
        if st.st_mode & 0o077:
            raise KeystoreError(
                f"key file {p} has mode {stat.S_IMODE(st.st_mode):04o}; it must not be "
                f"accessible by group or others (run `chmod 600 {p}`)"
            )
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw)
        if doc.get("type") != KEY_TYPE:
            raise ValueError(f"unknown key type {doc.get('type')!r}")
        identity = Identity.from_seed(bytes.fromhex(doc["seed"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeystoreError(f"{p} is not a crankmesh key file: {exc}") from None
    if doc.get("did") not in (None, identity.did):
        raise KeystoreError(f"{p}: stored DID {doc['did']} does not match the key")
    return identity


def load_or_create_identity(path: str | os.PathLike[str]) -> Identity:
    """Load the key at ``path``, creating a new one there if none exists."""
    p = Path(path)
    if p.exists():
        return load_identity(p)
    identity = Identity.generate()
    save_identity(identity, p)
    return identity


def lock_state_dir(directory: str | os.PathLike[str]) -> int:
    """Claim ``directory`` (a node's state: receipt chain head, spill file) for this node.

    Holds an exclusive ``flock`` on ``<directory>/node.lock`` and returns its descriptor;
    closing it (or the process ending) releases the claim.  Two running nodes sharing one
    state directory -- typically two ``crankmesh node`` processes started with the same
    default key -- would share one identity and one receipt chain: their assignments would
    reach the wrong process, and their receipts would fork the chain, which auditors
    rightly read as equivocation.

    Error handling: :class:`KeystoreError`, naming the holder's pid, when another node
    (in any process, this one included) holds the directory.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / "node.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            holder = ""
        os.close(fd)
        raise KeystoreError(
            f"state directory {d} is in use by another running node"
            + (f" (pid {holder})" if holder.isdigit() else "")
            + "; nodes sharing it would share one identity and fork one receipt chain. "
            "Give each node its own key and directory (--key DIR/node.key)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
