"""Reconcile (I7): find the changes the journal cannot know about.

Run on every mount before serving, and by `cloudfs changes`: compare a fresh scan of
SOURCE with the baseline manifest, and the journal's dirty inodes with the stats
they had when the last session stopped (`reconcile`). While mounted, the periodic
rescan compares the same way, but knows the journal's dirty inodes by when the
mount last changed them (`reconcile_mounted`). What the comparison turns up is
returned as a ChangeSet for the caller to journal like any other change. The rules
err on the side of re-reading: a missed change is data loss, an extra one costs a
read.
"""

from __future__ import annotations

import stat
from collections.abc import Callable

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
    def journaled(found: ChangeSet, before: EntryStat, now: EntryStat) -> None:
        if not clean_stop:
            _distrust(found, now)
        elif now.ino in finals:
            if (now.size, now.mtime_ns, now.ctime_ns) != tuple(finals[now.ino]):
                _distrust(found, now)
        else:
            _compare(found, before, now)

    return _against_baseline(current, baseline, pending, journaled)


def reconcile_mounted(current: Tree, baseline: Tree, pending: ChangeSet, *,
                      last_change_ns: Callable[[int], int | None], since_ns: int) -> ChangeSet:
    """Changes in `current` (scanned while mounted) that bypassed the mount.

    Like `reconcile` after a clean stop, except for inodes the journal mentions:
    their stat moved with the mount's own changes, so instead an inode whose ctime
    is later than the last change the mount recorded for it (`last_change_ns`, or
    `since_ns` — the session's start, when the mount's startup reconcile looked —
    for inodes journaled before) was also changed by someone else, and is
    re-read. An entry the journal does not know at a new name is also marked
    `whole`, as the mount marks what it creates, so the backlog counts it. Only what the journal does not
    already say is returned: a name change in a directory the journal will
    relist anyway is no news.
    """
    def journaled(found: ChangeSet, before: EntryStat, now: EntryStat) -> None:
        if now.ctime_ns > (last_change_ns(now.ino) or since_ns):
            _distrust(found, now)

    return _news(_against_baseline(current, baseline, pending, journaled, new_names_whole=True), pending)


def _against_baseline(current: Tree, baseline: Tree, pending: ChangeSet,
                      journaled: Callable[[ChangeSet, EntryStat, EntryStat], None], *,
                      new_names_whole: bool = False) -> ChangeSet:
    """Names that changed; inodes the journal does not mention compared with the
    baseline; inodes it does mention judged by `journaled(found, before, now)`."""
    found = ChangeSet()
    for path, now in current.items():
        before = baseline.get(path)
        if before is None or before.ino != now.ino or before.kind != now.kind:
            _mark_name_changed(found, current, path, now)
            if new_names_whole and path and not pending.touches(now.ino):
                found.mark_whole(now.ino)     # not created or moved through the mount
        elif not pending.touches(now.ino):
            _compare(found, before, now)
        else:
            journaled(found, before, now)
    for path in baseline.entries:
        if path not in current.entries:
            parent = current.get(parent_of(path))
            if path and parent is not None and parent.is_dir:
                found.mark_dir(parent.ino)
    return found


def _news(found: ChangeSet, pending: ChangeSet) -> ChangeSet:
    """What `found` says that `pending` does not."""
    news = ChangeSet()
    news.whole = found.whole - pending.whole
    news.meta = found.meta - pending.meta - pending.whole
    news.dirs = found.dirs - pending.dirs
    return news


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
