"""Writing restored blocks to local files: consecutive blocks of a file in one
`pwritev`, a write that fails becomes one line (the restore stops there and
keeps what it wrote, for --resume)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from cloudfs.errors import CloudfsError

log = logging.getLogger(__name__)


class RestoreError(CloudfsError):
    """The local side of a restore failed (a file could not be created or finished)."""


class RunWriter:
    """Writes blocks, joining consecutive ones of a file into one pwritev of up
    to RUN_BYTES; keeps the current file open until another comes. Creates a
    file that is not there yet (the restorer leaves files whose blocks are all
    stored to be created by their writes)."""

    RUN_BYTES = 1 << 20

    def __init__(self):
        self.written = 0
        self._path: bytes | None = None
        self._fd = -1
        self._start = self._end = 0
        self._buffers: list = []

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        try:
            if kind is None:
                self._flush()
        finally:
            if self._fd >= 0:
                os.close(self._fd)

    def add(self, path: bytes, offset: int, data: bytes) -> None:
        if path != self._path or offset != self._end or self._end - self._start >= self.RUN_BYTES:
            self._flush()
            if path != self._path:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1
                try:
                    self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                except OSError as error:
                    raise RestoreError(_write_failure(path, error)) from None
                self._path = path
            self._start = self._end = offset
        self._buffers.append(data)
        self._end += len(data)

    def _flush(self) -> None:
        if self._buffers:
            try:
                self.written += _pwritev_all(self._fd, self._buffers, self._start)
            except OSError as error:
                raise RestoreError(_write_failure(self._path, error)) from None
            self._buffers = []

    def write_new_file(self, path: bytes, data: bytes, finish: Callable[[int], None]) -> None:
        """Create `path` (it must not exist), write `data` and `finish(fd)` it (its
        metadata) through the one descriptor, apart from the current run."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as error:
            raise RestoreError(_write_failure(path, error)) from None
        try:
            self.written += _pwritev_all(fd, [data], 0)
            finish(fd)
        except OSError as error:
            raise RestoreError(_write_failure(path, error)) from None
        finally:
            os.close(fd)


def _write_failure(path: bytes, error: OSError) -> str:
    """One line for a write to the target that failed; the restore stops there, and
    what it wrote is kept for --resume."""
    message = f"cannot write {os.fsdecode(path)}: {error.strerror}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        message += "; free some space, then run the same restore with --resume to finish it"
    return message


def _pwritev_all(fd: int, buffers: list, offset: int) -> int:
    """pwritev every buffer at `offset` (it may write less than asked, and takes
    at most IOV_MAX buffers at a time)."""
    done = 0
    for first in range(0, len(buffers), 512):
        group = buffers[first:first + 512]
        size = sum(len(buffer) for buffer in group)
        count = os.pwritev(fd, group, offset + done)
        if count < size:
            rest = b"".join(group)[count:]
            while rest:
                step = os.pwrite(fd, rest, offset + done + count)
                count += step
                rest = rest[step:]
        done += size
    return done


def remove(path: bytes) -> None:
    try:
        os.unlink(path)
    except OSError as error:
        if error.errno != errno.ENOENT:
            log.warning("cannot remove damaged %s: %s", os.fsdecode(path), error.strerror)
