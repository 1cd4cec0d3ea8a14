"""The writer role's view of a store: get, put, head and list, never delete (I9).

Mounting, snapshotting, browsing and restoring go through a WriterStore, so a
delete on any of those paths fails loudly instead of removing an object; only
the maintenance role (forget, unpin, key removal, index repair, init's
cleanup) gets the store itself. The CLI decides which role a command has
(cloudfs/cli/common.py).
"""

from __future__ import annotations

from cloudfs.errors import MaintenanceOnly
from cloudfs.store.wrapper import StoreWrapper


class WriterStore(StoreWrapper):
    async def delete(self, name):
        raise MaintenanceOnly(f"refusing to delete {name}: deleting is maintenance work, "
                              "and this command has the writer's access")
