"""The mount process: check the paths, take the state directory, reconcile, serve, stop.

`plan()` turns the command line into checked absolute paths (each problem a one-line
MountError). `serve()` runs one mount in this process until it is unmounted
(`cloudfs umount`, SIGTERM, SIGINT), then records a clean stop. `run()` does that
in the foreground or, with --daemon, in a detached process that the command waits
for until the mount is ready. pyfuse3 allows one FUSE session per process.

The same trio loop serves the control socket and, with a repository, the snapshot
daemon (`cloudfs.daemon`): before unmounting on a signal or `cloudfs umount`, a
final snapshot is taken, for a bounded time.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from cloudfs import control, fuseproc
from cloudfs.fuseproc import detach
from cloudfs.errors import CloudfsError, MountError
from cloudfs.live import graveyard, mounttable
from cloudfs.live.fs import LiveOperations
from cloudfs.live.inodes import InodeTable
from cloudfs.live.journal import NullJournal
from cloudfs.live.rescan import DEFAULT_INTERVAL as DEFAULT_RESCAN_INTERVAL
from cloudfs.live.startup import open_journal
from cloudfs.live.state import Holder, StateDir, default_state_dir

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

    @property
    def over_source(self) -> bool:
        return self.mountpoint == self.source


def plan(source: str, mountpoint: str | None, state_dir: str | None, *,
         journaling: bool = True, allow_other: bool | None = None,
         rescan_interval: float | None = DEFAULT_RESCAN_INTERVAL) -> MountPlan:
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
                     rescan_interval)


# -- serving ---------------------------------------------------------------------------


def serve(plan: MountPlan, on_ready: Callable[[], None], backup=None) -> None:
    """Mount, serve until unmounted, stop cleanly. Returns after the mount is gone.
    `backup` (daemon.BackupSettings) makes the mount take snapshots."""
    plan.state.acquire(plan.source)
    try:
        fuseproc.raise_descriptor_limit()
        # The handlers apply each caller's umask (ctx.umask) themselves; the daemon's own
        # would be applied on top and take away group and other bits the caller asked for.
        # Every file the daemon makes for itself gives its mode explicitly.
        os.umask(0)
        source_fd = os.open(plan.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _serve_with(plan, source_fd, on_ready, backup)
        finally:
            os.close(source_fd)
    finally:
        plan.state.release()


def _serve_with(plan: MountPlan, source_fd: int, on_ready: Callable[[], None], backup) -> None:
    from cloudfs.daemon import SnapshotDaemon

    operations = LiveOperations(InodeTable(source_fd), NullJournal())
    options = set(pyfuse3.default_options) | {"subtype=cloudfs", f"fsname={_fsname(plan)}"}
    if plan.allow_other:
        options.add("allow_other")
    options |= _inherited_options(source_fd)
    try:
        pyfuse3.init(operations, str(plan.mountpoint), options)
    except RuntimeError as error:
        raise MountError(f"cannot mount on {plan.mountpoint}: {error}") from None
    mounted, clean, daemon = True, False, None
    try:
        # Mounted but not serving yet: requests wait while we reconcile, and nothing
        # can change SOURCE through its path any more when the mount covers it.
        if plan.journaling:
            graveyard.clear_leftovers(source_fd)
            operations.journal, operations.last_seen = open_journal(plan.state.path, source_fd)
        device = _mount_device(plan.mountpoint)
        mountpoint = str(plan.mountpoint)
        daemon = SnapshotDaemon(source=plan.source, mountpoint=plan.mountpoint, state_dir=plan.state.path,
                                operations=operations, source_fd=source_fd, device=device,
                                settings=backup, unmount=lambda: _detach_now(mountpoint),
                                rescan_interval=plan.rescan_interval)
        plan.state.announce(Holder(os.getpid(), str(plan.source), str(plan.mountpoint), source_fd))
        on_ready()
        trio.run(_serve_requests, operations, mountpoint, daemon)
        mounted = _still_mounted(plan)
        clean = not mounted
    finally:
        pyfuse3.close(unmount=mounted)
        if daemon is not None:
            daemon.close()
        _stop_journal(operations, clean)
        operations.close()


def _inherited_options(source_fd: int) -> set[str]:
    """FUSE mounts are nosuid,nodev by default; as root, take SOURCE's own filesystem's
    setting instead, so device nodes and set-id programs work as they did."""
    if os.geteuid() != 0:
        return set()
    flags = os.fstatvfs(source_fd).f_flag
    return {option for option, flag in (("dev", os.ST_NODEV), ("suid", os.ST_NOSUID))
            if not flags & flag}


def _stop_journal(operations: LiveOperations, clean: bool) -> None:
    journal = operations.journal
    if clean and not isinstance(journal, NullJournal):
        try:
            journal.close_clean(operations.final_stats())
            return
        except OSError as error:
            log.error("could not record the clean stop (%s); the next mount will rescan", error)
    journal.close()


async def _serve_requests(operations: LiveOperations, mountpoint: str, daemon) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(operations.journal.run)
        await daemon.start(nursery)
        nursery.start_soon(fuseproc.unmount_on_signal, mountpoint, daemon.final_snapshot)
        nursery.start_soon(_tune_after_init, operations, mountpoint)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _tune_after_init(operations: LiveOperations, mountpoint: str) -> None:
    """Raise the read-ahead once the kernel has the INIT reply, which would reset it."""
    await operations.initialized.wait()
    await trio.sleep(0)   # let the reply go out first
    fuseproc.tune_read_ahead(mountpoint, READ_AHEAD_KB)


async def _detach_now(mountpoint: str) -> None:
    await fuseproc.detach_now(mountpoint)


def _still_mounted(plan: MountPlan) -> bool:
    entry = mounttable.mounted_at(str(plan.mountpoint))
    return entry is not None and entry.fstype == mounttable.FSTYPE and entry.source == str(plan.state.path)


def _fsname(plan: MountPlan) -> str:
    """The state directory, so `cloudfs umount` can find the daemon from the mount table."""
    name = str(plan.state.path)
    return mounttable.fsname_for(name) if name.isascii() else "cloudfs"


def _mount_device(mountpoint: Path) -> str | None:
    """The mount's device ("major:minor")."""
    entry = mounttable.mounted_at(str(mountpoint))
    return entry.device if entry is not None else None


