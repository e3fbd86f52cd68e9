"""The node's state directory: checked writable before anything is started in it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .protocol.errors import StateDirError

__all__ = ["check_state_dir"]


def check_state_dir(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` if needed and prove it is writable (a probe file is created
    and removed); return it as a :class:`~pathlib.Path`.

    The node keeps its lock, receipt-chain head and record spill file there, so a
    read-only directory must stop it at start, with one clear sentence.

    Error handling: :class:`StateDirError` naming the directory and the OS's reason
    (read-only file system, permission denied, not a directory, ...).
    """
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".crankmesh-write-test-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StateDirError(
            f"state directory {d} is not writable ({reason}); the node keeps its lock and "
            "receipt chain there: point --state-dir / CRANKMESH_STATE_DIR (or --key) at a "
            "writable directory"
        ) from None
    return d
