"""The safety net for writes that bypass the mount: a periodic, low-priority rescan.

The journal sees every change made through the mount. A process that writes SOURCE
directly while it is mounted (SOURCE mounted elsewhere, or a process whose working
directory was inside SOURCE before the mount covered it) goes unseen until the next
mount reconciles. The rescanner closes that gap while mounted: every `interval`
seconds (and on `cloudfs rescan`) it scans SOURCE through the mount's own
descriptor, at the lowest CPU priority, and journals what `reconcile_mounted`
finds, so the next snapshot contains it.

Concurrency: the scan runs in a thread of its own; then, on the trio thread, the
journal's pending changes and change times are copied (an inode the mount changed
during the scan is known to the journal by then), the comparison runs in a worker
thread against those copies (200,000 entries take ~0.6 s: in a thread the FUSE
loop keeps getting the interpreter every few ms instead of stopping for that
long), and what it found is journaled back on the trio thread.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable

import trio

from cloudfs.live.changes import ChangeSet
from cloudfs.live.manifest import Tree, scan
from cloudfs.live.reconcile import reconcile_mounted

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 24 * 3600.0
LOWEST_PRIORITY = 19


class Rescanner:
    """Rescans of one live mount; `run()` is the periodic loop, `rescan()` one scan now."""

    def __init__(self, journal, source_fd: int, baseline: Callable[[], Tree], interval: float | None):
        self.journal = journal
        self.source_fd = source_fd
        self.baseline = baseline
        self.interval = interval            # None: only when asked
        self._lock = trio.Lock()            # one scan at a time
        self._looked_ns = journal.session_start_ns   # the startup reconcile looked then
        self.last: dict | None = None       # what the last rescan did (for `cloudfs status`)
        self.found_paths: dict[int, bytes] = {}   # where the files it found are (for the backlog)

    async def run(self) -> None:
        if self.interval is None:
            return
        while True:
            await trio.sleep(self.interval)
            try:
                await self.rescan()
            except OSError as error:
                log.error("rescan of SOURCE failed: %s; trying again in %.0f s", error, self.interval)

    async def rescan(self) -> dict:
        """Scan now, journal what bypassed the mount, and say what was found."""
        async with self._lock:
            started_ns = time.time_ns()
            current = await trio.to_thread.run_sync(_scan_gently, self.source_fd, abandon_on_cancel=True)
            compare = functools.partial(_compare, current, self.baseline(), self.journal.pending(),
                                        self.journal.change_times(), self.journal.session_start_ns)
            found, self.found_paths = await trio.to_thread.run_sync(compare, abandon_on_cancel=True)
            if found:
                log.warning("rescan: %d inodes were changed outside the mount; "
                            "the next snapshot includes them", len(found.inodes()))
                self.journal.changes_since(self._looked_ns)
                self.journal.record_changes(found)
            self._looked_ns = started_ns
            self.last = {"time_ns": started_ns, "seconds": (time.time_ns() - started_ns) / 1e9,
                         "entries": len(current), "changed_inodes": len(found.inodes())}
            return dict(self.last)


def _compare(current: Tree, baseline: Tree, pending, change_times: dict[int, int],
             since_ns: int) -> tuple[ChangeSet, dict[int, bytes]]:
    """reconcile_mounted, and a path of each inode to re-read (a worker thread)."""
    found = reconcile_mounted(current, baseline, pending, last_change_ns=change_times.get, since_ns=since_ns)
    paths = {ino: where[0] for ino in found.whole if (where := current.paths_of(ino))}
    return found, paths


def _scan_gently(source_fd: int) -> Tree:
    """scan() in a thread of its own at the lowest CPU priority (Linux applies nice
    values per thread; an unprivileged thread could not return to normal, so none
    of trio's reused worker threads is lowered). It scans a duplicate of the
    descriptor, so a scan abandoned at unmount never touches a reused number."""
    result: dict = {}
    fd = os.dup(source_fd)

    def work() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
            result["tree"] = scan(fd)
        except BaseException as error:  # noqa: BLE001 - handed to the waiting caller
            result["error"] = error
        finally:
            os.close(fd)

    thread = threading.Thread(target=work, name="cloudfs-rescan", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["tree"]
