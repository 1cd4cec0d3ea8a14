"""The process of a protected directory: the live mount and its snapshot daemon, composed.

`cloudfs.live` serves the passthrough and keeps the journal; `cloudfs.daemon`
seals, uploads and answers the control socket. This module, above both, runs
them in one trio loop: `serve()` mounts, reconciles, serves until unmounted
(`cloudfs umount`, SIGTERM, SIGINT, SIGHUP — after a final snapshot, for a
bounded time) and records a clean stop; `run()` does that in the foreground or,
with --daemon, in a detached process that the command waits for until the
mount is ready; `unmount()` is `cloudfs umount`.

Ready means the control socket answers and the FUSE loop is about to serve: then
the command returns (--daemon), and a service manager that started the mount
with `Type=notify` hears READY=1 (`system.notify`). With `metrics`, Prometheus
metrics are served from the same status the control socket gives.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

from cloudfs import control
from cloudfs.daemon import BackupSettings, SnapshotDaemon
from cloudfs.errors import CloudfsError, MountError
from cloudfs.live.mount import LiveMount, MountPlan
from cloudfs.metrics import MetricsServer
from cloudfs.system import fuseproc, mounttable, notify
from cloudfs.system.statedir import Holder, StateDir

log = logging.getLogger(__name__)


def serve(plan: MountPlan, on_ready: Callable[[], None], backup: BackupSettings | None = None,
          metrics: tuple[str, int] | None = None) -> None:
    """Mount, serve until unmounted, stop cleanly. Returns after the mount is gone.
    `backup` makes the mount take snapshots; `metrics` (host, port) serves them."""
    plan.state.acquire(plan.source)
    try:
        exporter = MetricsServer(*metrics, clock=time.time_ns) if metrics else None  # before mounting
        try:
            _serve_source(plan, on_ready, backup, exporter)
        finally:
            if exporter is not None:
                exporter.close()
    finally:
        plan.state.release()


def _serve_source(plan: MountPlan, on_ready: Callable[[], None], backup: BackupSettings | None,
                  exporter: MetricsServer | None) -> None:
    fuseproc.raise_descriptor_limit()
    # The handlers apply each caller's umask (ctx.umask) themselves; the daemon's own
    # would be applied on top and take away group and other bits the caller asked for.
    # Every file the daemon makes for itself gives its mode explicitly.
    os.umask(0)
    source_fd = os.open(plan.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _serve_with(plan, source_fd, on_ready, backup, exporter)
    finally:
        os.close(source_fd)


def _serve_with(plan: MountPlan, source_fd: int, on_ready: Callable[[], None],
                backup: BackupSettings | None, exporter: MetricsServer | None) -> None:
    live = LiveMount(plan, source_fd, baseline_from_first_snapshot=backup is not None)
    live.mount()
    served, daemon = False, None
    try:
        live.start_journal()
        mountpoint = str(plan.mountpoint)
        daemon = SnapshotDaemon(source=plan.source, mountpoint=plan.mountpoint, state_dir=plan.state.path,
                                operations=live.operations, source_fd=source_fd, device=live.device,
                                settings=backup, unmount=lambda: fuseproc.detach_now(mountpoint),
                                rescan_interval=plan.rescan_interval,
                                startup=live.reconcile)
        plan.state.announce(Holder(os.getpid(), str(plan.source), mountpoint, source_fd))
        # Start-up's objects (modules, botocore's models) live as long as the mount: out of
        # every full collection, which otherwise walked them all (~90 ms each, on the loop)
        # about once a second while a first snapshot was captured and built.
        gc.freeze()
        trio.run(_serve_requests, live, daemon, on_ready, exporter)
        served = True
    finally:
        clean = live.unmount(served)
        if daemon is not None:
            daemon.close()
        live.stop_journal(clean)


async def _serve_requests(live: LiveMount, daemon: SnapshotDaemon, on_ready: Callable[[], None],
                          exporter: MetricsServer | None) -> None:
    mountpoint = str(live.plan.mountpoint)

    async def before_unmounting() -> None:
        notify.stopping(f"final snapshot, then unmounting {mountpoint}")
        await daemon.final_snapshot()

    async with trio.open_nursery() as nursery:
        await daemon.start(nursery)   # the control socket answers from here on
        await nursery.start(fuseproc.unmount_on_signal, mountpoint, before_unmounting)
        if exporter is not None:
            token = trio.lowlevel.current_trio_token()
            exporter.attach(lambda: trio.from_thread.run_sync(daemon.status, trio_token=token))
        on_ready()
        notify.ready(f"{live.plan.source} mounted on {mountpoint}")
        await live.serve(nursery)
        nursery.cancel_scope.cancel()


# -- foreground and daemon ----------------------------------------------------------------


def run(plan: MountPlan, daemon: bool, backup: BackupSettings | None = None,
        metrics: tuple[str, int] | None = None) -> int:
    """Serve `plan` here (foreground) or in a detached process once it is ready (daemon)."""
    if not daemon:
        def announce():
            print(f"cloudfs: {plan.source} mounted on {plan.mountpoint} "
                  f"(state in {plan.state.path}); stop with: cloudfs umount {plan.mountpoint}",
                  file=sys.stderr, flush=True)

        serve(plan, announce, backup, metrics)
        return 0
    plan.state.create()  # for the log, before detaching
    return fuseproc.run_detached(plan.state.log_path(), lambda ready: serve(plan, ready, backup, metrics))


# -- unmounting ------------------------------------------------------------------------------


def unmount(path: str, lazy: bool = False, timeout: float = 120.0,
            snapshot_timeout: float = 60.0) -> dict | None:
    """Take a final snapshot (at most `snapshot_timeout` seconds, none if 0), unmount the
    cloudfs mount at `path` (a live or a snapshot mount), and wait until its process has
    stopped cleanly. Returns the daemon's answer about the final snapshot (None if it
    could not be asked)."""
    entry = mounttable.mounted_at(fuseproc.resolve_parent(path))
    if entry is None or entry.fstype != mounttable.FSTYPE:
        raise MountError(f"{path} is not a cloudfs mount")
    state = StateDir(Path(entry.source))
    final = _final_snapshot(state.path, snapshot_timeout) if snapshot_timeout > 0 else None
    try:
        fuseproc.detach(entry.mountpoint, lazy)
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
