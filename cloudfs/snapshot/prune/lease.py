"""One prune at a time: a lease object, kept renewed while the prune runs (R7).

`holding_lease` stores a lease, lists every lease, and gives up (PruneBusy,
its own lease removed) if another is still valid: stored less than its
duration ago by the store's clock (its LastModified against the one the
store gave ours), and not held by a process of this machine that has ended.
Stale leases are removed. While the prune runs, a new lease replaces the
last every third of the duration; a prune that could not renew in time
stops before its next deletion (`check_held`) rather than act beside a
prune that took over. The lease also gives the store's clock: `store_now`,
when the store received our lease, is what grace periods are measured from
(R6), never this machine's clock.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import trio

from cloudfs.errors import CloudfsError
from cloudfs.repo import Repository
from cloudfs.repo.lease import LEASES_PREFIX, Lease
from cloudfs.snapshot.prune.guard import boot_clock

log = logging.getLogger(__name__)

DURATION = timedelta(minutes=30)


class PruneBusy(CloudfsError):
    """Another prune holds the repository (or this one lost its lease)."""


class LeaseKeeper:
    def __init__(self, repo: Repository, duration: timedelta):
        self.repo = repo
        self.duration = duration
        self.store_now: datetime | None = None    # when the store received our first lease
        self._current: Lease | None = None
        self._renewed_at = 0.0                    # boot clock

    async def take(self) -> None:
        lease = await self._put()
        listed = await self.repo.store.list(LEASES_PREFIX)
        mine = next(info for info in listed if info.name == lease.name)
        self.store_now = mine.modified
        busy, stale = [], []
        for info in listed:
            if info.name == lease.name:
                continue
            other = await self._read(info.name)
            if (other is not None and other.holder_is_gone()) or info.modified + _duration(other) <= mine.modified:
                stale.append(info.name)
            else:
                busy.append((info, other))
        if busy:
            await self.release()
            raise PruneBusy(_busy_message(*busy[0]))
        for name in stale:
            log.info("removing the stale prune lease %s", name)
            await self.repo.store.delete(name)

    async def keep_renewed(self) -> None:
        while True:
            await trio.sleep(self.duration.total_seconds() / 3)
            previous = self._current
            await self._put()
            await self.repo.store.delete(previous.name)

    def check_held(self) -> None:
        """Raise PruneBusy if the lease may have run out (it could not be renewed)."""
        if boot_clock() - self._renewed_at > self.duration.total_seconds() * 0.8:
            raise PruneBusy("this prune could not renew its lease in time; stopping before another "
                            "prune may take over (run it again)")

    async def release(self) -> None:
        if self._current is not None:
            await self.repo.store.delete(self._current.name)
            self._current = None

    async def _put(self) -> Lease:
        started = boot_clock()
        lease = Lease(int(self.duration.total_seconds() * 1e9)).with_name()
        await self.repo.store.put(lease.name, lease.seal(self.repo.master), exclusive=True)
        self._current, self._renewed_at = lease, started
        return lease

    async def _read(self, name: str) -> Lease | None:
        try:
            return await self.repo.lease(name)
        except CloudfsError as error:      # unreadable: valid for the default duration
            log.warning("unreadable prune lease %s: %s", name, error)
            return None


def _busy_message(info, other: Lease | None) -> str:
    who = f"{other.user}@{other.host} (pid {other.pid})" if other else "an unreadable lease"
    until = info.modified + _duration(other)
    return (f"another prune holds the repository: {info.name}, {who}, since "
            f"{info.modified:%Y-%m-%d %H:%M:%S} UTC; wait for it to finish (or, if it died on "
            f"another machine, until its lease runs out at {until:%Y-%m-%d %H:%M:%S} UTC)")


def _duration(lease: Lease | None) -> timedelta:
    """How long a lease is valid (an unreadable one: the default)."""
    return DURATION if lease is None else timedelta(microseconds=lease.duration_ns / 1000)


@asynccontextmanager
async def holding_lease(repo: Repository, duration: timedelta = DURATION):
    """The lease, renewed in the background until the block ends; then removed."""
    keeper = LeaseKeeper(repo, duration)
    await keeper.take()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keeper.keep_renewed)
            try:
                yield keeper
            finally:
                nursery.cancel_scope.cancel()
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                await keeper.release()
            except CloudfsError as error:     # the first error is the one to report
                log.warning("cannot remove the prune lease: %s", error)
        raise
    with trio.CancelScope(shield=True):
        await keeper.release()
