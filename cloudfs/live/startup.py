"""Bringing the journal up to date when a mount starts (I7).

First mount: the tree as it is becomes the baseline manifest and the journal starts
empty. Every later mount: replay the journal, walk SOURCE, and journal whatever
reconcile finds (changes made while unmounted, records lost in a crash) before the
first request is served. A manifest that is missing or damaged while a journal
exists is rebuilt from the walk, without a checkpoint: the next snapshot is then
full (every file compared by its stat with the newest snapshot; only what differs
is read), so nothing the lost manifest knew is missed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cloudfs.errors import MountError
from cloudfs.live.journal import JOURNAL_NAME, Journal
from cloudfs.live.manifest import MANIFEST_NAME, Manifest, ManifestError
from cloudfs.live.reconcile import reconcile
from cloudfs.live.records import FinalStat, JournalFormatError
from cloudfs.live.scan import walk

log = logging.getLogger(__name__)


def open_journal(state_dir: Path, source_fd: int) -> tuple[Journal, dict[int, FinalStat]]:
    """The session's journal, reconciled and durable; plus the current stat of every
    dirty inode (what the clean-stop record needs for inodes the kernel never touches)."""
    baseline = _baseline(state_dir, source_fd)
    if baseline is None:
        Manifest.of_listings(state_dir / MANIFEST_NAME, walk(source_fd)).close()
        log.info("first mount: the tree as it is now is the baseline")
        return _open(state_dir), {}
    journal = _open(state_dir)
    try:
        pending = journal.pending()
        findings = reconcile(walk(source_fd), baseline, pending, clean_stop=journal.previous_stop_clean,
                             finals=journal.previous_finals, stats_of=pending.inodes())
    finally:
        baseline.close()
    found = findings.changes
    if found:
        how = "since the last clean stop" if journal.previous_stop_clean else "after an unclean stop"
        log.warning("reconcile: %d inodes changed %s", len(found.inodes()), how)
        journal.record_changes(found)
    journal.flush()
    os.fdatasync(journal.fileno())
    dirty = journal.pending().inodes()
    return journal, {ino: final for ino, final in findings.stats.items() if ino in dirty}


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
