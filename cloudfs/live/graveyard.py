"""The graveyard: where files the sealed state still has to read live on after their last name goes.

A hidden directory `.cloudfs-graveyard` at SOURCE's root, on the same filesystem,
so a file can be kept alive by a hard link (O(1), whatever its size) instead of
a copy or a descriptor. The FUSE handlers link an inode here, named by its
inode number, just before they remove its last name while a snapshot in flight
still has to read it; the snapshot's reader opens it from here; the entries are
removed when that snapshot is committed or abandoned, and at every mount.

The name is reserved at SOURCE's root: lookups and listings through the mount
never show it, nothing can be created under that name, and the scans of the
tree (manifest, reconcile, the capture at a seal) leave it out. Rules: only the
trio thread calls these methods; the directory's descriptor is O_PATH.
"""

from __future__ import annotations

import errno
import logging
import os

from cloudfs.snapshot.source import GRAVEYARD_NAME

log = logging.getLogger(__name__)

NAME = GRAVEYARD_NAME

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def is_graveyard(parent_path: bytes, name: bytes) -> bool:
    """True for the reserved name at the root of the protected tree."""
    return name == NAME and not parent_path


class Graveyard:
    """The hidden directory of one protected tree (`root_fd` is SOURCE's descriptor)."""

    def __init__(self, root_fd: int):
        self.root_fd = root_fd
        self._fd = -1
        #: Inodes linked here since the last clear().
        self.kept: set[int] = set()

    def _directory(self) -> int:
        if self._fd < 0:
            try:
                os.mkdir(NAME, 0o700, dir_fd=self.root_fd)
            except FileExistsError:
                pass
            self._fd = os.open(NAME, _DIR_FLAGS, dir_fd=self.root_fd)
        return self._fd

    def keep(self, parent_fd: int, name: bytes, ino: int) -> bool:
        """Hard-link `name` (in `parent_fd`), inode `ino`, here before its last name is
        removed; False if it was here already. Raises OSError if it cannot be kept
        (the caller gives up the snapshot)."""
        try:
            os.link(name, b"%d" % ino, src_dir_fd=parent_fd, dst_dir_fd=self._directory(),
                    follow_symlinks=False)
        except FileExistsError:
            return False  # kept already (it was nameless, got a name again, and loses it again)
        self.kept.add(ino)
        return True

    def release(self, ino: int) -> None:
        """Undo `keep` (the removal it prepared for failed)."""
        self.kept.discard(ino)
        try:
            os.unlink(b"%d" % ino, dir_fd=self._directory())
        except FileNotFoundError:
            pass

    def open(self, ino: int, flags: int) -> int:
        """A descriptor of kept inode `ino`; FileNotFoundError if it is not here."""
        if ino not in self.kept:
            raise FileNotFoundError(errno.ENOENT, "not in the graveyard", ino)
        return os.open(b"%d" % ino, flags | os.O_NOFOLLOW, dir_fd=self._directory())

    def clear(self) -> None:
        """Remove every entry (their snapshot is committed or abandoned)."""
        self.kept.clear()
        if self._fd < 0 and not self._exists():
            return
        listing = os.open(NAME, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=self.root_fd)
        try:
            for entry in os.listdir(listing):
                try:
                    os.unlink(entry, dir_fd=listing)
                except FileNotFoundError:
                    pass
        finally:
            os.close(listing)

    def _exists(self) -> bool:
        try:
            os.stat(NAME, dir_fd=self.root_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def clear_leftovers(root_fd: int) -> None:
    """Empty a graveyard left by a daemon that died (called before serving)."""
    graveyard = Graveyard(root_fd)
    try:
        graveyard.clear()
    except OSError as error:
        log.warning("cannot empty %s: %s", NAME.decode(), error)
    finally:
        graveyard.close()
