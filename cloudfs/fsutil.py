"""Small durable-file helpers shared by the local store, caches and state files."""

from __future__ import annotations

import os
from pathlib import Path


def write_durably(path: Path, data, mode: int = 0o600) -> None:
    """Create `path` (it must not exist) with `data` (bytes-like, or an iterable of
    bytes-like pieces), and fsync it."""
    pieces = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(path: Path, mode: int = 0o700) -> None:
    """`path` and its missing parents, each created with `mode` (pathlib's
    `mkdir(parents=True)` gives the parents 0o777 minus the umask, which is 0 in
    the live mount's process)."""
    if path.is_dir():
        return
    if not path.parent.is_dir():
        make_directories(path.parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not path.is_dir():
            raise


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically replace `path` with `data`: temp file, fsync, rename, fsync dir."""
    temp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    temp.unlink(missing_ok=True)
    try:
        write_durably(temp, data, mode)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_directory(path.parent)
