"""The snapshot daemon of a live mount: when to seal, one upload at a time, commits; the control socket.

Wiring only. Sealing and copy-on-write are `cloudfs.live.seal`/`frozen`; building
and committing a snapshot is `cloudfs.uploader.Uploader`; the periodic rescan for
writes that bypassed the mount is `cloudfs.live.rescan`; the socket protocol is
`cloudfs.control`. What this module decides:

- **When to seal**: every `interval` seconds if anything changed; when asked
  (`cloudfs snapshot`); before unmounting (`final_snapshot`, bounded); a while
  after a snapshot was given up. At most one snapshot is in flight: a seal
  asked for during an upload happens when that upload ends.
- **Which previous snapshot**: the one the manifest describes (its checkpoint),
  which is what the journal's pending changes are relative to; if the manifest
  describes none (first mount, another repository, other exclusions, a state
  directory reset) the seal is full and the newest snapshot of this host and
  SOURCE, if any, is the parent.
- **Tags** asked for with `cloudfs snapshot --tag` go into the next seal's
  snapshot (the seal that serves that request); if that snapshot is given up,
  they go to the one that retries it.
- **Commit**: once `Uploader.commit` returns, the manifest (the tree as of the
  seal, computed while uploading) is saved with its checkpoint, then
  `journal.commit(epoch)`; spool and graveyard are dropped. A crash between the
  two re-reads a little at the next mount, never misses anything.

Everything here runs on the trio thread of the mount process.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import random
import shutil
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import trio

from cloudfs.alerts import Alarm, AlertBook, PinningContext
from cloudfs.control import server as control_server
from cloudfs.errors import AccessDenied, CloudfsError, StoreUnavailable, UsageError, leaf_errors
from cloudfs.live.capture import manifest_delta
from cloudfs.live.capturestore import remove_leftovers as remove_capture_leftovers
from cloudfs.live.graveyard import Graveyard
from cloudfs.live.journal import NullJournal
from cloudfs.live.manifest import Checkpoint, Manifest, ManifestDelta
from cloudfs.live.rescan import DEFAULT_INTERVAL as DEFAULT_RESCAN_INTERVAL, Rescanner
from cloudfs.live.seal import Sealed, Sealer
from cloudfs.live.spool import Spool, SpoolFull
from cloudfs.live.startup import StartupReconcile
from cloudfs.malloc import give_back_freed
from cloudfs.repo import Repository, Snapshot
from cloudfs.repo.snapshots import SNAPSHOTS_PREFIX
from cloudfs.repo.config import parse_compression
from cloudfs.repo.replicas import replicated_store, target_for
from cloudfs.repo.targets import TargetRecord
from cloudfs.repo.snapshots import checked_tags
from cloudfs.snapshot.source import exclusion_matcher
from cloudfs.store.base import Store
from cloudfs.store.replicated import ReplicatedStore
from cloudfs.store.roles import WriterStore
from cloudfs.system.drills import last_drill
from cloudfs.uploader import Uploader, latest_snapshot_of

log = logging.getLogger(__name__)

FINAL_TIMEOUT = 30.0           # default seconds a signal's final snapshot may take before unmounting
RETRY_AFTER_FAILURE = 15.0     # seconds before a fresh seal after a snapshot was given up
TARGETS_DIR = "targets"        # the targets' backlogs, in the state directory
QUORUM_PATIENCE = 2.0          # seconds before status says a snapshot waits for targets
STORE_RETRY_BASE, STORE_RETRY_MAX = 1.0, 60.0


@dataclass
class BackupSettings:
    """What `cloudfs mount --repo` asked for. The repository is opened (passphrase,
    network) before mounting, so that its errors reach the command line."""

    repo: Repository
    location: str
    reopen_store: Callable[[], Store]     # the store afresh, in the serving process
    interval: float = 300.0
    spool_limit: int = 1 << 30
    exclude: list[str] = field(default_factory=list)
    show_progress: bool = False           # a progress bar on stderr for full snapshots
    compression: str | None = None        # e.g. "zstd:3" or "none"; None: the repository's
    unreachable: str | None = None        # why the repository was opened from local copies
    final_timeout: float = FINAL_TIMEOUT  # seconds the final snapshot on a signal may take
    targets: list[TargetRecord] = field(default_factory=list)   # none: kept at `location` only
    required_targets: int | None = None   # K: how many must hold a snapshot (None: all)
    target_store: Callable[[TargetRecord], Store] | None = None  # a target's store, in this process

    def serving_repository(self) -> Repository:
        """The opened repository with a store (connections, threads) of this process:
        after --daemon forks, nothing of the parent's store is used, and the local
        index opens its own connection here (the parent released its own)."""
        opened = self.repo
        repo = Repository(self.reopen_store(), opened.master, opened.config, opened.slot, opened.cache,
                          index=opened.index)
        if self.compression is not None:
            repo.compression_level = parse_compression(self.compression)
        return repo


class _PreviousGone(CloudfsError):
    """The snapshot the journal is relative to is no longer in the repository."""


@dataclass
class _SealRecord:
    ticket: int                 # requests up to this ticket are served by this seal
    epoch: int | None
    time_ns: int | None
    error: str | None = None


class SnapshotDaemon:
    """Snapshots of one live mount (or, without settings, only its status)."""

    def __init__(self, *, source: Path, mountpoint: Path, state_dir: Path, operations, source_fd: int,
                 device: str | None, settings: BackupSettings | None,
                 unmount: Callable[[], Awaitable[None]],
                 rescan_interval: float | None = DEFAULT_RESCAN_INTERVAL,
                 startup: StartupReconcile | None = None):
        #: The startup walk, journaling what changed while unmounted: no seal before it
        #: is done (None: nothing to wait for, a first mount).
        self._startup = startup
        self._reconciled = startup.done if startup is not None else None
        self.source = source
        self.mountpoint = mountpoint
        self.state_dir = state_dir
        self.operations = operations
        self.journal = operations.journal
        self.settings = settings
        self._unmount = unmount
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._wanted = 0
        self._startup_decided = trio.Event()        # whether what was pending at startup is sealed
        self._startup_ticket: int | None = None     # ... and the seal request that does it
        self._wanted_tags: dict[str, None] = {}   # for the next seal, in the order asked
        self._seals: collections.deque[_SealRecord] = collections.deque(maxlen=256)
        self._commits: collections.deque[tuple[int, str]] = collections.deque(maxlen=256)
        self._inflight: Sealed | None = None
        self._retry_at: float | None = None
        self._failures = 0
        self._last_error: str | None = None
        self.history: collections.deque[dict] = collections.deque(maxlen=20)
        uncommitted = getattr(self.journal, "uncommitted_epochs", lambda: [0])()
        self._committed_epoch = uncommitted[0] - 1
        if settings is not None:
            self._prepare_snapshots(settings, source_fd, device)
        self._source_fd = source_fd
        self._first_baseline: Manifest | None = None
        self.rescanner = None if isinstance(self.journal, NullJournal) else Rescanner(
            self.journal, source_fd, self._baseline, rescan_interval)
        self.alarm = self._arm_tripwire()

    def _prepare_snapshots(self, settings: BackupSettings, source_fd: int, device: str | None) -> None:
        """Repository, uploader, spool, graveyard, sealer, and what the manifest describes."""
        self.repo = settings.serving_repository()
        self.replicas: ReplicatedStore | None = None
        if settings.targets:
            self._use_targets(settings.targets)
        self._waiting_for_targets: str | None = None
        self.exclude = exclusion_matcher(settings.exclude)
        self.uploader = Uploader(self.repo, str(self.source), None, self.exclude)
        self.spool = Spool(self.state_dir, settings.spool_limit)
        self.spool.clear()
        self.graveyard = Graveyard(source_fd)
        self.sealer = Sealer(self.operations, self.journal, source_fd, str(self.mountpoint), device,
                             self.spool, self.graveyard, self.repo.config.block_size, self.exclude,
                             self.state_dir)
        remove_capture_leftovers(self.state_dir)
        self.manifest: Manifest = Manifest.open(self.state_dir)
        self._trusted = self._manifest_describes_a_snapshot()
        self._force_full = False
        self._index_complete = trio.Event()
        if settings.unreachable is None:
            self._index_complete.set()
        else:   # opened from local copies: status says so until the store answers
            self.uploader.status.store_error = settings.unreachable
            self.uploader.status.store_error_since_ns = time.time_ns()
        checkpoint = self.manifest.checkpoint
        if self._trusted and checkpoint.time_ns:  # what status shows until the next commit
            self.uploader.status.last_snapshot = checkpoint.snapshot
            self.uploader.status.last_snapshot_time_ns = checkpoint.time_ns
        self._next_seal_at = time.time() + settings.interval

    # -- starting and stopping ------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Serve the control socket, then seal what is pending from before (or everything,
        for a first snapshot) while no FUSE request is served yet, then run the snapshot
        loop. The socket comes first so that a command asking the mount (`cloudfs flush`
        right after `cloudfs mount --daemon`) finds it; it is answered after the seal."""
        self._nursery = nursery
        await nursery.start(control_server.serve, self.state_dir, self._handlers())
        if self.settings is not None and self.replicas is not None:
            await nursery.start(self.replicas.run)
        if self.settings is not None:
            if self._reconciled is None:
                if not self._trusted or self._has_work():
                    self._seal_before_serving()
                self._startup_decided.set()
            else:
                # Taken before the first request is served: what earlier sessions left.
                nursery.start_soon(self._seal_once_reconciled, not self._trusted or self._has_work())
            nursery.start_soon(self._run)
            if not self._index_complete.is_set():
                nursery.start_soon(self._complete_index)
            nursery.start_soon(self._count_snapshots)
        if self.rescanner is not None:
            nursery.start_soon(self._rescan_once_reconciled)
        if self.alarm.pinning is not None:
            nursery.start_soon(self.alarm.run)

    async def _until_reconciled(self) -> None:
        if self._reconciled is not None:
            await self._reconciled.wait()

    async def _seal_once_reconciled(self, pending_before: bool) -> None:
        """What is pending from before, or what the startup walk found, is sealed at
        once; and everything, if no snapshot describes the manifest. Not what was
        written since the mount started serving: that waits for the interval or a
        request, so a `cloudfs snapshot` right after mounting is not held up behind
        an upload of its own changes that the store may not take yet."""
        await self._until_reconciled()
        if pending_before or self._startup.found_changes():
            self._wanted += 1
            self._startup_ticket = self._wanted
            self._notify()
        self._startup_decided.set()

    async def _until_startup_sealed(self) -> None:
        """What was pending at startup (the journal's, the startup walk's) is sealed:
        until then a flush would see no sealed epoch and return before it."""
        await self._startup_decided.wait()
        if self._startup_ticket is not None:
            await self._wait_sealed(self._startup_ticket)

    async def _rescan_once_reconciled(self) -> None:
        await self._until_reconciled()
        await self.rescanner.run()

    def _seal_before_serving(self) -> None:
        """No request has been served, so nothing is in the kernel's cache: no flush."""
        try:
            self._inflight = self.sealer.seal_now(self.manifest, incremental=True, trusted=self._trusted)
            self._seals.append(_SealRecord(0, self._inflight.epoch, self._inflight.time_ns))
        except Exception as error:  # noqa: BLE001 - the mount serves whatever happens here
            log.exception("cannot seal at startup; will try again")
            self._force_full = True
            self._given_up(_one_line(error))

    def close(self) -> None:
        """After the loop ended: drop spool and graveyard (the sealed epochs stay in the
        journal and are committed after the next mount). The local index is closed
        (a temporary one, with --no-cache, removed: this process ends with _exit)."""
        if self.settings is not None:
            self.sealer.release(self._inflight)
            self.graveyard.close()
            self.repo.index.close()
            self.manifest.close()
        if self._first_baseline is not None:
            self._first_baseline.close()
        self.alarm.book.save()     # the counts of a burst still going on

    async def final_snapshot(self, timeout: float | None = None) -> dict:
        """Before unmounting: seal and commit what is pending, waiting at most `timeout`
        seconds (default: the settings' `final_timeout`) and not at all while the store
        is unreachable."""
        if self.settings is None:
            return {"snapshot": None, "committed": False, "repository": None}
        timeout = self.settings.final_timeout if timeout is None else timeout
        if not self._has_work():
            return {"snapshot": self._last_snapshot_name(), "committed": True}
        reply = {"snapshot": None, "committed": False}
        with trio.move_on_after(timeout):
            try:
                reply = await self._snapshot(wait=True, give_up_if_store_down=True)
            except CloudfsError as error:
                log.error("final snapshot: %s", error)
        if not reply.get("committed"):
            log.warning("unmounting with changes not yet in a snapshot; they stay in the journal "
                        "and the next mount commits them")
        return reply

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if self._inflight is None:
                await self._wait_for_a_reason_to_seal()
                try:
                    self._inflight = await self._seal()
                except Exception as error:  # noqa: BLE001 - a seal must not end the daemon
                    log.exception("seal failed")
                    self._force_full = True
                    self._given_up(_one_line(error))
                    continue
            sealed = self._inflight
            try:
                await self._upload(sealed)
            finally:
                self._inflight = None

    async def _wait_for_a_reason_to_seal(self) -> None:
        interval = self.settings.interval
        while True:
            if self._wanted > self._served_ticket():
                return
            due = self._next_seal_at if self._retry_at is None else min(self._next_seal_at, self._retry_at)
            now = time.time()
            if now >= due:
                if self._has_work():
                    return
                self._next_seal_at, self._retry_at = now + interval, None
                continue
            with trio.move_on_after(due - now):
                await self._changed.wait()

    async def _seal(self) -> Sealed:
        await self._until_reconciled()
        flush_s = await self.sealer.flush()
        ticket = self._wanted
        try:
            sealed = self.sealer.seal_now(self.manifest, incremental=not self._force_full,
                                          trusted=self._trusted)
        except Exception as error:
            self._seals.append(_SealRecord(ticket, None, None, str(error)))
            self._notify()
            raise
        sealed.flush_s = flush_s
        sealed.tags, self._wanted_tags = tuple(self._wanted_tags), {}
        self._seals.append(_SealRecord(ticket, sealed.epoch, sealed.time_ns))
        self._next_seal_at, self._retry_at = time.time() + self.settings.interval, None
        self._notify()
        return sealed

    async def _upload(self, sealed: Sealed) -> None:
        """Build, upload and commit the snapshot of `sealed`, or give it up."""
        committed = False
        try:
            await self._index_complete.wait()
            await self._follow_targets()
            previous = await self._previous_for(sealed)
            self.uploader.previous = previous
            changes = sealed.capture.changes if previous is not None else None
            manifest: list[ManifestDelta] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._compute_manifest, sealed, manifest)
                progress = trio.CancelScope()
                if self.settings.show_progress and sealed.full:
                    nursery.start_soon(self._show_progress, sealed, progress)
                snapshot = await self.uploader.commit(sealed.frozen.source(), changes, sealed.time_ns,
                                                      sealed.tags)
                progress.cancel()
            await self._until_enough_targets_hold(snapshot)
            await self._commit(sealed, snapshot, manifest[0])
            committed = True
            if sealed.full:
                give_back_freed()
        except _PreviousGone as error:
            log.warning("%s; the next snapshot compares everything", error)
            self._trusted = False
            self._given_up(str(error))
        except Exception as error:  # noqa: BLE001 - any failure gives this snapshot up
            if any(isinstance(leaf, SpoolFull) for leaf in leaf_errors(error)):
                self._given_up(_one_line(error))
            else:
                log.error("snapshot of epoch %d failed; the next seal captures everything",
                          sealed.epoch, exc_info=error)
                self._force_full = True
                self._given_up(_one_line(error))
                self._reload_index_first()
        finally:
            if not committed:
                self.sealer.release(sealed)
                self._wanted_tags = dict.fromkeys(sealed.tags) | self._wanted_tags  # for the retry

    # -- the tripwire ---------------------------------------------------------------------------

    def _arm_tripwire(self) -> Alarm:
        """Alerts of the tripwire (cloudfs.alerts), kept in the state directory. An open
        one from before a remount goes on counting its burst until acknowledged."""
        pinning = None if self.settings is None else PinningContext(
            self.repo, str(self.source), self._until_store_answers,
            uploading_sealed_before=lambda ns: self._inflight is not None and self._inflight.time_ns < ns,
            committed=lambda: self._changed.wait())
        alarm = Alarm(AlertBook(self.state_dir), pinning)
        tripwire = getattr(self.operations, "tripwire", None)
        if tripwire is not None:
            tripwire.on_fire, alarm.rearm = alarm.fired, tripwire.rearm
            if alarm.book.open_alerts():
                tripwire.burst = alarm.book.open_alerts()[-1].burst
        return alarm

    # -- targets ------------------------------------------------------------------------------

    def _use_targets(self, records: list[TargetRecord]) -> None:
        """Write to every target from now on (their senders start with `replicas.run`)."""
        self.replicas = replicated_store(self.repo, records, self.settings.target_store,
                                         opened=self.repo.store, backlog_dir=self.state_dir / TARGETS_DIR)
        self.repo.use_store(WriterStore(self.replicas))

    def _required_targets(self) -> int:
        count = len(self.replicas.targets)
        return min(self.settings.required_targets or count, count)

    async def _until_enough_targets_hold(self, snapshot: Snapshot) -> None:
        """K of N: the snapshot counts as committed once K targets hold it (and, by
        their backlogs' order, everything it refers to)."""
        if self.replicas is None:
            return
        required = self._required_targets()
        with trio.move_on_after(QUORUM_PATIENCE):
            await self.replicas.wait_until_held(snapshot.name, required)
            return
        self._waiting_for_targets = snapshot.name
        status = self.uploader.status
        log.warning("%s waits until %d target(s) hold it", snapshot.name, required)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._say_which_targets_fail)
                await self.replicas.wait_until_held(snapshot.name, required)
                nursery.cancel_scope.cancel()
        finally:
            self._waiting_for_targets = None
            status.store_error = status.store_error_since_ns = None

    async def _say_which_targets_fail(self) -> None:
        """While a snapshot waits for targets: `store_error` names the failing ones, so
        that status shows it and a final snapshot does not wait for them."""
        status = self.uploader.status
        while True:
            failing = [f"{target.name}: {target.error}" for target in self.replicas.targets if target.error]
            if failing and status.store_error is None:
                status.store_error_since_ns = time.time_ns()
            status.store_error = ("waiting for targets: " + "; ".join(failing)) if failing else None
            await trio.sleep(0.5)

    async def _follow_targets(self) -> None:
        """Targets added or removed since (`cloudfs targets add/remove`, maybe on another
        machine): start sending to new ones (they are leveled first), stop for removed ones."""
        try:
            records = await self.repo.targets()
        except CloudfsError as error:
            log.info("cannot read the targets now: %s", error)
            return
        if self.replicas is None:
            if records:
                log.info("the repository has targets now (%s): sending to each",
                         ", ".join(record.target for record in records))
                self._use_targets(records)
                await self._nursery.start(self.replicas.run)
            return
        known = {target.name for target in self.replicas.targets}
        for record in records:
            if record.target not in known:
                log.info("new target %s (%s): leveling it, then sending to it", record.target, record.location)
                self.replicas.add_target(target_for(self.repo, record, self.settings.target_store,
                                                    backlog_dir=self.state_dir / TARGETS_DIR))
        recorded = {record.target for record in records}
        for name in known - recorded:
            if records:
                log.info("target %s was removed; nothing more is sent to it", name)
                self.replicas.remove_target(name)

    async def _complete_index(self) -> None:
        """Read the index objects the local index lacks (other writers', or all of them
        after it was rebuilt), retrying until it works; then uploads may go on. After
        an offline start it waits for the store; after a failure (a full disk under the
        index) it retries every RETRY_AFTER_FAILURE seconds."""
        while True:
            try:
                await self._until_store_answers(self.repo.load_index)
                break
            except Exception as error:  # noqa: BLE001 - the mount serves whatever happens here
                log.error("cannot bring the local index up to date: %s", _one_line(error))
                self._last_error = _one_line(error)
                await trio.sleep(RETRY_AFTER_FAILURE)
        log.info("the index is complete")
        self._index_complete.set()

    async def _count_snapshots(self) -> None:
        """How many snapshot objects the repository holds (every host and directory):
        one LIST, at start and after each commit, for status and the metrics."""
        try:
            listed = await self.repo.store.list(SNAPSHOTS_PREFIX)
        except Exception as error:  # noqa: BLE001 - a figure for display only
            log.info("cannot count the snapshots: %s", _one_line(error))
            return
        self.uploader.status.repository_snapshots = len(listed)

    def _reload_index_first(self) -> None:
        """After a failed snapshot the local index may lack what the store holds (a
        file rebuilt after damage, a write lost to a full disk): the next upload
        waits until the index objects were read again (cheap when nothing is missing)."""
        if self._index_complete.is_set():
            self._index_complete = trio.Event()
            self._nursery.start_soon(self._complete_index)

    async def _show_progress(self, sealed: Sealed, scope: trio.CancelScope) -> None:
        """A bar of the bytes the full snapshot reads (`cloudfs status` shows the same),
        until `scope` is cancelled."""
        from tqdm import tqdm

        bar = tqdm(total=sealed.capture.bytes_to_read(), unit="B", unit_scale=True, unit_divisor=1024,
                   ncols=shutil.get_terminal_size().columns,  # 80 where the terminal says 0
                   desc="first snapshot" if sealed.previous_name is None else "full snapshot")
        try:
            with scope:
                while True:
                    current = self.uploader.status.current
                    bar.n = current.bytes_read if current else 0
                    bar.refresh()
                    await trio.sleep(0.5)
        finally:
            bar.close()

    async def _compute_manifest(self, sealed: Sealed, out: list) -> None:
        out.append(await trio.to_thread.run_sync(manifest_delta, self.manifest, sealed.capture))

    async def _commit(self, sealed: Sealed, snapshot: Snapshot, delta: ManifestDelta) -> None:
        checkpoint = Checkpoint(snapshot.name, self.repo.config.repo_id_hex, tuple(self.settings.exclude),
                                snapshot.time_ns)
        await trio.to_thread.run_sync(self.manifest.apply, delta, checkpoint)
        self.journal.commit(sealed.epoch)
        self._nursery.start_soon(self._count_snapshots)
        self._trusted, self._force_full = True, False
        frozen, kept = sealed.frozen, len(self.graveyard.kept)
        self.sealer.release(sealed)
        self._committed_epoch = sealed.epoch
        self._commits.append((sealed.epoch, snapshot.name))
        self.history.append({
            "snapshot": snapshot.name, "epoch": sealed.epoch, "full": sealed.full,
            "sealed_ns": sealed.time_ns, "flush_ms": sealed.flush_s * 1000, "stall_ms": sealed.stall_s * 1000,
            "seal_to_commit_s": (time.time_ns() - sealed.time_ns) / 1e9,
            "files": snapshot.stats.get("files"), "bytes_read": snapshot.stats.get("bytes_read"),
            "bytes_added": snapshot.stats.get("bytes_added"),
            "bytes_stored": snapshot.stats.get("bytes_stored"),
            "cow_copies": frozen.copies, "cow_bytes": frozen.copied_bytes, "kept_files": kept,
        })
        self._notify()
        try:
            await self.journal.sync()  # the COMMIT record (harmless if lost: a re-read)
        except OSError as error:
            log.warning("cannot sync the journal after a commit: %s", error)

    def _given_up(self, reason: str) -> None:
        """The sealed epochs stay in the journal; a fresh seal retries a while later."""
        self._failures += 1
        self._last_error = reason
        self._retry_at = time.time() + min(RETRY_AFTER_FAILURE, self.settings.interval)
        self._notify()

    async def _previous_for(self, sealed: Sealed) -> Snapshot | None:
        """The snapshot to build on: the one the capture was planned against, or for a
        full capture the newest of this host and SOURCE (or none)."""
        known = self.uploader.previous
        if sealed.previous_name is not None and known is not None and known.name == sealed.previous_name:
            return known
        snapshots = await self._until_store_answers(self.repo.snapshots)
        if sealed.previous_name is None:
            previous = latest_snapshot_of(snapshots, socket.gethostname(), str(self.source))
        else:
            previous = next((s for s in snapshots if s.name == sealed.previous_name), None)
            if previous is None:
                raise _PreviousGone(f"{sealed.previous_name}, which the journal is relative to, "
                                    "is gone from the repository")
        status = self.uploader.status
        if previous is not None and status.last_snapshot is None:
            status.last_snapshot, status.last_snapshot_time_ns = previous.name, previous.time_ns
        return previous

    async def _until_store_answers(self, operation):
        failures = 0
        status = self.uploader.status
        while True:
            try:
                result = await operation()
            except Exception as error:  # noqa: BLE001
                if not _store_is_down(error):
                    raise
                failures += 1
                if status.store_error is None:
                    status.store_error_since_ns = time.time_ns()
                    log.warning("store unavailable, will retry: %s", error)
                status.store_error = _one_line(error)
                delay = min(STORE_RETRY_MAX, STORE_RETRY_BASE * 2 ** min(failures - 1, 10))
                await trio.sleep(random.uniform(delay / 2, delay))
                continue
            status.store_error = status.store_error_since_ns = None
            return result

    # -- requests ---------------------------------------------------------------------------

    def _handlers(self) -> dict:
        return {"status": self._handle_status, "snapshot": self._handle_snapshot,
                "flush": self._handle_flush, "rescan": self._handle_rescan, "stop": self._handle_stop,
                "alerts": self._handle_alerts}

    async def _handle_status(self, request: dict) -> dict:
        return self.status()

    async def _handle_snapshot(self, request: dict) -> dict:
        if request.get("final"):
            return await self.final_snapshot(float(request.get("wait_seconds") or FINAL_TIMEOUT))
        self._require_repository()
        self._wanted_tags.update(dict.fromkeys(checked_tags(request.get("tags") or [])))
        if request.get("queue") and not request.get("wait") and self._inflight is not None:
            # One snapshot at a time: this one is sealed when the one uploading is
            # committed. Say so at once rather than keep the caller waiting (for as
            # long as the store is down, perhaps).
            self._wanted += 1
            self._notify()
            return {"queued": True, "epoch": None, "snapshot": None, "committed": False,
                    "uploading_epoch": self._inflight.epoch}
        return await self._snapshot(wait=bool(request.get("wait")))

    async def _handle_flush(self, request: dict) -> dict:
        self._require_repository()
        await self._until_startup_sealed()
        epochs = self.journal.sealed_epochs()
        if not epochs:
            return {"snapshot": self._last_snapshot_name()}
        return {"snapshot": await self._wait_committed(max(epochs))}

    async def _handle_rescan(self, request: dict) -> dict:
        if self.rescanner is None:
            raise UsageError(f"{self.mountpoint} was mounted with --no-journal: there is no "
                             "journal to record what a rescan finds")
        await self._until_reconciled()
        return await self.rescanner.rescan()

    async def _handle_alerts(self, request: dict) -> dict:
        if request.get("ack"):
            return {"acknowledged": self.alarm.acknowledge(request.get("id"))}
        return {"alerts": [alert.as_dict() for alert in self.alarm.book.alerts]}

    async def _handle_stop(self, request: dict) -> dict:
        reply = await self.final_snapshot(float(request.get("wait_seconds") or FINAL_TIMEOUT))
        self._nursery.start_soon(self._unmount)
        return reply

    def _require_repository(self) -> None:
        if self.settings is None:
            raise UsageError(f"{self.mountpoint} was mounted without --repo: it journals, "
                             "but takes no snapshots")

    async def _snapshot(self, *, wait: bool, give_up_if_store_down: bool = False) -> dict:
        self._wanted += 1
        ticket = self._wanted
        self._notify()
        record = await self._wait_sealed(ticket)
        if record.error is not None:
            raise CloudfsError(f"the seal failed: {record.error}")
        reply = {"epoch": record.epoch, "time_ns": record.time_ns, "snapshot": None, "committed": False}
        if wait:
            name = await self._wait_committed(record.epoch, give_up_if_store_down)
            reply.update(snapshot=name, committed=name is not None)
        return reply

    async def _wait_sealed(self, ticket: int) -> _SealRecord:
        while True:
            record = next((r for r in self._seals if r.ticket >= ticket), None)
            if record is not None:
                return record
            await self._changed.wait()

    async def _wait_committed(self, epoch: int, give_up_if_store_down: bool = False) -> str | None:
        while self._committed_epoch < epoch:
            if give_up_if_store_down and self.uploader.status.store_error is not None:
                return None
            with trio.move_on_after(0.2 if give_up_if_store_down else math.inf):
                await self._changed.wait()
        return next((name for committed, name in self._commits if committed >= epoch),
                    self._last_snapshot_name())

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- state ------------------------------------------------------------------------------

    def _served_ticket(self) -> int:
        return self._seals[-1].ticket if self._seals else 0

    def _has_work(self) -> bool:
        """Anything not yet in a committed snapshot: pending changes, or sealed epochs."""
        has_pending = getattr(self.journal, "has_pending", None)
        return self._inflight is not None or (has_pending is not None and has_pending())

    def _baseline(self) -> Manifest:
        """What the pending changes are relative to: the manifest of the last commit,
        or without a repository the first mount's, which never changes."""
        if self.settings is not None:
            return self.manifest
        if self._first_baseline is None:
            self._first_baseline = Manifest.open(self.state_dir)
        return self._first_baseline

    def _manifest_describes_a_snapshot(self) -> bool:
        checkpoint = self.manifest.checkpoint
        return checkpoint.describes_a_snapshot_of(self.repo.config.repo_id_hex, self.settings.exclude)

    def _last_snapshot_name(self) -> str | None:
        if self._commits:
            return self._commits[-1][1]
        return self.uploader.status.last_snapshot if self.settings is not None else None

    def status(self) -> dict:
        """What `cloudfs status` shows (docs/live.md lists the keys)."""
        pending = self.journal.pending()
        files, size = _pending_figures(pending, self._current_stat)
        oldest = getattr(self.journal, "oldest_change_ns", None)
        oldest = oldest(self._manifest_time_ns()) if oldest else None
        reply = {
            "source": str(self.source), "mountpoint": str(self.mountpoint), "state_dir": str(self.state_dir),
            "pid": os.getpid(),
            "repository": self.settings.location if self.settings else None,
            "epoch": getattr(self.journal, "epoch", None),
            "sealed_epochs": getattr(self.journal, "sealed_epochs", list)(),
            "pending_files": files, "pending_bytes": size,
            "oldest_change_ns": oldest,
            "rpo_seconds": (time.time_ns() - oldest) / 1e9 if oldest else 0.0,
            "reconciled": self._reconciled is None or self._reconciled.is_set(),
            "alerts": self.alarm.status(),
            "tripwire": _tripwire_settings(getattr(self.operations, "tripwire", None)),
            "rescan": None if self.rescanner is None else {
                "interval": self.rescanner.interval, "last": self.rescanner.last},
        }
        if self.settings is None:
            return reply
        inflight = self._inflight
        reply.update({
            "spool_bytes": self.spool.used, "spool_limit": self.spool.limit,
            "next_snapshot_ns": int(self._next_seal_at * 1e9),
            "interval": self.settings.interval,
            "compression": "none" if self.repo.compression_level is None else f"zstd:{self.repo.compression_level}",
            "upload": self.uploader.status.as_dict(),
            "in_flight": None if inflight is None else {
                "epoch": inflight.epoch, "sealed_ns": inflight.time_ns, "full": inflight.full,
                "files_to_read": len(inflight.capture.reads),
                "bytes_to_read": inflight.capture.bytes_to_read(),
                "given_up": inflight.frozen.failure},
            "failures": self._failures, "last_error": self._last_error,
            "history": list(self.history),
            "last_drill": last_drill(self.repo.config.repo_id_hex),
        })
        if self.replicas is not None:
            reply.update(targets=self.replicas.status(), required_targets=self._required_targets(),
                         waiting_for_targets=self._waiting_for_targets)
        return reply

    def _current_stat(self, ino: int) -> os.stat_result | None:
        """A pending inode's stat now: through the mount's inode table if the kernel
        knows it, else at one of its baseline paths or where the last rescan found
        it (what reconcile or a rescan found)."""
        table = self.operations.table
        inode = table.find_ino(ino)
        if inode is not None:
            try:
                return table.stat(inode)
            except OSError:
                return None
        found = self.rescanner.found_paths.get(ino) if self.rescanner is not None else None
        for path in [*self._baseline().paths_of(ino), *([found] if found is not None else [])]:
            try:
                st = os.stat(path or ".", dir_fd=self._source_fd, follow_symlinks=False)
            except OSError:
                continue
            if st.st_ino == ino:
                return st
        return None

    def _manifest_time_ns(self) -> int:
        return self._baseline().saved_ns or time.time_ns()


