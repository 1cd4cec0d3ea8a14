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

    async def put(self, name, data, *, exclusive=False, sha256=None):
        await self.inner.put(name, data, exclusive=exclusive, sha256=sha256)

    async def get(self, name, offset=0, length=None):
        return await self.inner.get(name, offset, length)

    async def head(self, name):
        return await self.inner.head(name)

    async def list(self, prefix=""):
        return await self.inner.list(prefix)

    async def delete(self, name):
        await self.inner.delete(name)

    async def check(self):
        await self.inner.check()

    async def create_container(self):
        await self.inner.create_container()

    async def exists(self, name):
        return await self.inner.exists(name)

    async def aclose(self):
        await self.inner.aclose()
