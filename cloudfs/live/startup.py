"""Bringing the journal up to date when a mount starts (I7).

First mount: the tree as it is becomes the baseline manifest and the journal starts
empty. Every later mount: replay the journal (before the first request is served),
then walk SOURCE and journal whatever reconcile finds (changes made while
unmounted, records lost in a crash) *while the mount already serves*
(`StartupReconcile`): a remount of a million files is ready at once instead of
after a walk of several seconds. The snapshot daemon seals nothing until the
walk has been journaled, and a stop before then is not recorded as clean.

Serving during the walk is safe because every change made after the walk began
is judged by its ctime, which nobody can set back: an entry whose ctime is not
older than the walk's start (less a clock tick) is re-read whatever else its
stat says, whether the mount or anyone else changed it; anything older is
judged by the usual rules, against the baseline and the previous session's
final stats. An inode the mount moves out of the walk's way is new at its new
path, which the builder reads in full.

A manifest that is missing or damaged while a journal exists is rebuilt from a
walk, without a checkpoint: the next snapshot is then full (every file compared
by its stat with the newest snapshot; only what differs is read), so nothing
the lost manifest knew is missed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import trio

from cloudfs.errors import MountError
from cloudfs.live.journal import JOURNAL_NAME, Journal
from cloudfs.live.manifest import MANIFEST_NAME, Manifest, ManifestError
from cloudfs.live.reconcile import Findings, reconcile
from cloudfs.live.records import FinalStat, JournalFormatError
from cloudfs.live.scan import walk

log = logging.getLogger(__name__)

#: The kernel stamps ctimes from a coarse clock that may lag real time by a tick
#: (1-10 ms): a change made just after the walk began can carry a ctime a little
#: before it. Entries changed this long before the walk are re-read too.
CLOCK_MARGIN_NS = 50_000_000


def open_journal(state_dir: Path, source_fd: int, *,
                 empty_baseline: bool = False) -> tuple[Journal, StartupReconcile | None]:
    """The session's journal, replayed; and, unless this is the first mount, the
    reconcile still to run (`StartupReconcile.run`, once serving).

    A first mount's baseline is the tree as it is now; with `empty_baseline` it
    starts empty, because the first (full) snapshot's commit fills it: a second
    walk of a large tree saved. Until that commit the manifest describes no
    snapshot, so every seal is full, and a reconcile after a crash before it
    finds every name new, which relists every directory: nothing is missed."""
    baseline = _baseline(state_dir, source_fd)
    if baseline is None:
        entries = () if empty_baseline else walk(source_fd)
        Manifest.of_listings(state_dir / MANIFEST_NAME, entries).close()
        log.info("first mount: the tree as it is now is the baseline%s",
                 " (written by the first snapshot's commit)" if empty_baseline else "")
        return _open(state_dir), None
    journal = _open(state_dir)
    return journal, StartupReconcile(journal, baseline, source_fd)


class StartupReconcile:
    """The startup walk of one mount, run while it serves; `done` once journaled."""

    def __init__(self, journal: Journal, baseline: Manifest, source_fd: int):
        # Taken before the first request is served: what earlier sessions left.
        self.journal = journal
        self.baseline = baseline
        self.source_fd = source_fd
        self.pending = journal.pending()
        self.clean_stop = journal.previous_stop_clean
        self.finals = journal.previous_finals
        self.since_ns = time.time_ns() - CLOCK_MARGIN_NS
        self.done = trio.Event()
        self.findings: Findings | None = None

    async def run(self, last_seen: dict[int, FinalStat]) -> None:
        """Walk, compare and journal what was found (durably); then fill `last_seen`
        (the stats the clean-stop record needs) for dirty inodes nobody touched."""
        try:
            self.findings = await trio.to_thread.run_sync(self._compare, abandon_on_cancel=True)
        finally:
            self.baseline.close()
        found = self.findings.changes
        if found:
            how = "since the last clean stop" if self.clean_stop else "after an unclean stop"
            log.warning("reconcile: %d inodes changed %s", len(found.inodes()), how)
            self.journal.record_changes(found)
        await self.journal.sync()
        dirty = self.journal.pending().inodes()
        for ino, final in self.findings.stats.items():
            if ino in dirty:
                last_seen.setdefault(ino, final)
        self.done.set()

    def found_changes(self) -> bool:
        """Whether the walk found anything changed while unmounted (once `done`)."""
        return self.findings is not None and bool(self.findings.changes)

    def _compare(self) -> Findings:
        fd = os.dup(self.source_fd)
        try:
            return reconcile(walk(fd), self.baseline, self.pending, clean_stop=self.clean_stop,
                             finals=self.finals, stats_of=self.pending.inodes(), since_ns=self.since_ns)
        finally:
            os.close(fd)
            self.baseline.forget_thread()


def _baseline(state_dir: Path, source_fd: int) -> Manifest | None:
    """The saved manifest; None on a first mount. A missing or damaged manifest
    beside a journal is rebuilt from a walk of the tree, with a warning."""
    try:
        manifest = Manifest.open(state_dir)
    except ManifestError as error:
        why = f"was damaged ({error})"
    else:
        if manifest is not None or not (state_dir / JOURNAL_NAME).exists():
            return manifest
        why = "was missing"
    log.warning("the manifest in %s %s: rebuilt from the tree as it is; the next snapshot "
                "compares every file with the last one (nothing is lost)", state_dir, why)
    return Manifest.of_listings(state_dir / MANIFEST_NAME, walk(source_fd))


def _open(state_dir: Path) -> Journal:
    try:
        return Journal.open(state_dir)
    except JournalFormatError as error:
        raise MountError(f"{state_dir}/{JOURNAL_NAME}: {error}") from None
