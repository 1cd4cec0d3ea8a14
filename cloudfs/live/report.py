"""What `cloudfs changes` shows: the pending changes of a protected tree, as paths."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cloudfs.errors import MountError
from cloudfs.live.journal import read_journal
from cloudfs.live.manifest import Manifest, ManifestError
from cloudfs.live.reconcile import reconcile
from cloudfs.live.scan import walk_path
from cloudfs.live.records import JournalFormatError
from cloudfs.system.statedir import StateDir
from cloudfs.live.view import Change, resolve


@dataclass
class ChangeReport:
    source: Path
    state_dir: Path
    mounted: bool
    #: Whether the last session stopped cleanly (only meaningful when not mounted).
    clean_stop: bool
    #: Whether changes made while unmounted were looked for (a reconcile scan).
    reconciled: bool
    epochs: list[int] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)


def pending_changes(source: Path, state_dir: Path, journal_only: bool = False) -> ChangeReport:
    """Everything changed since the baseline that is not yet in a committed snapshot.

    While unmounted this also scans for changes made behind the journal's back (what
    the next mount's reconcile will journal), unless `journal_only`. While mounted,
    the tree is read through the daemon's own descriptor of SOURCE.
    """
    state = StateDir(state_dir)
    try:
        baseline = Manifest.open(state.path)
        journal = read_journal(state.path)
    except (ManifestError, JournalFormatError) as error:
        raise MountError(f"{state.path}: {error}") from None
    if baseline is None:
        raise MountError(f"{source} has never been mounted (no baseline in {state.path})")
    holder = state.holder()
    tree = holder.tree_path() if holder is not None and _readable(holder.tree_path()) else source
    pending = journal.pending()
    reconciled = not journal_only and holder is None
    try:
        with tempfile.TemporaryDirectory(prefix="cloudfs-changes-") as scratch:
            current = _walked(Path(tree), Path(scratch))
            try:
                if reconciled:
                    pending.update(_reconciled(Path(tree), baseline, pending, journal))
                changes = resolve(pending, baseline, current)
            finally:
                current.close()
    except OSError as error:
        raise MountError(f"cannot read {source}: {error.strerror}") from None
    finally:
        baseline.close()
    return ChangeReport(
        source=source, state_dir=state.path, mounted=holder is not None,
        clean_stop=journal.clean_stop, reconciled=reconciled,
        epochs=[*journal.sealed, journal.current_epoch], changes=changes,
    )


def _walked(tree: Path, scratch: Path) -> Manifest:
    """The tree as it is now, as a manifest in `scratch` (the view looks up paths and
    inodes in it without holding the tree in memory)."""
    return Manifest.of_listings(scratch / "current.db", walk_path(tree))


def _reconciled(tree: Path, baseline: Manifest, pending, journal):
    return reconcile(walk_path(tree), baseline, pending, clean_stop=journal.clean_stop,
                     finals=journal.finals).changes


def _readable(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
    except OSError:
        return False
    return True
