"""A bandwidth limit for uploads: any Store whose puts go no faster than a rate.

Each put waits for its turn on a schedule: it may start once the bytes put
before it have had their time at `bytes_per_second`, then reserves the time
its own bytes take. Reserving happens without an await in between, so
concurrent puts queue fairly and the average upload rate stays at or below the
limit (a single put is sent at full speed once its turn comes; the next one
waits the longer). Reads are not limited: a restore should not wait for the
backup's limit.
"""

from __future__ import annotations

import time

import trio

from cloudfs.errors import UsageError
from cloudfs.store.wrapper import StoreWrapper


class ThrottledStore(StoreWrapper):
    def __init__(self, inner, bytes_per_second: int):
        if bytes_per_second <= 0:
            raise UsageError("the bandwidth limit must be positive")
        super().__init__(inner)
        self.rate = bytes_per_second
        self._next_start = 0.0  # time.monotonic() before which no new put may start

    async def put(self, name, data, *, exclusive=False, sha256=None, retention=None):
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + len(data) / self.rate
        await trio.sleep(start - now)
        await self.inner.put(name, data, exclusive=exclusive, sha256=sha256, retention=retention)