# -- foreground and daemon ----------------------------------------------------------------


def run(plan: MountPlan, daemon: bool, backup=None) -> int:
    """Serve `plan` here (foreground) or in a detached process once it is ready (daemon)."""
    if not daemon:
        def announce():
            print(f"cloudfs: {plan.source} mounted on {plan.mountpoint} "
                  f"(state in {plan.state.path}); stop with: cloudfs umount {plan.mountpoint}",
                  file=sys.stderr, flush=True)

        serve(plan, announce, backup)
        return 0
    return _run_detached(plan, backup)


def _run_detached(plan: MountPlan, backup) -> int:
    plan.state.create()  # for the log, before detaching
    return fuseproc.run_detached(plan.state.log_path(), lambda ready: serve(plan, ready, backup))


# -- unmounting ------------------------------------------------------------------------------


def unmount(path: str, lazy: bool = False, timeout: float = 120.0,
            snapshot_timeout: float = 60.0) -> dict | None:
    """Take a final snapshot (at most `snapshot_timeout` seconds, none if 0), unmount the
    cloudfs mount at `path`, and wait until its daemon has stopped cleanly. Returns the
    daemon's answer about the final snapshot (None if it could not be asked)."""
    entry = mounttable.mounted_at(fuseproc.resolve_parent(path))
    if entry is None or entry.fstype != mounttable.FSTYPE:
        raise MountError(f"{path} is not a cloudfs mount")
    state = StateDir(Path(entry.source))
    final = _final_snapshot(state.path, snapshot_timeout) if snapshot_timeout > 0 else None
    try:
        detach(entry.mountpoint, lazy)
    except OSError as error:
        if error.errno == errno.EBUSY:
            raise MountError(f"{path} is busy (files are open there); close them or use --lazy") from None
        raise MountError(f"cannot unmount {path}: {error.strerror}") from None
    deadline = time.monotonic() + timeout
    while (holder := state.holder()) is not None and not lazy:
        if time.monotonic() > deadline:
            raise MountError(f"unmounted, but the daemon (pid {holder.pid}) has not stopped after {timeout:.0f}s")
        time.sleep(0.02)
    return final


def _final_snapshot(state_dir: Path, seconds: float) -> dict | None:
    """Ask the daemon to commit what is pending before it goes (bounded). A mount
    without a control socket (a snapshot mount) has nothing to commit."""
    if not control.socket_path(state_dir).exists():
        return None
    try:
        return control.request(state_dir, "snapshot", timeout=seconds + 10, final=True,
                               wait_seconds=seconds)
    except CloudfsError as error:
        log.warning("no final snapshot: %s", error)
        return None
