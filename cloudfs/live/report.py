"""What `cloudfs changes` shows: the pending changes of a protected tree, as paths."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cloudfs.errors import MountError
from cloudfs.live.journal import read_journal
from cloudfs.live.manifest import ManifestError, load_manifest, scan_path
from cloudfs.live.reconcile import reconcile
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
        baseline = load_manifest(state.path)
        journal = read_journal(state.path)
    except (ManifestError, JournalFormatError) as error:
        raise MountError(f"{state.path}: {error}") from None
    if baseline is None:
        raise MountError(f"{source} has never been mounted (no baseline in {state.path})")
    holder = state.holder()
    tree = holder.tree_path() if holder is not None and _readable(holder.tree_path()) else source
    try:
        current = scan_path(Path(tree))
    except OSError as error:
        raise MountError(f"cannot read {source}: {error.strerror}") from None
    pending = journal.pending()
    reconciled = not journal_only and holder is None
    if reconciled:
        pending.update(reconcile(current, baseline, pending,
                                 clean_stop=journal.clean_stop, finals=journal.finals))
    return ChangeReport(
        source=source, state_dir=state.path, mounted=holder is not None,
        clean_stop=journal.clean_stop, reconciled=reconciled,
        epochs=[*journal.sealed, journal.current_epoch],
        changes=resolve(pending, baseline, current),
    )


def _readable(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
    except OSError:
        return False
    return True
