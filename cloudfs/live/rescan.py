"""The safety net for writes that bypass the mount: a periodic, low-priority rescan.

The journal sees every change made through the mount. A process that writes SOURCE
directly while it is mounted (SOURCE mounted elsewhere, or a process whose working
directory was inside SOURCE before the mount covered it) goes unseen until the next
mount reconciles. The rescanner closes that gap while mounted: every `interval`
seconds (and on `cloudfs rescan`) it scans SOURCE through the mount's own
descriptor, at the lowest CPU priority, and journals what `reconcile_mounted`
finds, so the next snapshot contains it.

Concurrency: on the trio thread the journal's pending changes and change times
are copied; then a thread of its own, at the lowest CPU priority, walks SOURCE
and compares each directory with the manifest as it goes (streaming: memory does
not grow with the tree; 200,000 entries take about a second, so the FUSE loop
must not be stopped for it); back on the trio thread, what the journal has
recorded meanwhile is taken out of the findings (`reconcile.news`), and the rest
is journaled. A change the mount made during the walk can only be over-reported
by the copies being older than the walk (a re-read), never hide a change that
bypassed the mount.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import trio

from cloudfs.live.manifest import Manifest
from cloudfs.live.reconcile import Findings, news, reconcile_mounted
from cloudfs.live.scan import walk

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 24 * 3600.0
LOWEST_PRIORITY = 19


class Rescanner:
    """Rescans of one live mount; `run()` is the periodic loop, `rescan()` one scan now."""

    def __init__(self, journal, source_fd: int, baseline: Callable[[], Manifest], interval: float | None):
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
            pending = self.journal.pending()
            change_times = self.journal.change_times()
            since_ns = self.journal.session_start_ns

            def compare(fd: int) -> Findings:
                baseline = self.baseline()
                try:
                    return reconcile_mounted(walk(fd), baseline, pending,
                                             last_change_ns=change_times.get, since_ns=since_ns)
                finally:
                    baseline.forget_thread()   # the thread ends with this walk

            findings = await trio.to_thread.run_sync(_gently, compare, self.source_fd, abandon_on_cancel=True)
            found = news(findings.changes, self.journal.pending())
            self.found_paths = {ino: path for ino, path in findings.paths.items() if ino in found.whole}
            if found:
                log.warning("rescan: %d inodes were changed outside the mount; "
                            "the next snapshot includes them", len(found.inodes()))
                self.journal.changes_since(self._looked_ns)
                self.journal.record_changes(found)
            self._looked_ns = started_ns
            self.last = {"time_ns": started_ns, "seconds": (time.time_ns() - started_ns) / 1e9,
                         "entries": findings.entries, "changed_inodes": len(found.inodes())}
            return dict(self.last)


def _gently(work: Callable[[int], Findings], source_fd: int) -> Findings:
    """work(fd) in a thread of its own at the lowest CPU priority (Linux applies nice
    values per thread; an unprivileged thread could not return to normal, so none
    of trio's reused worker threads is lowered), on a duplicate of the descriptor,
    so a walk abandoned at unmount never touches a reused number."""
    result: dict = {}
    fd = os.dup(source_fd)

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
            result["findings"] = work(fd)
        except BaseException as error:  # noqa: BLE001 - handed to the waiting caller
            result["error"] = error
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, name="cloudfs-rescan", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["findings"]
