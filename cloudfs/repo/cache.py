"""A local copy of write-once repository objects (index and snapshot objects).

Objects are kept exactly as stored, still sealed, and are authenticated again
each time they are opened, so the cache holds no plaintext and a damaged cache
file is caught like a damaged remote object. Names are unique and objects never
change, so a cached object never goes stale; one deleted from the store is
dropped from the cache when it is no longer listed.
"""

from __future__ import annotations

import os
from pathlib import Path

from cloudfs.fsutil import make_directories, replace_durably


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cloudfs"


class ObjectCache:
    def __init__(self, directory: Path | None):
        """`directory` None disables the cache (every method becomes a no-op)."""
        self.directory = directory

    def _path(self, name: str) -> Path:
        return self.directory.joinpath(*name.split("/"))

    def get(self, name: str) -> bytes | None:
        if self.directory is None:
            return None
        try:
            return self._path(name).read_bytes()
        except OSError:
            return None

    def put(self, name: str, data: bytes) -> None:
        if self.directory is None:
            return
        path = self._path(name)
        try:
            make_directories(path.parent)
            replace_durably(path, data)
        except OSError:
            pass   # a cache that cannot be written is only slower

    def names(self, prefix: str) -> list[str]:
        """The cached objects under `prefix` (e.g. "index/", "targets/"), sorted."""
        if self.directory is None:
            return []
        folder = self._path(prefix.rstrip("/"))
        try:
            return sorted(f"{prefix}{path.relative_to(folder).as_posix()}" for path in folder.rglob("*")
                          if path.is_file() and not path.name.startswith("."))
        except OSError:
            return []

    def keep_only(self, prefix: str, names: set[str]) -> None:
        """Forget cached objects under `prefix` that the store no longer lists."""
        if self.directory is None:
            return
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            if path.is_file() and f"{prefix}{path.name}" not in names:
                path.unlink(missing_ok=True)
