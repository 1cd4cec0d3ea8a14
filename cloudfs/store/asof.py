"""A store as it was at one moment in the past, read from a versioned bucket.

Someone holding delete rights can still overwrite objects or hide them behind
delete markers; versions stay underneath (and with Object Lock cannot be
removed). `AsOfStore` reads every object as it was at `moment`: a version
written after it is ignored, and so is a delete marker placed after it. It is
read-only: restore, browse and check read through it (`--as-of TIME`).

Names resolve to version ids one folder at a time (`chunks/ab/`, `index/`,
`snapshots/`, ...): the first read in a folder lists that folder's versions
once, and a listing (`list`) remembers every folder it covered whole. Folders
are kept in an LRU bounded by the number of names, so memory stays bounded
however large the repository (chunks are 64 MiB: a TiB is 16k names).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from cloudfs.errors import ObjectNotFound, UsageError
from cloudfs.store.base import ObjectInfo, ObjectVersion, Store
from cloudfs.store.versions import version_at, versions_by_name
from cloudfs.store.wrapper import StoreWrapper

MAX_NAMES = 200_000      # names whose version ids are kept (about 200 bytes each)


def folder_of(name: str) -> str:
    """`chunks/ab/` for `chunks/ab/abcd…`; a name without `/` is its own folder."""
    head, slash, _ = name.rpartition("/")
    return head + slash if slash else name


class AsOfStore(StoreWrapper):
    def __init__(self, inner: Store, moment: datetime, *, max_names: int = MAX_NAMES):
        if moment.tzinfo is None:
            raise ValueError("the moment must be an aware datetime")
        super().__init__(inner)
        self.moment = moment
        self.location = f"{inner.location} (as of {moment:%Y-%m-%d %H:%M:%S %Z})"
        self._max_names = max_names
        self._folders: OrderedDict[str, dict[str, ObjectVersion]] = OrderedDict()
        self._names = 0

    # -- reading ---------------------------------------------------------------------

    async def list(self, prefix=""):
        found, folders = [], {}
        async for name, versions in versions_by_name(self.inner, prefix):
            version = version_at(versions, self.moment)
            if version is not None:
                found.append(ObjectInfo(name, version.size, version.modified))
                folders.setdefault(folder_of(name), {})[name] = version
        for folder, names in folders.items():
            if folder.startswith(prefix):      # the listing covered the whole folder
                self._remember(folder, names)
        return found

    async def get(self, name, offset=0, length=None):
        version = await self._version(name)
        return await self.inner.get_version(name, version.version_id, offset, length)

    async def head(self, name):
        return ObjectInfo(name, (await self._version(name)).size)

    async def exists(self, name):
        try:
            await self._version(name)
        except ObjectNotFound:
            return False
        return True

    async def retention(self, name, version_id=None):
        return await self.inner.retention(name, version_id or (await self._version(name)).version_id)

    # -- writing is refused ------------------------------------------------------------

    async def put(self, name, data, *, exclusive=False, sha256=None, retention=None):
        raise UsageError(f"refusing to write {name}: {self.location} is the past, read-only")

    async def delete(self, name):
        raise UsageError(f"refusing to delete {name}: {self.location} is the past, read-only")

    async def extend_retention(self, name, retention, version_id=None):
        raise UsageError(f"refusing to change {name}: {self.location} is the past, read-only")

    # -- names to versions ---------------------------------------------------------------

    async def _version(self, name: str) -> ObjectVersion:
        folder = folder_of(name)
        names = self._folders.get(folder)
        if names is None:
            names = await self._load(folder)
        else:
            self._folders.move_to_end(folder)
        version = names.get(name)
        if version is None:
            raise ObjectNotFound(name, f"object {name!r} did not exist at {self.location}")
        return version

    async def _load(self, folder: str) -> dict[str, ObjectVersion]:
        names = {}
        async for name, versions in versions_by_name(self.inner, folder):
            version = version_at(versions, self.moment)
            if version is not None and folder_of(name) == folder:
                names[name] = version
        self._remember(folder, names)
        return names

    def _remember(self, folder: str, names: dict[str, ObjectVersion]) -> None:
        previous = self._folders.pop(folder, None)
        self._names -= len(previous) if previous else 0
        self._folders[folder] = names
        self._names += len(names)
        while self._names > self._max_names and len(self._folders) > 1:
            _, evicted = self._folders.popitem(last=False)
            self._names -= len(evicted)
