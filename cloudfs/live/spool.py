"""The spool: a bounded, append-only file in the state directory holding preserved bytes.

Copy-on-write copies the sealed content of a block here before a write, truncate
or O_TRUNC open destroys it; the snapshot being built reads it back. Nothing in
it needs to survive a crash (an interrupted snapshot is built again from a fresh
seal), so it is never fsynced and is deleted at every mount.

Rules: `append` and `clear` run on the trio thread only; `read` may run in any
thread (pread of bytes that `append` wrote before publishing their place).
"""

from __future__ import annotations

import os
from pathlib import Path

SPOOL_NAME = "spool"


class SpoolFull(Exception):
    """The spool cannot take more: the snapshot in flight is given up."""


class Spool:
    def __init__(self, directory: Path, limit: int):
        self.path = Path(directory) / SPOOL_NAME
        self.limit = limit
        self.used = 0
        self._fd = -1

    def append(self, data) -> int:
        """Store `data`; return its offset. SpoolFull if it would pass the limit,
        OSError if the disk refuses."""
        if self.used + len(data) > self.limit:
            raise SpoolFull(f"the spool is full ({self.used} of {self.limit} bytes used)")
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        offset = self.used
        view = memoryview(data)
        position = offset
        while view:
            written = os.pwrite(self._fd, view, position)
            view = view[written:]
            position += written
        self.used += len(data)
        return offset

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def clear(self) -> None:
        """Forget everything (its snapshot is committed or abandoned)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)
        self.used = 0
