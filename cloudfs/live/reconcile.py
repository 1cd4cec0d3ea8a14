"""Reconcile (I7): find the changes the journal cannot know about.

Run on every mount before serving, and by `cloudfs changes`: compare a fresh scan of
SOURCE with the baseline manifest, and the journal's dirty inodes with the stats
they had when the last session stopped. What the comparison turns up is returned
as a ChangeSet for the caller to journal like any other change. The rules err on
the side of re-reading: a missed change is data loss, an extra one costs a read.
"""

from __future__ import annotations

import stat

from cloudfs.live.changes import ChangeSet
from cloudfs.live.manifest import EntryStat, Tree, parent_of
from cloudfs.live.records import FinalStat


def reconcile(current: Tree, baseline: Tree, pending: ChangeSet, *,
              clean_stop: bool, finals: dict[int, FinalStat]) -> ChangeSet:
    """Changes present in `current` that neither `baseline` nor `pending` explains.

    - A name that is new, gone, or now another inode or type: its parent directory
      is marked (`dirs`), so the change view lists it as added or removed.
    - An inode the journal does not mention: compared with the baseline.
    - An inode the journal mentions, after a clean stop: compared with its final
      stat from the clean-stop record; any difference means it was also edited while
      unmounted, so it is re-read (`whole`).
    - After an unclean stop (kill -9, power loss) the last records may be lost, so
      every journaled file is re-read and every journaled directory relisted.
    """
    found = ChangeSet()
    for path, now in current.entries.items():
        before = baseline.get(path)
        if before is None or before.ino != now.ino or before.kind != now.kind:
            _mark_name_changed(found, current, path, now)
        elif not pending.touches(now.ino):
            _compare(found, before, now)
        elif not clean_stop:
            _distrust(found, now)
        elif now.ino in finals:
            final = finals[now.ino]
            if (now.size, now.mtime_ns, now.ctime_ns) != tuple(final):
                _distrust(found, now)
        else:
            _compare(found, before, now)
    for path in baseline.entries:
        if path not in current.entries:
            parent = current.get(parent_of(path))
            if path and parent is not None and parent.is_dir:
                found.mark_dir(parent.ino)
    return found


def _mark_name_changed(found: ChangeSet, current: Tree, path: bytes, now: EntryStat) -> None:
    if path:
        found.mark_dir(current.get(parent_of(path)).ino)
    else:  # SOURCE itself is another directory now
        found.mark_dir(now.ino)
        found.mark_meta(now.ino)


def _compare(found: ChangeSet, before: EntryStat, now: EntryStat) -> None:
    """Classify the difference between the baseline's stat and the current one."""
    if (before.size, before.mtime_ns, before.ctime_ns) == (now.size, now.mtime_ns, now.ctime_ns):
        return
    if now.is_dir:
        found.mark_dir(now.ino)
        found.mark_meta(now.ino)
    elif not stat.S_ISREG(now.mode):
        found.mark_whole(now.ino)
    elif (before.size, before.mtime_ns) != (now.size, now.mtime_ns):
        found.mark_whole(now.ino)
    elif (before.mode, before.uid, before.gid, before.nlink) != (now.mode, now.uid, now.gid, now.nlink):
        found.mark_meta(now.ino)
    else:
        # Only ctime moved: an xattr, or content rewritten with its mtime put back
        # (tar, rsync -t do that). Indistinguishable, so re-read.
        found.mark_whole(now.ino)


def _distrust(found: ChangeSet, now: EntryStat) -> None:
    if now.is_dir:
        found.mark_dir(now.ino)
        found.mark_meta(now.ino)
    else:
        found.mark_whole(now.ino)
