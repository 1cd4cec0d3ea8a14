"""Sealing: close the journal's epoch and freeze what the snapshot will read, at one instant.

`Sealer.flush()` first makes the kernel write back what the mount's page cache
holds (`syncfs` of the mount in a helper process, while the trio loop keeps
serving the writes that produces), so that every write an application completed
before the seal reaches the journal and the backing files. `Sealer.seal_now()` is
then one synchronous stretch — no other request runs during it: `journal.seal()`,
the capture of everything the builder will look at (capture.py), and the
FrozenState that makes the handlers copy-on-write from the next request on. Its
duration is the only time writers wait for a seal; it is measured (`stall_s`).

The startup seal of a first mount (`seal_before_serving`) captures everything
in a worker thread instead, while the snapshot's build already reads what is
captured; the mount serves nothing until that capture is complete, so it still
describes one instant (docs/live.md §13.1).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import trio

from cloudfs.system import mounttable
from cloudfs.live.capture import Capture, CaptureWalker, Inconsistent
from cloudfs.live.frozen import CaptureProgress, FrozenState
from cloudfs.live.graveyard import Graveyard
from cloudfs.live.manifest import Manifest
from cloudfs.live.spool import Spool

log = logging.getLogger(__name__)

SYNC = shutil.which("sync") or "/bin/sync"


async def flush_mount(mountpoint: str, device: str | None) -> None:
    """syncfs(2) the FUSE mount at `mountpoint` (device "major:minor"), from a helper
    process (`sync -f`), while the loop serves the writes it makes the kernel send.

    Not from a thread of this process: a thread waiting inside syncfs for writeback
    that only this process's loop can serve keeps the process from dying on
    `kill -9` (the kernel aborts the FUSE connection only once every thread has left
    it), and the mount would hang. A helper just gets ENOTCONN when we die.

    Does nothing if another filesystem is at `mountpoint` now (a lazy detach).
    Writeback errors (an application's write that failed) are logged, not raised:
    they belong to the applications, which see them at fsync or close."""
    entry = mounttable.mounted_at(mountpoint)
    if device is not None and (entry is None or entry.device != device):
        return
    result = await trio.run_process([SYNC, "-f", mountpoint], check=False, capture_stdout=True,
                                    capture_stderr=True)
    if result.returncode:
        log.info("sync -f %s: %s", mountpoint, result.stderr.decode(errors="replace").strip())


@dataclass
class Sealed:
    """One sealed epoch and its frozen state, until its snapshot is committed or given up."""

    epoch: int
    time_ns: int
    capture: Capture
    frozen: FrozenState
    #: The snapshot the capture was planned against (its manifest's), or None when
    #: the capture is full and any previous snapshot (or none) will do.
    previous_name: str | None
    stall_s: float
    flush_s: float = 0.0
    #: Tags for the snapshot of this seal (`cloudfs snapshot --tag`), set by the daemon.
    tags: tuple[str, ...] = ()
    #: Set once the capture has ended (at once, unless it runs in a worker thread).
    captured: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self):
        if self.frozen.progress is None:
            self.captured.set()

    @property
    def full(self) -> bool:
        return self.capture.full


class Sealer:
    """Seals one live mount's journal; one Sealed state exists at a time."""

    def __init__(self, operations, journal, root_fd: int, mountpoint: str, device: str | None,
                 spool: Spool, graveyard: Graveyard, block_size: int,
                 exclude: Callable[[bytes], bool] | None, state_dir: Path | None = None):
        self.operations = operations
        self.journal = journal
        self.root_fd = root_fd
        self.mountpoint = mountpoint
        self.device = device
        self.spool = spool
        self.graveyard = graveyard
        self.block_size = block_size
        self.exclude = exclude
        self.state_dir = state_dir   # where a full capture keeps what it froze

    async def flush(self) -> float:
        """Write back the mount's page cache; returns how long it took (s)."""
        started = time.perf_counter()
        await flush_mount(self.mountpoint, self.device)
        return time.perf_counter() - started

    def seal_now(self, manifest: Manifest, *, incremental: bool, trusted: bool) -> Sealed:
        """Seal and capture in one synchronous stretch. `trusted`: the manifest describes
        the previous snapshot (named by its checkpoint); `incremental` needs it."""
        started = time.perf_counter()
        time_ns = time.time_ns()
        epoch, _ = self.journal.seal()
        capture = self._capture(manifest, time_ns, incremental and trusted, trusted)
        frozen = FrozenState(capture, self.spool, self.graveyard, self.operations.table, self.root_fd)
        self.operations.frozen = frozen
        stall = time.perf_counter() - started
        previous = manifest.checkpoint.snapshot if trusted else None
        self._log_sealed(epoch, capture, stall)
        return Sealed(epoch, time_ns, capture, frozen, previous, stall)

    async def seal_before_serving(self, manifest: Manifest, *, trusted: bool,
                                  started: Callable[[Sealed], None]) -> Sealed:
        """The startup seal, before the first request is served; `started(sealed)` is
        called as soon as its snapshot can be built. A full capture (no trusted
        manifest: a first mount) runs in a worker thread meanwhile, and the build
        follows it directory by directory; this returns once the capture is complete
        (on failure, the sealed state is given up and the error raised). Nothing may
        be served before it returns: Rule 5 holds because nothing is served."""
        if trusted or self.state_dir is None:
            sealed = self.seal_now(manifest, incremental=True, trusted=trusted)
            started(sealed)
            return sealed
        started_at = time.perf_counter()
        time_ns = time.time_ns()
        epoch, _ = self.journal.seal()
        progress = CaptureProgress()
        token = trio.lowlevel.current_trio_token()
        handed: list[Sealed] = []

        def hand_over(capture: Capture) -> None:   # in the capture's thread
            handed.append(trio.from_thread.run_sync(self._install, epoch, time_ns, capture, progress,
                                                    started, trio_token=token))

        try:
            capture = await trio.to_thread.run_sync(
                lambda: self._walker(manifest, time_ns, trusted).full(hand_over, progress.published))
        except BaseException as error:
            progress.end(error)
            if handed:
                handed[0].frozen.fail(f"the capture failed: {error}")
                handed[0].captured.set()
            raise
        progress.end()
        sealed = handed[0]
        sealed.frozen.progress = None
        sealed.stall_s = time.perf_counter() - started_at
        sealed.captured.set()
        self._log_sealed(epoch, capture, sealed.stall_s)
        return sealed

    def _install(self, epoch: int, time_ns: int, capture: Capture, progress: CaptureProgress,
                 started: Callable[[Sealed], None]) -> Sealed:
        frozen = FrozenState(capture, self.spool, self.graveyard, self.operations.table, self.root_fd,
                             progress)
        self.operations.frozen = frozen
        sealed = Sealed(epoch, time_ns, capture, frozen, None, 0.0)
        started(sealed)
        return sealed

    def _log_sealed(self, epoch: int, capture: Capture, stall_s: float) -> None:
        log.info("sealed epoch %d (%s): %d paths captured, %d files (%d bytes) to read, in %.1f ms",
                 epoch, "full" if capture.full else "incremental", len(capture.stats),
                 len(capture.reads), capture.bytes_to_read(), stall_s * 1000)

    def _walker(self, manifest: Manifest, time_ns: int, trusted: bool) -> CaptureWalker:
        return CaptureWalker(self.root_fd, manifest, block_size=self.block_size, has_previous=trusted,
                             trusted=trusted, exclude=self.exclude, time_ns=time_ns, state_dir=self.state_dir)

    def _capture(self, manifest: Manifest, time_ns: int, incremental: bool, trusted: bool) -> Capture:
        if incremental:
            try:
                return self._walker(manifest, time_ns, trusted).incremental(self.journal.pending())
            except Inconsistent as error:
                log.warning("the tree does not match the journal (%s); capturing all of it", error)
        return self._walker(manifest, time_ns, trusted).full()

    def release(self, sealed: Sealed | None = None) -> None:
        """The snapshot is committed or given up: stop copy-on-write, drop spool and graveyard."""
        if sealed is None or self.operations.frozen is sealed.frozen:
            self.operations.frozen = None
        if sealed is not None:
            sealed.capture.close()
        self.spool.clear()
        try:
            self.graveyard.clear()
        except OSError as error:
            log.warning("cannot empty the graveyard: %s", error)
