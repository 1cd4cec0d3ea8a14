"""The live mount's FUSE side: checked paths, mounting, the journal's start and clean stop.

`plan()` turns the command line into checked absolute paths (each problem a
one-line MountError). `LiveMount` mounts the passthrough handlers over SOURCE's
descriptor, replays the journal before the first request is served, reconciles
while it serves (I7, startup.py), serves until the kernel ends the session, and
records a clean stop. It knows nothing of
snapshots: `cloudfs.mountproc` composes it with the snapshot daemon into the
mount's process. pyfuse3 allows one FUSE session per process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from cloudfs.errors import MountError
from cloudfs.live import graveyard
from cloudfs.live.fs import LiveOperations
from cloudfs.live.inodes import InodeTable
from cloudfs.live.journal import NullJournal
from cloudfs.live.rescan import DEFAULT_INTERVAL as DEFAULT_RESCAN_INTERVAL
from cloudfs.live.startup import StartupReconcile, open_journal
from cloudfs.live.tripwire import Thresholds, Tripwire
from cloudfs.system import fuseproc, mounttable
from cloudfs.system.statedir import StateDir, default_state_dir

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024  # reads arrive as 256 KiB requests otherwise; 1024 measured +40%


@dataclass
class MountPlan:
    """A checked mount request: absolute paths, and how to mount."""

    source: Path
    mountpoint: Path
    state: StateDir
    journaling: bool = True
    allow_other: bool = False
    rescan_interval: float | None = DEFAULT_RESCAN_INTERVAL   # None: only on `cloudfs rescan`
    tripwire: Thresholds | None = Thresholds()                 # None: no ransomware tripwire

    @property
    def over_source(self) -> bool:
        return self.mountpoint == self.source


def plan(source: str, mountpoint: str | None, state_dir: str | None, *,
         journaling: bool = True, allow_other: bool | None = None,
         rescan_interval: float | None = DEFAULT_RESCAN_INTERVAL,
         tripwire: Thresholds | None = Thresholds()) -> MountPlan:
    """Check everything that can be checked before mounting; raise MountError if wrong."""
    source_path = fuseproc.checked_directory(source, "SOURCE")
    if mountpoint is None:
        mountpoint_path = source_path
    else:
        mountpoint_path = fuseproc.checked_directory(mountpoint, "MOUNTPOINT")
    if mountpoint_path != source_path:
        if mountpoint_path.is_relative_to(source_path):
            raise MountError(f"MOUNTPOINT {mountpoint_path} must not be inside SOURCE {source_path}")
        entry = mounttable.mounted_at(str(mountpoint_path))
        if entry is not None:
            raise MountError(f"MOUNTPOINT {mountpoint_path} is busy: {entry.fstype} is mounted there")
        if os.listdir(mountpoint_path):
            raise MountError(f"MOUNTPOINT {mountpoint_path} is not empty")
    state_path = Path(os.path.realpath(state_dir)) if state_dir else default_state_dir(source_path)
    if state_path.is_relative_to(source_path):
        raise MountError(f"the state directory {state_path} must be outside SOURCE {source_path}")
    fuseproc.check_fuse_device()
    if allow_other is None:
        allow_other = os.geteuid() == 0  # root serves everyone, as the plain directory did
    return MountPlan(source_path, mountpoint_path, StateDir(state_path), journaling, allow_other,
                     rescan_interval, tripwire if journaling else None)


class LiveMount:
    """The mounted passthrough of one plan, in this process: `mount()`, then
    `start_journal()` and `serve()`, then (once mounted, always) `unmount()` and
    `stop_journal()`."""

    def __init__(self, plan: MountPlan, source_fd: int, *, baseline_from_first_snapshot: bool = False):
        """`baseline_from_first_snapshot`: a snapshot daemon will capture the whole tree
        before the first request is served, and its commit fills the manifest, so a
        first mount need not walk the tree a second time for the baseline."""
        self.plan = plan
        self.source_fd = source_fd
        self.baseline_from_first_snapshot = baseline_from_first_snapshot
        self.operations = LiveOperations(InodeTable(source_fd), NullJournal())
        if plan.tripwire is not None:
            self.operations.tripwire = Tripwire(plan.tripwire)
        self.reconcile: StartupReconcile | None = None

    def mount(self) -> None:
        """Mount the handlers. Requests wait until `serve()`; when the mount covers
        SOURCE, nothing can change SOURCE through its path from now on."""
        options = set(pyfuse3.default_options) | {"subtype=cloudfs", f"fsname={self._fsname()}"}
        if self.plan.allow_other:
            options.add("allow_other")
        options |= _inherited_options(self.source_fd)
        try:
            pyfuse3.init(self.operations, str(self.plan.mountpoint), options)
        except RuntimeError as error:
            raise MountError(f"cannot mount on {self.plan.mountpoint}: {error}") from None

    def start_journal(self) -> None:
        """Replay the journal, before the first request is served; the reconcile it
        needs (I7) is `self.reconcile`, run while serving (startup.py)."""
        if self.plan.journaling:
            graveyard.clear_leftovers(self.source_fd)
            self.operations.journal, self.reconcile = open_journal(
                self.plan.state.path, self.source_fd, empty_baseline=self.baseline_from_first_snapshot)

    @property
    def reconciled(self) -> bool:
        """Whether every change made while unmounted is journaled (the walk is done)."""
        return self.reconcile is None or self.reconcile.done.is_set()

    @property
    def device(self) -> str | None:
        """The mount's device ("major:minor")."""
        entry = mounttable.mounted_at(str(self.plan.mountpoint))
        return entry.device if entry is not None else None

    async def serve(self, nursery: trio.Nursery) -> None:
        """Serve requests until the kernel ends the session (an unmount)."""
        nursery.start_soon(self.operations.journal.run)
        if self.reconcile is not None:
            nursery.start_soon(self.reconcile.run, self.operations.last_seen)
        nursery.start_soon(self._tune_after_init)
        await pyfuse3.main()

    async def _tune_after_init(self) -> None:
        """Raise the read-ahead once the kernel has the INIT reply, which would reset it."""
        await self.operations.initialized.wait()
        await trio.sleep(0)   # let the reply go out first
        fuseproc.tune_read_ahead(str(self.plan.mountpoint), READ_AHEAD_KB)

    def unmount(self, served: bool) -> bool:
        """End the FUSE session, unmounting unless an unmount is what ended it.
        `served`: `serve()` returned. Returns whether the stop was clean."""
        still_mounted = not served or self._still_mounted()
        pyfuse3.close(unmount=still_mounted)
        return not still_mounted

    def stop_journal(self, clean: bool) -> None:
        """Record a clean stop (compacted, final stats) or just close the journal. A
        stop before the startup walk was journaled is never clean: the next mount's
        reconcile must not trust final stats that skipped what the walk would find."""
        journal = self.operations.journal
        if clean and self.reconciled and not isinstance(journal, NullJournal):
            try:
                journal.close_clean(self.operations.final_stats())
            except OSError as error:
                log.error("could not record the clean stop (%s); the next mount will rescan", error)
                journal.close()
        else:
            journal.close()
        self.operations.close()

    def _still_mounted(self) -> bool:
        entry = mounttable.mounted_at(str(self.plan.mountpoint))
        return (entry is not None and entry.fstype == mounttable.FSTYPE
                and entry.source == str(self.plan.state.path))

    def _fsname(self) -> str:
        """The state directory, so `cloudfs umount` can find the daemon from the mount table."""
        name = str(self.plan.state.path)
        return mounttable.fsname_for(name) if name.isascii() else "cloudfs"


def _inherited_options(source_fd: int) -> set[str]:
    """FUSE mounts are nosuid,nodev by default; as root, take SOURCE's own filesystem's
    setting instead, so device nodes and set-id programs work as they did."""
    if os.geteuid() != 0:
        return set()
    flags = os.fstatvfs(source_fd).f_flag
    return {option for option, flag in (("dev", os.ST_NODEV), ("suid", os.ST_NOSUID))
            if not flags & flag}
