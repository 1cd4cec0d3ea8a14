"""Helpers for prune's tests: a store whose clock the test moves, two roles on one repository.

`AgedStore.age(by)` makes every object stored so far (leases aside) look `by`
older in listings: the store's clock, by which prune judges ages and grace
periods, moves on for them without anyone sleeping; objects stored later keep
their times. Writers and prune each open the repository
with their own local index, as two machines would.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import trio

from cloudfs.repo import Repository
from cloudfs.repo.lease import LEASES_PREFIX
from cloudfs.snapshot.prune.run import PruneOptions, prune
from cloudfs.store.roles import MaintenanceStore, WriterStore
from cloudfs.store.wrapper import StoreWrapper
from tests.repo_helpers import PASSPHRASE

HOUR = timedelta(hours=1)

class AgedStore(StoreWrapper):
    def __init__(self, inner):
        super().__init__(inner)
        self.agings: list[tuple[datetime, timedelta]] = []
        self.listed: list[str] = []          # prefixes listed, in order

    def age(self, by: timedelta = 2 * HOUR) -> None:
        self.agings.append((datetime.now(timezone.utc), by))

    async def list(self, prefix=""):
        self.listed.append(prefix)
        return [self._aged(info) for info in await self.inner.list(prefix)]

    def _aged(self, info):
        if info.name.startswith(LEASES_PREFIX) or info.modified is None:
            return info
        shift = sum((by for cutoff, by in self.agings if info.modified <= cutoff), timedelta(0))
        return dataclasses.replace(info, modified=info.modified - shift)


async def open_roles(store) -> tuple[Repository, Repository]:
    """The repository as a writer sees it and as the maintainer does."""
    writer = await Repository.open(WriterStore(store), PASSPHRASE, use_cache=False)
    maintainer = await Repository.open(MaintenanceStore(store), PASSPHRASE, use_cache=False)
    return writer, maintainer


async def prune_once(repo: Repository, grace: timedelta = HOUR, **options):
    return await prune(repo, PruneOptions(grace=grace, **options))


def stored_bytes(store, prefix: str = "chunks/") -> int:
    async def run():
        return sum(info.size for info in await store.list(prefix))
    return trio.run(run)
