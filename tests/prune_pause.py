"""Run `cloudfs` frozen at one step of a prune, for kill -9 tests.

    python -m tests.prune_pause MARKER WHEN PREFIX N cloudfs-arguments...

WHEN is `after-put` or `before-delete`: at the Nth such request of the
maintenance role on a name starting with PREFIX, the process creates MARKER
and stops (its trio loop blocked, lease renewal included) until killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cloudfs.store.roles import MaintenanceStore


def freeze_at(marker: str, when: str, prefix: str, count: int) -> None:
    put, delete = MaintenanceStore.put, MaintenanceStore.delete
    seen = [0]

    def reached(name: str) -> None:
        if name.startswith(prefix):
            seen[0] += 1
            if seen[0] == count:
                Path(marker).touch()
                while True:
                    time.sleep(60)

    async def paused_put(self, name, data, **options):
        await put(self, name, data, **options)
        if when == "after-put":
            reached(name)

    async def paused_delete(self, name):
        if when == "before-delete":
            reached(name)
        await delete(self, name)

    MaintenanceStore.put, MaintenanceStore.delete = paused_put, paused_delete


if __name__ == "__main__":
    marker, when, prefix, count, *arguments = sys.argv[1:]
    freeze_at(marker, when, prefix, int(count))
    from cloudfs.cli import main

    sys.exit(main(arguments))
