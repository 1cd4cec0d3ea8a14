"""A Store that forwards every call to another one; subclasses change what they need.

Used by the bandwidth limit (cloudfs/store/throttle.py) and by tests that
count the requests a real store receives.
"""

from __future__ import annotations

from cloudfs.store.base import Store


class StoreWrapper(Store):
    def __init__(self, inner: Store):
        self.inner = inner
        self.location = inner.location

    async def put(self, name, data, *, exclusive=False, sha256=None, retention=None):
        await self.inner.put(name, data, exclusive=exclusive, sha256=sha256, retention=retention)

    async def get(self, name, offset=0, length=None):
        return await self.inner.get(name, offset, length)

    async def get_verified(self, name, verify, offset=0, length=None):
        if type(self).get is not StoreWrapper.get:   # a wrapper that reads in its own way (--as-of)
            return await verify(await self.get(name, offset, length))
        return await self.inner.get_verified(name, verify, offset, length)

    async def head(self, name):
        return await self.inner.head(name)

    async def list(self, prefix=""):
        return await self.inner.list(prefix)

    async def delete(self, name):
        await self.inner.delete(name)

    async def check(self):
        await self.inner.check()

    async def create_container(self, *, object_lock=False):
        await self.inner.create_container(object_lock=object_lock)

    async def check_object_lock(self):
        await self.inner.check_object_lock()

    async def retention(self, name, version_id=None):
        return await self.inner.retention(name, version_id)

    async def extend_retention(self, name, retention, version_id=None):
        await self.inner.extend_retention(name, retention, version_id)

    async def version_page(self, prefix="", after=None):
        return await self.inner.version_page(prefix, after)

    async def get_version(self, name, version_id, offset=0, length=None):
        return await self.inner.get_version(name, version_id, offset, length)

    async def exists(self, name):
        return await self.inner.exists(name)

    async def aclose(self):
        await self.inner.aclose()
