"""Sealing: close the journal's epoch and freeze what the snapshot will read, at one instant.

`Sealer.flush()` first makes the kernel write back what the mount's page cache
holds (`syncfs` of the mount in a helper process, while the trio loop keeps
serving the writes that produces), so that every write an application completed
before the seal reaches the journal and the backing files. `Sealer.seal_now()` is
then one synchronous stretch — no other request runs during it: `journal.seal()`,
the capture of everything the builder will look at (capture.py), and the
FrozenState that makes the handlers copy-on-write from the next request on. Its
duration is the only time writers wait for a seal; it is measured (`stall_s`).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trio

from cloudfs.system import mounttable
from cloudfs.live.capture import Capture, CaptureWalker, Inconsistent
from cloudfs.live.frozen import FrozenState
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
        log.info("sealed epoch %d (%s): %d paths captured, %d files (%d bytes) to read, in %.1f ms",
                 epoch, "full" if capture.full else "incremental", len(capture.stats),
                 len(capture.reads), capture.bytes_to_read(), stall * 1000)
        return Sealed(epoch, time_ns, capture, frozen, previous, stall)

    def _capture(self, manifest: Manifest, time_ns: int, incremental: bool, trusted: bool) -> Capture:
        def walker() -> CaptureWalker:
            return CaptureWalker(self.root_fd, manifest, block_size=self.block_size, has_previous=trusted,
                                 trusted=trusted, exclude=self.exclude, time_ns=time_ns,
                                 state_dir=self.state_dir)

        if incremental:
            try:
                return walker().incremental(self.journal.pending())
            except Inconsistent as error:
                log.warning("the tree does not match the journal (%s); capturing all of it", error)
        return walker().full()

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
