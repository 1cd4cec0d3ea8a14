"""The journal's on-disk format and its replay; pure functions over bytes.

A journal file is a header followed by batches. Each batch is what one `os.write`
put on disk: its payload length, the CRC-32 of the payload, then fixed-size records.
A torn or damaged batch ends the journal there (everything after it is ignored), so
a crash in the middle of a write never yields half a record.

    header  = magic "CLOUDFSJ" | version u32 | flags u32 | base_epoch u64
    batch   = length u32 | crc32 u32 | length bytes of records
    record  = kind u8 | a u64 | b u64 | c i64 | d i64           (33 bytes, little endian)

Record kinds and their fields:

    WRITE      a=ino b=offset c=length      bytes [offset, offset+length) written
    TRUNCATE   a=ino b=size                 size set: [size, end of file) changed, meta
    META       a=ino                        attributes, xattrs or link count changed
    DIR        a=ino                        entries of directory ino changed
    WHOLE      a=ino                        re-read the inode entirely
    SEAL       a=epoch b=first_change_ns    epoch `a` is closed; later records are a+1.
                                            b: when its first change was made (0: unknown)
    COMMIT     a=epoch                      epochs <= a are in a committed snapshot
    OPEN       a=time_ns                    a mount session started
    FINAL      a=ino b=size c=mtime_ns d=ctime_ns   stat of a dirty inode at clean stop
    CLEAN_STOP a=number of FINAL records    the session ended cleanly (last record)
               b=first_change_ns            of the open epoch (0: none or unknown)

Records carry no epoch: the header names the first epoch, and each SEAL starts the
next one. `docs/live.md` explains why the format is shaped this way.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

from cloudfs.live.changes import ChangeSet

MAGIC = b"CLOUDFSJ"
VERSION = 1
HEADER = struct.Struct("<8sIIQ")
BATCH = struct.Struct("<II")
RECORD = struct.Struct("<BQQqq")
RECORD_SIZE = RECORD.size

WRITE, TRUNCATE, META, DIR, WHOLE, SEAL, COMMIT, OPEN, FINAL, CLEAN_STOP = range(1, 11)

#: Upper bound of one batch's payload when writing images (keeps CRC spans small).
IMAGE_BATCH_BYTES = 64 * 1024


class JournalFormatError(Exception):
    """The file is not a journal this version can read."""


class FinalStat(NamedTuple):
    """What a dirty inode looked like when the mount stopped cleanly."""

    size: int
    mtime_ns: int
    ctime_ns: int


@dataclass
class JournalState:
    """The in-memory meaning of a journal: every uncommitted epoch's changes.

    `sealed` maps each sealed but uncommitted epoch to its changes, oldest first;
    `current` collects the open epoch `current_epoch`. `clean_stop` and `finals`
    describe how the last session ended (only meaningful right after a replay).
    """

    current_epoch: int = 0
    sealed: dict[int, ChangeSet] = field(default_factory=dict)
    current: ChangeSet = field(default_factory=ChangeSet)
    clean_stop: bool = False
    finals: dict[int, FinalStat] = field(default_factory=dict)
    sessions: int = 0
    #: epoch -> when its first change was recorded (ns), where known (the live RPO).
    first_change: dict[int, int] = field(default_factory=dict)
    _pending_finals: dict[int, FinalStat] = field(default_factory=dict, repr=False)

    @property
    def base_epoch(self) -> int:
        """The oldest epoch not yet committed."""
        return next(iter(self.sealed), self.current_epoch)

    def seal(self) -> tuple[int, ChangeSet]:
        epoch, changes = self.current_epoch, self.current
        self.sealed[epoch] = changes
        self.current_epoch += 1
        self.current = ChangeSet()
        return epoch, changes

    def commit(self, epoch: int) -> None:
        for sealed_epoch in [e for e in self.sealed if e <= epoch]:
            del self.sealed[sealed_epoch]
        for known in [e for e in self.first_change if e <= epoch]:
            del self.first_change[known]

    def oldest_change_ns(self, unknown: int) -> int | None:
        """When the oldest change not yet committed was made; `unknown` stands in for
        an epoch with changes whose time was lost (a crash before its seal)."""
        times = [self.first_change.get(epoch, unknown)
                 for epoch, changes in (*self.sealed.items(), (self.current_epoch, self.current))
                 if changes]
        return min(times) if times else None

    def pending(self) -> ChangeSet:
        """The union of every uncommitted epoch, the open one included."""
        union = ChangeSet()
        for changes in self.sealed.values():
            union.update(changes)
        union.update(self.current)
        return union

    def apply(self, kind: int, a: int, b: int, c: int, d: int) -> None:
        """Replay one record."""
        if kind == WRITE:
            self.current.add_range(a, b, b + c)
        elif kind == TRUNCATE:
            self.current.truncate(a, b)
        elif kind == META:
            self.current.mark_meta(a)
        elif kind == DIR:
            self.current.mark_dir(a)
        elif kind == WHOLE:
            self.current.mark_whole(a)
        elif kind == SEAL:
            if a != self.current_epoch:
                raise JournalFormatError(f"seal of epoch {a} while epoch {self.current_epoch} is open")
            if b:
                self.first_change[a] = b
            self.seal()
        elif kind == COMMIT:
            self.commit(a)
        elif kind == OPEN:
            self.sessions += 1
        elif kind == FINAL:
            self._pending_finals[a] = FinalStat(b, c, d)
        elif kind == CLEAN_STOP:
            self.finals, self._pending_finals = self._pending_finals, {}
            self.clean_stop = True
            if b:
                self.first_change[self.current_epoch] = b
            return
        else:
            raise JournalFormatError(f"unknown record kind {kind}")
        if kind != FINAL:
            self.clean_stop = False
            self.finals = {}


def header(base_epoch: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, 0, base_epoch)


def batch(payload: bytes | bytearray) -> bytes:
    """Frame `payload` (whole records) so replay can tell it arrived complete."""
    return BATCH.pack(len(payload), zlib.crc32(payload)) + payload


def replay(data: bytes) -> tuple[JournalState, int]:
    """Rebuild the state a journal describes; also return where its valid part ends.

    Bytes after the first damaged or incomplete batch are ignored (a crash can only
    tear the tail). A wrong magic or version raises JournalFormatError.
    """
    if len(data) < HEADER.size:
        raise JournalFormatError("journal is shorter than its header")
    magic, version, _flags, base_epoch = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise JournalFormatError("not a cloudfs journal")
    if version != VERSION:
        raise JournalFormatError(f"journal format version {version} is not supported")
    state = JournalState(current_epoch=base_epoch)
    offset = HEADER.size
    while offset + BATCH.size <= len(data):
        length, crc = BATCH.unpack_from(data, offset)
        start, end = offset + BATCH.size, offset + BATCH.size + length
        if end > len(data) or length % RECORD_SIZE:
            break
        payload = memoryview(data)[start:end]
        if zlib.crc32(payload) != crc:
            break
        for record in RECORD.iter_unpack(payload):
            state.apply(*record)
        offset = end
    return state, offset


def image(state: JournalState) -> bytes:
    """A compact journal equivalent to `state` (finals and sessions are not kept)."""
    out = bytearray(header(state.base_epoch))
    payload = bytearray()

    def emit(kind: int, a: int, b: int = 0, c: int = 0, d: int = 0) -> None:
        payload.extend(RECORD.pack(kind, a, b, c, d))
        if len(payload) >= IMAGE_BATCH_BYTES:
            out.extend(batch(payload))
            payload.clear()

    for epoch, changes in state.sealed.items():
        _emit_changes(emit, changes)
        emit(SEAL, epoch, state.first_change.get(epoch, 0))
    _emit_changes(emit, state.current)
    if payload:
        out.extend(batch(payload))
    return bytes(out)


def _emit_changes(emit, changes: ChangeSet) -> None:
    for ino in sorted(changes.whole):
        emit(WHOLE, ino)
    for ino, ranges in sorted(changes.data.items()):
        for start, end in ranges:
            emit(WRITE, ino, start, end - start)
    for ino in sorted(changes.meta):
        emit(META, ino)
    for ino in sorted(changes.dirs):
        emit(DIR, ino)


def image_size_estimate(state: JournalState) -> int:
    """Roughly how many bytes `image(state)` would take, without building it."""
    records = len(state.sealed)
    for changes in (*state.sealed.values(), state.current):
        records += len(changes.whole) + len(changes.meta) + len(changes.dirs)
        records += sum(len(ranges) for ranges in changes.data.values())
    return HEADER.size + records * RECORD_SIZE * (1 + BATCH.size / IMAGE_BATCH_BYTES)
