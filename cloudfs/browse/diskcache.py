"""A bounded on-disk cache of fetched blob records, still sealed.

Records are kept exactly as the store holds them (nonce, AES-GCM ciphertext,
tag), so the cache holds no plaintext (I3), and every record read back is
authenticated and hash-checked again (I5): a damaged cache file costs a fetch,
never a wrong byte.

Layout: segment files `seg-<time>-<random>` of up to `segment_bytes`, written
append-only; each record is `blob id (32) || length (u32 LE) || record`. The
map blob id -> (segment, offset, length) lives in memory and is rebuilt at
start by walking the record headers. When the segments exceed the limit the
oldest segment is deleted (first in, first out: no bookkeeping per read).

Thread-safe: all methods may be called from worker threads at once. Several
processes may share a directory; each appends to segments of its own, and a
segment another process deleted is just a miss.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = struct.Struct("<32sI")
SEGMENT_PREFIX = "seg-"
IOV_BATCH = 512          # well below IOV_MAX (1024)


class DiskCache:
    def __init__(self, directory: Path, limit_bytes: int, segment_bytes: int | None = None):
        self.directory = Path(directory)
        self.limit_bytes = limit_bytes
        self.segment_bytes = segment_bytes or max(1 << 20, min(64 << 20, limit_bytes // 8))
        self._lock = threading.Lock()
        self._records: dict[bytes, tuple[Path, int, int]] = {}
        self._segments: dict[Path, int] = {}      # path -> size, oldest first
        self._current: Path | None = None
        self._current_fd = -1

    # -- start and stop ---------------------------------------------------------------

    def load(self) -> None:
        """Create the directory, forget a torn tail, and index what earlier runs left."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in sorted(self.directory.glob(f"{SEGMENT_PREFIX}*")):
            try:
                self._index_segment(path)
            except OSError as error:
                log.info("cache segment %s unreadable (%s): ignored", path.name, error)
        self._evict()

    def close(self) -> None:
        with self._lock:
            if self._current_fd >= 0:
                os.close(self._current_fd)
                self._current_fd = -1

    def _index_segment(self, path: Path) -> None:
        with open(path, "rb") as segment:
            size = os.fstat(segment.fileno()).st_size
            offset = 0
            while offset + HEADER.size <= size:
                header = segment.read(HEADER.size)
                blob_id, length = HEADER.unpack(header)
                if offset + HEADER.size + length > size:
                    break                     # torn write at the end: ignore the rest
                self._records[blob_id] = (path, offset + HEADER.size, length)
                offset += HEADER.size + length
                segment.seek(offset)
        self._segments[path] = size

    # -- use ----------------------------------------------------------------------------

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._records

    def read(self, blob_id: bytes) -> bytes | None:
        """The cached record of a blob, or None (missing, or its segment is gone)."""
        place = self._records.get(blob_id)
        if place is None:
            return None
        path, offset, length = place
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.discard(blob_id)
            return None
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        return data if len(data) == length else None

    def discard(self, blob_id: bytes) -> None:
        """Forget a record (it failed verification, or its segment vanished)."""
        with self._lock:
            self._records.pop(blob_id, None)

    def add(self, records: list[tuple[bytes, bytes | memoryview]]) -> None:
        """Append records (blob id, sealed record); skip those already cached.
        Errors (a full disk) only make the cache smaller."""
        with self._lock:
            records = [(blob_id, record) for blob_id, record in records if blob_id not in self._records]
            if not records:
                return
            try:
                self._append(records)
            except OSError as error:
                log.info("cannot write the blob cache (%s)", error)
                return
            self._evict()

    def _append(self, records) -> None:
        if self._current is None or self._segments[self._current] >= self.segment_bytes:
            self._start_segment()
        base = self._segments[self._current]
        pieces, places, offset = [], [], base
        for blob_id, record in records:
            pieces += [HEADER.pack(blob_id, len(record)), record]
            places.append((blob_id, offset + HEADER.size, len(record)))
            offset += HEADER.size + len(record)
        position = base
        for start in range(0, len(pieces), IOV_BATCH):
            batch = pieces[start:start + IOV_BATCH]
            position += _pwritev_all(self._current_fd, batch, position)
        self._segments[self._current] = offset
        for blob_id, start, length in places:
            self._records[blob_id] = (self._current, start, length)

    def _start_segment(self) -> None:
        if self._current_fd >= 0:
            os.close(self._current_fd)
        name = f"{SEGMENT_PREFIX}{time.time_ns():020d}-{os.urandom(4).hex()}"
        self._current = self.directory / name
        self._current_fd = os.open(self._current, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._segments[self._current] = 0

    def _evict(self) -> None:
        while sum(self._segments.values()) > self.limit_bytes and len(self._segments) > 1:
            oldest = next(iter(self._segments))
            if oldest == self._current:
                break
            del self._segments[oldest]
            oldest.unlink(missing_ok=True)
            self._records = {blob_id: place for blob_id, place in self._records.items()
                             if place[0] != oldest}

    @property
    def size(self) -> int:
        return sum(self._segments.values())


def _pwritev_all(fd: int, pieces: list, offset: int) -> int:
    """Write every piece at `offset` (pwritev may write less than asked)."""
    total = sum(len(piece) for piece in pieces)
    written = os.pwritev(fd, pieces, offset)
    if written < total:
        rest = b"".join(bytes(piece) for piece in pieces)[written:]
        while rest:
            count = os.pwrite(fd, rest, offset + written)
            written += count
            rest = rest[count:]
    return total
