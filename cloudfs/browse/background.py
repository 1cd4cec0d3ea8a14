"""Background work of a mount (read-ahead, tree prefetch) inside its service nursery.

FUSE handlers must answer and return; work that helps later requests is
started here instead. Every task runs in the mount's nursery, so none outlives
the mount, and a task's failure is logged and dropped: read-ahead that fails
must never take the mount down (the read that needs the data reports it).

Work that only guesses at what a user may open later (a whole tree's
prefetch) waits while the mount serves requests (`until_idle`): it shares the
one event loop and the interpreter with the handlers, and at a million
entries it made the user's first `ls -l` wait seconds behind it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import trio

log = logging.getLogger(__name__)


QUIET_SECONDS = 0.2     # no request for this long: the mount is idle


class Background:
    def __init__(self):
        self._nursery: trio.Nursery | None = None
        self._serving = 0
        self._last_served = 0.0

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    @property
    def started(self) -> bool:
        return self._nursery is not None

    def spawn(self, function, *args) -> None:
        """Run `function(*args)` in the background; a no-op before start()."""
        if self._nursery is not None:
            self._nursery.start_soon(self._guarded, function, args)

    @contextmanager
    def serving(self):
        """Around each FUSE request."""
        self._serving += 1
        try:
            yield
        finally:
            self._serving -= 1
            self._last_served = trio.current_time()

    async def until_idle(self) -> None:
        """Return once no request is being served and none came for QUIET_SECONDS."""
        while True:
            quiet = trio.current_time() - self._last_served
            if self._serving == 0 and quiet >= QUIET_SECONDS:
                return
            await trio.sleep(max(QUIET_SECONDS - quiet, 0.01) if self._serving == 0 else QUIET_SECONDS)

    @staticmethod
    async def _guarded(function, args) -> None:
        try:
            await function(*args)
        except Exception as error:  # noqa: BLE001 - background help is best effort
            log.info("background %s failed: %s", getattr(function, "__name__", function), error)
