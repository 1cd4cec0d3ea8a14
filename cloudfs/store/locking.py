"""A store whose every put is locked: S3 Object Lock retention from the moment of writing.

A repository created with `init --object-lock DAYS` is opened through a
LockingStore, so every object any writer stores (chunks, index, snapshot, pin
and policy objects, key slots, config) can be neither deleted nor overwritten
for DAYS: an attacker holding the writer's or the maintenance role's keys can
hide it behind a delete marker or a newer version, never remove it. Keeping
the objects that old snapshots still need locked beyond that is `cloudfs locks
extend`'s job (cloudfs/repo/locks.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Callable

from cloudfs.store.base import Retention, Store
from cloudfs.store.wrapper import StoreWrapper


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class LockingStore(StoreWrapper):
    def __init__(self, inner: Store, mode: str, days: int, *, clock: Callable[[], datetime] = utc_now):
        super().__init__(inner)
        Retention(mode, clock())      # checks the mode
        self.mode = mode
        self.period = timedelta(days=days)
        self.clock = clock

    def retention_from_now(self) -> Retention:
        return Retention(self.mode, self.clock() + self.period)

    async def put(self, name, data, *, exclusive=False, sha256=None, retention=None):
        await self.inner.put(name, data, exclusive=exclusive, sha256=sha256,
                             retention=retention or self.retention_from_now())
