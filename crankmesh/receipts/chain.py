"""The per-executor receipt hash chain: ``seq`` and ``prev`` of the next receipt.

The head (last sequence number and receipt CID) is persisted, when a path is
given, to a small JSON file written atomically (``os.replace``) before the
receipt is published, so a restarted executor continues its chain without a
gap or a fork.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..protocol.errors import KeystoreError

__all__ = ["ChainHead"]


class ChainHead:
    """Where an executor's receipt chain stands.

    Resource handling: the head file is rewritten on every :meth:`advance`.
    Error handling: a corrupt head file raises :class:`KeystoreError` at load
    (continuing from zero would fork the chain, so we refuse).
    """

    __slots__ = ("_path", "seq", "cid")

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self.seq = 0
        self.cid: str | None = None
        if self._path is not None and self._path.exists():
            try:
                doc = json.loads(self._path.read_text())
                self.seq = int(doc["seq"])
                self.cid = doc["cid"]
            except (ValueError, KeyError, TypeError) as exc:
                raise KeystoreError(
                    f"receipt chain head {self._path} is corrupt ({exc}); refusing to "
                    "start a new chain that would fork the old one"
                ) from None

    def next_links(self) -> tuple[int, str | None]:
        """``(seq, prev)`` for the next receipt."""
        return self.seq + 1, self.cid

    def advance(self, seq: int, cid: str) -> None:
        if seq != self.seq + 1:
            raise ValueError(f"chain must advance by one: head {self.seq}, got {seq}")
        if self._path is not None:
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"seq": seq, "cid": cid}))
            os.replace(tmp, self._path)
        self.seq, self.cid = seq, cid
