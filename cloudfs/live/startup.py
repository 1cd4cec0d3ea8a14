"""Bringing the journal up to date when a mount starts (I7).

First mount: the tree as it is becomes the baseline manifest and the journal starts
empty. Every later mount: replay the journal, scan SOURCE, and journal whatever
reconcile finds (changes made while unmounted, records lost in a crash) before the
first request is served.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cloudfs.errors import MountError
from cloudfs.live.journal import JOURNAL_NAME, Journal
from cloudfs.live.manifest import ManifestError, Tree, load_manifest, save_manifest, scan
from cloudfs.live.reconcile import reconcile
from cloudfs.live.records import FinalStat, JournalFormatError

log = logging.getLogger(__name__)


def open_journal(state_dir: Path, source_fd: int) -> tuple[Journal, dict[int, FinalStat]]:
    """The session's journal, reconciled and durable; plus the current stat of every
    dirty inode (what the clean-stop record needs for inodes the kernel never touches)."""
    try:
        baseline = load_manifest(state_dir)
    except ManifestError as error:
        raise MountError(f"{state_dir}: {error}; move the state directory away to start over") from None
    current = scan(source_fd)
    if baseline is None:
        if (state_dir / JOURNAL_NAME).exists():
            raise MountError(f"{state_dir} has a journal but no manifest; "
                             "move the state directory away to start over")
        save_manifest(state_dir, current)
        log.info("first mount: %d entries are the baseline", len(current))
        return _open(state_dir), {}
    journal = _open(state_dir)
    found = reconcile(current, baseline, journal.pending(),
                      clean_stop=journal.previous_stop_clean, finals=journal.previous_finals)
    if found:
        how = "since the last clean stop" if journal.previous_stop_clean else "after an unclean stop"
        log.warning("reconcile: %d inodes changed %s", len(found.inodes()), how)
        journal.record_changes(found)
    journal.flush()
    os.fdatasync(journal.fileno())
    return journal, _stats_of(journal.pending().inodes(), current)


def _open(state_dir: Path) -> Journal:
    try:
        return Journal.open(state_dir)
    except JournalFormatError as error:
        raise MountError(f"{state_dir}/{JOURNAL_NAME}: {error}") from None


def _stats_of(inodes: set[int], tree: Tree) -> dict[int, FinalStat]:
    stats = {}
    for ino in inodes:
        paths = tree.paths_of(ino)
        if paths:
            entry = tree.get(paths[0])
            stats[ino] = FinalStat(entry.size, entry.mtime_ns, entry.ctime_ns)
    return stats
