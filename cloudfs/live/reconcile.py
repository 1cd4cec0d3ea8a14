"""Reconcile (I7): find the changes the journal cannot know about.

Run on every mount before serving, and by `cloudfs changes`: compare a walk of
SOURCE with the baseline manifest, and the journal's dirty inodes with the stats
they had when the last session stopped (`reconcile`). While mounted, the periodic
rescan compares the same way, but knows the journal's dirty inodes by when the
mount last changed them (`reconcile_mounted`). What the comparison turns up is
returned as a ChangeSet for the caller to journal like any other change. The rules
err on the side of re-reading: a missed change is data loss, an extra one costs a
read.

Both stream: each directory of the walk is compared with the manifest's listing
of the same path and then forgotten, so memory does not grow with the tree. An
entry whose packed stat equals the manifest's and that the journal does not
mention costs one bytes comparison.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cloudfs.live.changes import ChangeSet
from cloudfs.live.manifest import Manifest
from cloudfs.live.records import FinalStat
from cloudfs.live.scan import EntryStat, Listing, join, unpack_stat

_INO = struct.Struct("<4xQ")

Judge = Callable[[ChangeSet, EntryStat, EntryStat], None]


@dataclass
class Findings:
    """What a comparison found, and what it saw on the way."""

    changes: ChangeSet = field(default_factory=ChangeSet)
    entries: int = 0                                            # entries walked
    stats: dict[int, FinalStat] = field(default_factory=dict)   # now, of the inodes asked for
    paths: dict[int, bytes] = field(default_factory=dict)       # a path of each inode marked whole


def reconcile(listings: Iterable[Listing], baseline: Manifest, pending: ChangeSet, *,
              clean_stop: bool, finals: dict[int, FinalStat], stats_of: set[int] = frozenset(),
              since_ns: int | None = None) -> Findings:
    """Changes in the walked tree that neither `baseline` nor `pending` explains.

    - A name that is new, gone, or now another inode or type: its parent directory
      is marked (`dirs`), so the change view lists it as added or removed.
    - An inode the journal does not mention: compared with the baseline.
    - An inode the journal mentions, after a clean stop: compared with its final
      stat from the clean-stop record; any difference means it was also edited while
      unmounted, so it is re-read (`whole`).
    - After an unclean stop (kill -9, power loss) the last records may be lost, so
      every journaled file is re-read and every journaled directory relisted.

    `stats_of`: inodes whose current stat to return (besides every inode found).
    `since_ns`: the walk runs while the mount serves, and began then; an entry
    whose ctime is not older was changed during it (by the mount or anyone else)
    and is re-read whatever the rules above say (startup.py has why).
    """
    def journaled(found: ChangeSet, before: EntryStat, now: EntryStat) -> None:
        if not clean_stop:
            _distrust(found, now)
        elif now.ino in finals:
            if (now.size, now.mtime_ns, now.ctime_ns) != tuple(finals[now.ino]):
                _distrust(found, now)
        else:
            _compare(found, before, now)

    return _Comparison(baseline, pending, journaled, stats_of=stats_of, since_ns=since_ns).run(listings)


def reconcile_mounted(listings: Iterable[Listing], baseline: Manifest, pending: ChangeSet, *,
                      last_change_ns: Callable[[int], int | None], since_ns: int) -> Findings:
    """Changes in the tree (walked while mounted) that bypassed the mount.

    Like `reconcile` after a clean stop, except for inodes the journal mentions:
    their stat moved with the mount's own changes, so instead an inode whose ctime
    is later than the last change the mount recorded for it (`last_change_ns`, or
    `since_ns` — the session's start, when the mount's startup reconcile looked —
    for inodes journaled before) was also changed by someone else, and is
    re-read. An entry the journal does not know at a new name is also marked
    `whole`, as the mount marks what it creates, so the backlog counts it. Only
    what the journal does not already say is returned: a name change in a
    directory the journal will relist anyway is no news.
    """
    def journaled(found: ChangeSet, before: EntryStat, now: EntryStat) -> None:
        if now.ctime_ns > (last_change_ns(now.ino) or since_ns):
            _distrust(found, now)

    findings = _Comparison(baseline, pending, journaled, new_names_whole=True).run(listings)
    findings.changes = news(findings.changes, pending)
    findings.paths = {ino: path for ino, path in findings.paths.items() if ino in findings.changes.whole}
    return findings


class _Comparison:
    """One walk against the baseline: names that changed; inodes the journal does not
    mention compared with the baseline; inodes it does mention judged by `journaled`."""

    def __init__(self, baseline: Manifest, pending: ChangeSet, journaled: Judge, *,
                 new_names_whole: bool = False, stats_of: set[int] = frozenset(),
                 since_ns: int | None = None):
        self.baseline = baseline
        self.pending = pending
        self.mentioned = pending.inodes()
        self.journaled = journaled
        self.new_names_whole = new_names_whole
        self.stats_of = stats_of
        self.since_ns = since_ns
        self.findings = Findings()

    def run(self, listings: Iterable[Listing]) -> Findings:
        with self.baseline.reading():
            for listing in listings:
                self._directory(listing)
        return self.findings

    def _directory(self, listing: Listing) -> None:
        directory = _INO.unpack_from(listing.stat)[0]
        before = self.baseline.listing(listing.path)
        if not listing.path:
            self._entry(b"", None, self.baseline.packed(b""), listing.stat)
        for name, packed in listing.entries.items():
            self._entry(join(listing.path, name), directory, before.get(name), packed)
        self.findings.entries += len(listing.entries) + (not listing.path)
        if before.keys() - listing.entries.keys():
            self.findings.changes.mark_dir(directory)   # something was removed from it
        if self.findings.changes.touches(directory):
            self._remember_stat(directory, listing.stat)

    def _entry(self, path: bytes, directory: int | None, old: bytes | None, packed: bytes) -> None:
        ino = _INO.unpack_from(packed)[0]
        if ino in self.stats_of:
            self._remember_stat(ino, packed)
        if old == packed and ino not in self.mentioned:
            return
        found = self.findings.changes
        now = unpack_stat(packed)
        before = unpack_stat(old) if old is not None else None
        if before is None or before.ino != now.ino or before.kind != now.kind:
            _mark_name_changed(found, directory, now)
            if self.new_names_whole and path and not self.pending.touches(now.ino):
                found.mark_whole(now.ino)     # not created or moved through the mount
        elif self.since_ns is not None and now.ctime_ns >= self.since_ns:
            _distrust(found, now)             # changed while this walk ran
        elif ino not in self.mentioned:
            _compare(found, before, now)
        else:
            self.journaled(found, before, now)
        if ino in found.whole:
            self.findings.paths.setdefault(ino, path)
        if found.touches(ino):
            self._remember_stat(ino, packed)

    def _remember_stat(self, ino: int, packed: bytes) -> None:
        if ino not in self.findings.stats:
            now = unpack_stat(packed)
            self.findings.stats[ino] = FinalStat(now.size, now.mtime_ns, now.ctime_ns)


def news(found: ChangeSet, pending: ChangeSet) -> ChangeSet:
    """What `found` says that `pending` does not."""
    news = ChangeSet()
    news.whole = found.whole - pending.whole
    news.meta = found.meta - pending.meta - pending.whole
    news.dirs = found.dirs - pending.dirs
    return news


def _mark_name_changed(found: ChangeSet, directory: int | None, now: EntryStat) -> None:
    if directory is not None:
        found.mark_dir(directory)
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
