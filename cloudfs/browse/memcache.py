"""Verified plaintexts in memory, bounded in bytes, that a scan does not flush.

A plain LRU loses everything to one large sequential copy: every block of it
is newer than anything else, and none of them will be read again (the kernel's
page cache keeps what the copy read). So this is a segmented LRU:

- a blob enters *probation*; a second use moves it to the *protected*
  segment, which may hold at most `protected_share` of the bound (its least
  recently used blobs fall back to probation);
- eviction takes probation's least recently used blob first, protected's only
  when probation is empty.

A copy, whose blocks are each used once, cycles through probation and leaves
protected alone: the directories' small files, a file a program reads twice.
Read-ahead puts blobs in *unused* (`put(..., used=False)`): the read it
fetched them for is their first use, not their second, so read-ahead does
not promote a stream either. Probation keeps at least the bound less the
protected share, which is more than the fetcher's read-ahead budget, so
blobs read ahead are still there when their read comes.

Not thread-safe: the mount's event loop is its only user.
"""

from __future__ import annotations

from collections import OrderedDict

PROTECTED_SHARE = 0.5


class MemoryCache:
    def __init__(self, limit_bytes: int, protected_share: float = PROTECTED_SHARE):
        self.limit_bytes = limit_bytes
        self.protected_limit = int(limit_bytes * protected_share)
        self.size = 0
        self._probation: OrderedDict[bytes, bytes] = OrderedDict()
        self._protected: OrderedDict[bytes, bytes] = OrderedDict()
        self._protected_size = 0
        self._unused: set[bytes] = set()       # in probation, put there ahead of any read

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._probation or blob_id in self._protected

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def get(self, blob_id: bytes) -> bytes | None:
        """The plaintext, counted as a use (a second use protects it)."""
        data = self._protected.get(blob_id)
        if data is not None:
            self._protected.move_to_end(blob_id)
            return data
        data = self._probation.get(blob_id)
        if data is None:
            return None
        if blob_id in self._unused:
            self._unused.discard(blob_id)
            self._probation.move_to_end(blob_id)
        else:
            self._promote(blob_id)
        return data

    def put(self, blob_id: bytes, data: bytes, *, used: bool = True) -> None:
        """Keep a plaintext; `used` False for blobs fetched ahead of their read."""
        if blob_id in self or len(data) > self.limit_bytes:
            return
        self._probation[blob_id] = data
        self.size += len(data)
        if not used:
            self._unused.add(blob_id)
        self._evict()

    def _promote(self, blob_id: bytes) -> None:
        data = self._probation.pop(blob_id)
        self._protected[blob_id] = data
        self._protected_size += len(data)
        while self._protected_size > self.protected_limit and len(self._protected) > 1:
            demoted, value = self._protected.popitem(last=False)
            self._protected_size -= len(value)
            self._probation[demoted] = value

    def _evict(self) -> None:
        while self.size > self.limit_bytes:
            if self._probation:
                blob_id, data = self._probation.popitem(last=False)
                self._unused.discard(blob_id)
            else:
                blob_id, data = self._protected.popitem(last=False)
                self._protected_size -= len(data)
            self.size -= len(data)
