"""The live journal: synchronous, cheap recording; periodic write-out; group commit.

Recording a change (`record_write`, `record_dir`, ...) updates the in-memory state
and appends a 33-byte record to a buffer; nothing blocks and nothing awaits, so a
FUSE handler can do its backing syscall and record it without another request
running in between. The buffer reaches the file (one `os.pwrite`) every
FLUSH_INTERVAL seconds and whenever it passes FLUSH_BYTES, so `kill -9` loses at
most that much, which reconcile covers. `sync()` makes every record so far durable
with one fdatasync in a worker thread that all concurrent callers share (I1).

The file is rewritten from the coalesced state (compaction) when it grows past
COMPACT_FACTOR times that state's size, so rewriting the same blocks forever keeps
it bounded. Concurrency rules: see docs/live.md, "The journal".
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import trio

from cloudfs.live import records
from cloudfs.live.changes import ChangeSet
from cloudfs.live.records import RECORD, FinalStat, JournalState

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal"
FLUSH_INTERVAL = 0.1
FLUSH_BYTES = 256 * 1024
COMPACT_MIN_BYTES = 4 * 1024 * 1024
COMPACT_FACTOR = 4

_pack = RECORD.pack
_WRITE, _TRUNCATE, _META, _DIR, _WHOLE = (
    records.WRITE, records.TRUNCATE, records.META, records.DIR, records.WHOLE)


def read_journal(directory: Path) -> JournalState:
    """Replay the journal in `directory` without changing anything (for `cloudfs changes`).

    A missing journal is an empty one. Safe while a mount appends to it: at worst the
    last partly written batch is left out.
    """
    try:
        data = (directory / JOURNAL_NAME).read_bytes()
    except FileNotFoundError:
        return JournalState()
    return records.replay(data)[0]


class Journal:
    """The journal of one mount session. Create with `Journal.open`.

    Callers may rely on: every `record_*` call is reflected in `pending()` at once
    and on disk within FLUSH_INTERVAL (unless the disk fails, which is logged and
    retried); after `await sync()` returns, every record made before the call is
    durable; `seal()` and `commit()` are O(1) and never block.
    """

    def __init__(self, directory: Path, state: JournalState, fd: int, file_bytes: int):
        self._directory = directory
        self._path = directory / JOURNAL_NAME
        self._state = state
        self._current = state.current  # the hot path's shortcut; replaced at seal
        self._open_epoch_changed = False  # whether the open epoch's first change is timed
        self._fd = fd
        self._file_bytes = file_bytes
        self._buffer = bytearray()
        self._appended = 0  # records appended since open
        self._durable = 0  # of those, how many are known durable
        self._lock = trio.Lock()  # serialises sync and compaction
        self._compacting = False
        self._image_bytes = 0
        self._flush_failed = False
        #: fdatasyncs issued by sync(): group commit keeps this below the number of calls.
        self.syncs = 0
        #: How the previous session ended, as found by the replay.
        self.previous_stop_clean = state.clean_stop
        self.previous_finals = dict(state.finals)
        #: When this session started (its changes are timed from here on).
        self.session_start_ns = time.time_ns()
        # When each inode was last recorded, per uncommitted epoch of this session:
        # what tells a write through the mount from one that bypassed it (rescan.py).
        self._changed_at: dict[int, dict[int, int]] = {state.current_epoch: {}}
        self._changed_now = self._changed_at[state.current_epoch]

    @classmethod
    def open(cls, directory: Path) -> Journal:
        """Replay the journal in `directory` (creating it if missing) and start a session.

        A torn tail left by a crash is cut off, a stale compaction temp file removed,
        and an OPEN record made durable, so a crash from now on reads as unclean.
        """
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / JOURNAL_NAME
        path.with_suffix(".tmp").unlink(missing_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            data = _read_all(fd)
            if data:
                state, valid = records.replay(data)
            else:
                state, valid = JournalState(), 0
                _write_all(fd, records.header(0), 0)
                valid = records.HEADER.size
            os.ftruncate(fd, valid)
            journal = cls(directory, state, fd, valid)
            journal._image_bytes = valid
            journal._append(records.OPEN, time.time_ns())
            journal.flush()
            os.fdatasync(fd)
            _fsync_directory(directory)
        except BaseException:
            os.close(fd)
            raise
        return journal

    # -- recording (synchronous, never blocks) --------------------------------

    def record_write(self, ino: int, offset: int, length: int) -> None:
        self._current.add_range(ino, offset, offset + length)
        self._append_change(_WRITE, ino, offset, length)

    def record_truncate(self, ino: int, size: int) -> None:
        self._current.truncate(ino, size)
        self._append_change(_TRUNCATE, ino, size)

    def record_meta(self, ino: int) -> None:
        self._current.mark_meta(ino)
        self._append_change(_META, ino)

    def record_dir(self, ino: int) -> None:
        self._current.mark_dir(ino)
        self._append_change(_DIR, ino)

    def record_whole(self, ino: int) -> None:
        self._current.mark_whole(ino)
        self._append_change(_WHOLE, ino)

    def record_changes(self, changes: ChangeSet) -> None:
        """Journal a whole change set (what reconcile found) into the open epoch."""
        for ino in changes.whole:
            self.record_whole(ino)
        for ino, ranges in changes.data.items():
            for start, end in ranges:
                self.record_write(ino, start, end - start)
        for ino in changes.meta:
            self.record_meta(ino)
        for ino in changes.dirs:
            self.record_dir(ino)

    def changes_since(self, time_ns: int) -> None:
        """Say that the open epoch's changes may date back to `time_ns` (what reconcile
        finds was changed while unmounted, some time after the last checkpoint)."""
        first = self._state.first_change
        epoch = self._state.current_epoch
        first[epoch] = min(first.get(epoch, time_ns), time_ns)
        self._open_epoch_changed = True

    def _append_change(self, kind: int, a: int, b: int = 0, c: int = 0) -> None:
        now = self._changed_now[a] = time.time_ns()   # `a` is the inode of every change record
        if not self._open_epoch_changed:  # the first change of the epoch: when (the live RPO)
            self._open_epoch_changed = True
            self._state.first_change.setdefault(self._state.current_epoch, now)
        self._append(kind, a, b, c)

    def _append(self, kind: int, a: int, b: int = 0, c: int = 0, d: int = 0) -> None:
        self._buffer += _pack(kind, a, b, c, d)
        self._appended += 1
        if len(self._buffer) >= FLUSH_BYTES:
            self._flush_quietly()

    # -- epochs ---------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The open epoch, which new records belong to."""
        return self._state.current_epoch

    def seal(self) -> tuple[int, ChangeSet]:
        """Close the open epoch and return it with its changes; O(1).

        The returned ChangeSet is frozen from now on (later records go to the next
        epoch). The caller must have flushed the mount first (see DESIGN.md).
        """
        epoch, changes = self._state.seal()
        self._current = self._state.current
        self._changed_now = self._changed_at[self._state.current_epoch] = {}
        self._open_epoch_changed = False
        self._append(records.SEAL, epoch, self._state.first_change.get(epoch, 0))
        return epoch, changes

    def commit(self, epoch: int) -> None:
        """Forget every sealed epoch up to and including `epoch` (it is in a snapshot)."""
        if epoch >= self._state.current_epoch:
            raise ValueError(f"epoch {epoch} is not sealed")
        self._state.commit(epoch)
        for committed in [e for e in self._changed_at if e <= epoch]:
            del self._changed_at[committed]
        self._append(records.COMMIT, epoch)

    def pending(self) -> ChangeSet:
        """Everything not yet in a committed snapshot: all uncommitted epochs."""
        return self._state.pending()

    def uncommitted_epochs(self) -> list[int]:
        return [*self._state.sealed, self._state.current_epoch]

    def sealed_epochs(self) -> list[int]:
        """Sealed epochs not yet committed, oldest first."""
        return list(self._state.sealed)

    def oldest_change_ns(self, unknown: int) -> int | None:
        """When the oldest change not yet in a committed snapshot was made (None: there
        is none); `unknown` stands in where the time was lost in a crash."""
        return self._state.oldest_change_ns(unknown)

    def has_pending(self) -> bool:
        """Whether anything is not yet committed: changes, or sealed epochs (even empty)."""
        return bool(self._state.sealed) or bool(self._state.current)

    def change_times(self) -> dict[int, int]:
        """When this session last recorded each inode whose changes are not yet
        committed (a copy; inodes journaled by an earlier session are not in it)."""
        merged: dict[int, int] = {}
        for changed in self._changed_at.values():   # oldest epoch first: later times win
            merged.update(changed)
        return merged

    def is_pending(self, ino: int) -> bool:
        if self._current.touches(ino):
            return True
        return any(changes.touches(ino) for changes in self._state.sealed.values())

    # -- durability -------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def flush(self) -> None:
        """Write the buffered records to the file (page cache); raises OSError.

        Deferred while a compaction is between building its image and switching
        files: the records stay buffered and go to the new file.
        """
        if not self._buffer or self._compacting:
            return
        data = records.batch(self._buffer)
        _write_all(self._fd, data, self._file_bytes)  # a retry overwrites a torn try
        self._file_bytes += len(data)
        self._buffer.clear()
        if self._flush_failed:
            self._flush_failed = False
            log.warning("journal writes work again")

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except OSError as error:
            if not self._flush_failed:
                log.error("cannot write the journal (%s); keeping records in memory", error)
            self._flush_failed = True

    async def sync(self) -> None:
        """Make every record made so far durable (group commit); raises OSError."""
        target = self._appended
        async with self._lock:
            if self._durable >= target:
                return  # an fdatasync that started after our records covered them
            upto = self._appended
            self.flush()
            await trio.to_thread.run_sync(os.fdatasync, self._fd)
            self.syncs += 1
            self._durable = max(self._durable, upto)

    def needs_compaction(self) -> bool:
        bound = max(COMPACT_MIN_BYTES, COMPACT_FACTOR * self._image_bytes)
        return self._file_bytes > bound

    async def compact(self) -> None:
        """Rewrite the file from the coalesced state: temp file, fsync, rename, fsync dir.

        Records made meanwhile stay buffered (see `flush`). A crash at any point leaves
        either the old or the new file, both complete up to their last batch.
        """
        async with self._lock:
            self.flush()
            upto = self._appended
            # Sealed epochs never change; copying the open one is cheap (C-speed set
            # copies, plus the dirty files' ranges), packing the image is not: that
            # runs in the thread, so a large state does not stall the FUSE loop.
            frozen = JournalState(current_epoch=self._state.current_epoch,
                                  sealed=dict(self._state.sealed), current=self._state.current.copy(),
                                  first_change=dict(self._state.first_change))
            self._compacting = True
            try:
                image = await trio.to_thread.run_sync(records.image, frozen)
                new_fd = await trio.to_thread.run_sync(self._write_temp, image)
                try:
                    os.rename(self._path.with_suffix(".tmp"), self._path)
                except OSError:
                    os.close(new_fd)
                    raise
                old_fd, self._fd = self._fd, new_fd
                self._file_bytes = self._image_bytes = len(image)
                os.close(old_fd)
                await trio.to_thread.run_sync(_fsync_directory, self._directory)
                self._durable = max(self._durable, upto)
            finally:
                self._compacting = False
            self._flush_quietly()
        log.debug("journal compacted to %d bytes", len(image))

    def _write_temp(self, data: bytes) -> int:
        temp = self._path.with_suffix(".tmp")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, data, 0)
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        return fd

    async def run(self) -> None:
        """Background task: write out the buffer and compact when due, until cancelled."""
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            self._flush_quietly()
            if self.needs_compaction() and not self._flush_failed:
                try:
                    await self.compact()
                except OSError as error:
                    log.error("journal compaction failed: %s", error)
                    self._image_bytes = self._file_bytes  # back off until it doubles again

    # -- stopping ---------------------------------------------------------------

    def close_clean(self, finals: dict[int, FinalStat]) -> None:
        """End the session cleanly: compacted state, each dirty inode's final stat,
        and a CLEAN_STOP record, made durable. Call after the FUSE loop has ended."""
        payload = bytearray()
        for ino, final in sorted(finals.items()):
            payload += _pack(records.FINAL, ino, final.size, final.mtime_ns, final.ctime_ns)
        open_epoch_first = self._state.first_change.get(self._state.current_epoch, 0)
        payload += _pack(records.CLEAN_STOP, len(finals), open_epoch_first, 0, 0)
        data = records.image(self._state) + records.batch(payload)
        self._buffer.clear()
        new_fd = self._write_temp(data)
        os.rename(self._path.with_suffix(".tmp"), self._path)
        _fsync_directory(self._directory)
        os.close(new_fd)
        self.close()

    def close(self) -> None:
        """Stop without the clean-stop record (the next mount reconciles conservatively)."""
        if self._fd >= 0:
            self._flush_quietly()
            os.close(self._fd)
            self._fd = -1


class NullJournal:
    """Journaling off (`--no-journal`): the same interface, recording nothing.

    Used to measure what journaling costs. A later journaled mount still finds every
    change made meanwhile, by reconciling against the manifest.
    """

    previous_stop_clean = False
    previous_finals: dict[int, FinalStat] = {}

    def record_write(self, ino: int, offset: int, length: int) -> None:
        pass

    def record_truncate(self, ino: int, size: int) -> None:
        pass

    def record_meta(self, ino: int) -> None:
        pass

    def record_dir(self, ino: int) -> None:
        pass

    def record_whole(self, ino: int) -> None:
        pass

    def has_pending(self) -> bool:
        return False

    def change_times(self) -> dict[int, int]:
        return {}

    def is_pending(self, ino: int) -> bool:
        return False

    def pending(self) -> ChangeSet:
        return ChangeSet()

    async def sync(self) -> None:
        pass

    async def run(self) -> None:
        await trio.sleep_forever()

    def close(self) -> None:
        pass


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.EIO, "journal write made no progress")
        view = view[written:]
        offset += written


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
