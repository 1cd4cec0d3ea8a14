"""Background work of a mount (read-ahead, tree prefetch) inside its service nursery.

FUSE handlers must answer and return; work that helps later requests is
started here instead. Every task runs in the mount's nursery, so none outlives
the mount, and a task's failure is logged and dropped: read-ahead that fails
must never take the mount down (the read that needs the data reports it).
"""

from __future__ import annotations

import logging

import trio

log = logging.getLogger(__name__)


class Background:
    def __init__(self):
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    @property
    def started(self) -> bool:
        return self._nursery is not None

    def spawn(self, function, *args) -> None:
        """Run `function(*args)` in the background; a no-op before start()."""
        if self._nursery is not None:
            self._nursery.start_soon(self._guarded, function, args)

    @staticmethod
    async def _guarded(function, args) -> None:
        try:
            await function(*args)
        except Exception as error:  # noqa: BLE001 - background help is best effort
            log.info("background %s failed: %s", getattr(function, "__name__", function), error)