def _pending_figures(pending, current_stat: Callable[[int], os.stat_result | None]) -> tuple[int, int]:
    """How many files have pending changes, and roughly how many bytes (dirty ranges,
    or the current size where the whole file is to be read)."""
    stats = {ino: current_stat(ino) for ino in pending.whole | pending.data.keys() | pending.meta}
    size = 0
    for ino in pending.whole | pending.data.keys():
        current = stats[ino].st_size if stats[ino] is not None else None
        if ino in pending.whole:
            size += current or 0
            continue
        for start, end in pending.data[ino]:
            end = min(end, current) if current is not None else end
            if end < (1 << 62):
                size += max(0, end - start)
    files = [ino for ino, st in stats.items() if st is None or not stat.S_ISDIR(st.st_mode)]
    return len(files), size


def _tripwire_settings(tripwire) -> dict | None:
    if tripwire is None:
        return None
    thresholds = tripwire.thresholds
    return {"files": thresholds.files, "window": thresholds.window, "entropy": thresholds.entropy}


def _store_is_down(error: BaseException) -> bool:
    leaves = leaf_errors(error)
    return bool(leaves) and all(isinstance(leaf, (StoreUnavailable, AccessDenied)) for leaf in leaves)


def _one_line(error: BaseException) -> str:
    leaves = leaf_errors(error)
    first = leaves[0] if leaves else error
    return str(first).splitlines()[0] if str(first) else type(first).__name__
