"""The change view: a ChangeSet (inodes) turned into paths, like `git status`.

Inodes become paths through a scan of the tree as it is now; what was removed comes
from the baseline manifest. Only places the change set names are looked at: the
listings of directories in `dirs` and the inodes in `data`/`whole`/`meta`. So the
view shows exactly what the journal knows, which is what the tests compare with
what really changed.
"""

from __future__ import annotations

from typing import NamedTuple

from cloudfs.live.changes import ChangeSet
from cloudfs.live.manifest import Manifest, join

ADDED, REMOVED, DATA, WHOLE, META = "added", "removed", "data", "whole", "meta"
_ORDER = {REMOVED: 0, ADDED: 1, WHOLE: 2, DATA: 3, META: 4}


class Change(NamedTuple):
    """One path and how it changed; `ranges` (clipped to the size) only for DATA."""

    path: bytes
    kind: str
    ranges: tuple[tuple[int, int], ...] = ()


def resolve(changes: ChangeSet, baseline: Manifest, current: Manifest) -> list[Change]:
    """The paths `changes` touches, sorted by path.

    A path that names another inode (or type) than in the baseline is reported as
    removed and added; everything below an added or removed directory is too.
    """
    added: set[bytes] = set()
    removed: set[bytes] = set()
    for ino in changes.dirs:
        for directory in _directory_paths(ino, baseline, current):
            names = set(current.children(directory)) | set(baseline.children(directory))
            for name in names:
                _compare_name(join(directory, name), baseline, current, added, removed)
    result = [Change(path, ADDED) for path in added]
    result += [Change(path, REMOVED) for path in removed]
    for ino in changes.inodes():
        kind = WHOLE if ino in changes.whole else DATA if ino in changes.data else META
        for path in current.paths_of(ino):
            if path in added:
                continue
            if kind == DATA:
                ranges = tuple(changes.data[ino].clipped(current.get(path).size))
                result.append(Change(path, DATA, ranges) if ranges else Change(path, META))
            else:
                result.append(Change(path, kind))
    result.sort(key=lambda change: (change.path, _ORDER[change.kind]))
    return result


def _directory_paths(ino: int, baseline: Manifest, current: Manifest) -> set[bytes]:
    paths = {path for path in current.paths_of(ino) if current.get(path).is_dir}
    paths |= {path for path in baseline.paths_of(ino) if baseline.get(path).is_dir}
    return paths


def _compare_name(path: bytes, baseline: Manifest, current: Manifest,
                  added: set[bytes], removed: set[bytes]) -> None:
    before, now = baseline.get(path), current.get(path)
    if before is not None and now is not None and before.ino == now.ino and before.kind == now.kind:
        return
    if before is not None:
        removed.update(baseline.subtree(path))
    if now is not None:
        added.update(current.subtree(path))


def display_path(path: bytes) -> str:
    """A path for people: "." for the root, undecodable bytes escaped."""
    return path.decode("utf-8", "backslashreplace") if path else "."
