"""Signed answers kept for idempotent re-delivery (RFC 0001 §10.4), bounded by bytes.

An executor answers a repeated Assignment of a finished job with the same Accept and
the same ReceiptDelivery for an hour. Holding every delivery in memory for that hour
cost +102.7 MB RSS for 100 results of 1 MB; :class:`ResultCache` keeps the most recent
ones in memory up to ``memory_bytes`` (least recently used first out) and moves the
rest to files in ``directory`` (the node's state dir) up to ``disk_bytes``; beyond
that, the oldest are forgotten (counted in :attr:`ResultCache.dropped`).

Resource handling: files are created under ``directory`` (made mode 0700) and removed
when their entry is discarded, forgotten or :meth:`clear`-ed; a new cache clears the
directory of files a previous process left (nothing can look them up any more).

Error handling: a file that cannot be written or read is logged once per cause and
the entry is forgotten; the cache never raises on a disk problem.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

__all__ = ["ResultCache"]

log = logging.getLogger("crankmesh.executor")

#: Defaults: 2 MiB in memory (a soak's steady state is reached in minutes), 1 GiB on disk.
DEFAULT_MEMORY_BYTES = 2 << 20
DEFAULT_DISK_BYTES = 1 << 30


class ResultCache:
    """``job CID → bytes``, most recent in memory, older on disk, all bounded by bytes."""

    def __init__(
        self,
        *,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        directory: str | os.PathLike[str] | None = None,
        disk_bytes: int = DEFAULT_DISK_BYTES,
    ) -> None:
        if memory_bytes < 0 or disk_bytes < 0:
            raise ValueError("memory_bytes and disk_bytes must be >= 0")
        self.memory_limit = memory_bytes
        self.disk_limit = disk_bytes if directory is not None else 0
        self._dir = Path(directory) if directory is not None else None
        self._mem: OrderedDict[str, bytes] = OrderedDict()
        self._disk: OrderedDict[str, int] = OrderedDict()  # job CID -> size, oldest first
        self.memory_bytes = 0
        self.disk_bytes = 0
        #: Entries forgotten because both bounds were full (or a file failed).
        self.dropped = 0
        self._warned: set[str] = set()
        if self._dir is not None:
            try:
                self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                for stale in self._dir.iterdir():
                    stale.unlink(missing_ok=True)
            except OSError as exc:
                self._warn("dir", f"results directory {self._dir} unusable ({exc}); memory only")
                self._dir = None
                self.disk_limit = 0

    def __len__(self) -> int:
        return len(self._mem) + len(self._disk)

    def __contains__(self, key: str) -> bool:
        return key in self._mem or key in self._disk

    @property
    def memory_entries(self) -> int:
        return len(self._mem)

    @property
    def disk_entries(self) -> int:
        return len(self._disk)

    def put(self, key: str, data: bytes) -> None:
        """Keep ``data`` under ``key`` (replacing what was there)."""
        self.discard(key)
        self._mem[key] = data
        self.memory_bytes += len(data)
        while self.memory_bytes > self.memory_limit and self._mem:
            old, blob = self._mem.popitem(last=False)
            self.memory_bytes -= len(blob)
            self._to_disk(old, blob)

    def get(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None if they were never kept or are forgotten."""
        blob = self._mem.get(key)
        if blob is not None:
            self._mem.move_to_end(key)
            return blob
        size = self._disk.get(key)
        if size is None or self._dir is None:
            return None
        try:
            return (self._dir / key).read_bytes()
        except OSError as exc:
            self._warn("read", f"result file for {key} unreadable ({exc}); forgotten")
            self._forget_file(key)
            self.dropped += 1
            return None

    def discard(self, key: str) -> None:
        blob = self._mem.pop(key, None)
        if blob is not None:
            self.memory_bytes -= len(blob)
        if key in self._disk:
            self._forget_file(key)

    def clear(self) -> None:
        for key in list(self._mem) + list(self._disk):
            self.discard(key)

    # ------------------------------------------------------------------ disk

    def _to_disk(self, key: str, blob: bytes) -> None:
        if self._dir is None or len(blob) > self.disk_limit:
            self.dropped += 1
            return
        while self.disk_bytes + len(blob) > self.disk_limit and self._disk:
            self._forget_file(next(iter(self._disk)))
            self.dropped += 1
        # No rename: a file cut short by a crash is never read (the directory is emptied
        # on start), and an entry is listed only once its file is complete.
        try:
            with open(self._dir / key, "wb", opener=lambda p, fl: os.open(p, fl, 0o600)) as f:
                f.write(blob)
        except OSError as exc:
            self._warn("write", f"result file for {key} not written ({exc}); forgotten")
            self.dropped += 1
            return
        self._disk[key] = len(blob)
        self.disk_bytes += len(blob)

    def _forget_file(self, key: str) -> None:
        size = self._disk.pop(key, 0)
        self.disk_bytes -= size
        if self._dir is not None:
            try:
                (self._dir / key).unlink(missing_ok=True)
            except OSError:
                pass

    def _warn(self, cause: str, text: str) -> None:
        if cause not in self._warned:
            self._warned.add(cause)
            log.warning("%s", text)
