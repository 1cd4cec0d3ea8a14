"""The two roles' views of a store (I9).

The writer role (mounting, snapshotting, browsing, restoring) may get, put and
list, never delete: it goes through a WriterStore, so a delete on any of those
paths fails loudly instead of removing an object. The maintenance role
(forget, unpin, policy changes, key removal, index repair, lock extension,
init's cleanup) gets a MaintenanceStore, which deletes, and which says in one
line which permission its credentials lack when the store refuses it: those
credentials may be separate ones (`--maintenance-profile`,
`--maintenance-credentials`). The CLI decides which role a command has
(cloudfs/cli/common.py).
"""

from __future__ import annotations

from cloudfs.errors import AccessDenied, MaintenanceOnly
from cloudfs.store.wrapper import StoreWrapper

HOW_TO_GIVE = ("use --maintenance-profile PROFILE or --maintenance-credentials FILE "
               "with credentials that may")


class WriterStore(StoreWrapper):
    async def delete(self, name):
        raise MaintenanceOnly(f"refusing to delete {name}: deleting is maintenance work, "
                              "and this command has the writer's access")


class MaintenanceStore(StoreWrapper):
    async def put(self, name, data, *, exclusive=False, sha256=None, retention=None):
        try:
            await self.inner.put(name, data, exclusive=exclusive, sha256=sha256, retention=retention)
        except AccessDenied as error:
            raise _role_lacks("write", error) from None

    async def delete(self, name):
        try:
            await self.inner.delete(name)
        except AccessDenied as error:
            raise _role_lacks("delete", error) from None

    async def extend_retention(self, name, retention, version_id=None):
        try:
            await self.inner.extend_retention(name, retention, version_id)
        except AccessDenied as error:
            raise _role_lacks("extend Object Lock retention", error) from None

    async def retention(self, name, version_id=None):
        try:
            return await self.inner.retention(name, version_id)
        except AccessDenied as error:
            raise _role_lacks("read Object Lock retention", error) from None


def _role_lacks(what: str, error: AccessDenied) -> AccessDenied:
    permission = error.permission or "permission denied"
    return AccessDenied(f"the maintenance role cannot {what} ({permission}): {HOW_TO_GIVE}",
                        permission=error.permission)
