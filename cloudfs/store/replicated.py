"""One store made of several targets: every object goes to each, reads come from the healthiest.

**Writing.** While `run()` runs (in a mount's nursery), every target has a
sender task and a backlog (backlog.py). `put` adds the object to every target's
backlog and returns as soon as one target holds it: a target that is down or
slow never holds up the others, and never the application's writes (I6). Each
sender delivers its backlog in order, so on every target an object arrives
after everything written before it, and a snapshot object after the chunks and
index objects it needs (I4). An object is sent from a local copy while one is
kept (at most LOCAL_COPIES files per target: a duplicate descriptor of the
chunk's unnamed temporary file, so a stalled target costs bounded disk), else
copied from a target that holds it, and then checked with `check_copy` (a
chunk's size and SHA-256 against the index, any other object opened with the
repository's key) before it is stored. Every delivery is
checked with a HEAD of its size. A target that fails is retried with backoff
(its backlog waits, on disk); `put` fails only when every target is failing.

**K of N.** `wait_until_held(name, copies)` returns once `copies` targets hold
the object: the daemon commits a snapshot when K of N hold it (its backlog
order means they then hold everything it refers to).

**Leveling.** When a sender starts (a mount starting, a target added), it
first compares its target's listing with the others' and puts whatever its
target lacks at the front of its backlog, keys and chunks first, snapshots and
`config` last. That repairs a backlog lost in a crash, objects a one-off
command could not deliver, and a target added while the mount was uploading.

**Without `run()`** (a command that writes an object or two), `put` writes to
every target at once; a target that fails keeps the object in its in-memory
backlog, which `pending()` reports (and `cloudfs targets sync` delivers).

**Reading.** `get`, `head`, `list` and `get_verified` ask the healthiest target
first (no error, nothing waiting, fewest read failures, then the order given)
and fall back to the next on an error, a missing object (a lagging target), or
a failed verification (`get_verified`, see base.Store): one damaged or missing
copy is not a read error while another target has a good one.

**Deleting** (maintenance) deletes on every target, and fails if any target
cannot: a target that kept a deleted snapshot would copy it back.

Everything runs on one trio thread; the only shared state is the targets'
backlogs and the holders of recent puts.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import OrderedDict
from typing import Callable

import trio

from cloudfs.errors import IntegrityError, ObjectExists, ObjectNotFound, StoreError, StoreUnavailable
from cloudfs.store.backlog import Backlog
from cloudfs.store.base import FilePayload, Store

log = logging.getLogger(__name__)

LOCAL_COPIES = 2               # objects a target may keep in local files while it sends them
SENDS_PER_TARGET = 3           # chunks sent to one target at once
CHUNKS = "chunks/"
RETRY_BASE, RETRY_MAX = 1.0, 60.0
HOLDERS_KEPT = 4096            # recent puts whose holders are remembered (for wait_until_held)
#: The order in which objects found missing are copied: everything a snapshot refers to
#: before the snapshot, and `config` (what makes a location a repository) last.
COPY_ORDER = ("keys/", "chunks/", "index/", "policy/", "targets/", "snapshots/", "pins/")

#: What is wrong with a copy of an object (None: nothing); CPU work, run in a thread.
CopyCheck = Callable[[str, bytes], "str | None"]


def copy_rank(name: str) -> tuple[int, str]:
    for rank, prefix in enumerate(COPY_ORDER):
        if name.startswith(prefix):
            return rank, name
    return (len(COPY_ORDER) + 1 if name == "config" else 3), name


class Target:
    """One place the repository is kept, and how it is doing."""

    def __init__(self, name: str, store: Store, backlog: Backlog | None = None):
        self.name = name
        self.store = store
        self.backlog = backlog if backlog is not None else Backlog()   # an empty one is falsy
        self.error: str | None = None          # the last failure, until a success
        self.error_since_ns: int | None = None
        self.failures = 0                      # in a row
        self.read_failures = 0
        self.sent_objects = 0
        self.sent_bytes = 0
        self.last_sent_ns: int | None = None
        self.leveled = False
        self.payloads: dict[str, tuple[bytes | FilePayload, bytes | None]] = {}   # local copies to send
        self.sending: set[str] = set()
        self.scope = trio.CancelScope()
        self._wakeup = trio.Event()

    @property
    def state(self) -> str:
        if self.error is not None:
            return "down"
        if len(self.backlog) or not self.leveled:
            return "lagging"
        return "ok"

    def status(self, now_ns: int) -> dict:
        oldest = self.backlog.oldest_ns()
        return {"name": self.name, "location": self.store.location, "state": self.state,
                "backlog_objects": len(self.backlog), "backlog_bytes": self.backlog.bytes,
                "lag_seconds": (now_ns - oldest) / 1e9 if oldest else 0.0,
                "error": self.error, "error_since_ns": self.error_since_ns,
                "sent_objects": self.sent_objects, "sent_bytes": self.sent_bytes,
                "last_sent_ns": self.last_sent_ns}

    def wake(self) -> None:
        self._wakeup.set()

    async def sleep_until_woken(self, timeout: float = float("inf")) -> None:
        with trio.move_on_after(timeout):
            await self._wakeup.wait()
        self._wakeup = trio.Event()

    def failed(self, error: BaseException) -> float:
        """Record a failure; return how long to wait before trying again."""
        if self.error is None:
            self.error_since_ns = time.time_ns()
            log.warning("target %s: %s; its backlog waits", self.name, error)
        self.error = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.failures += 1
        delay = min(RETRY_MAX, RETRY_BASE * 2 ** min(self.failures - 1, 10))
        return random.uniform(delay / 2, delay)

    def succeeded(self) -> None:
        if self.error is not None:
            log.info("target %s answers again", self.name)
        self.error = self.error_since_ns = None
        self.failures = 0

    def drop_payload(self, name: str) -> None:
        payload = self.payloads.pop(name, None)
        if payload is not None and isinstance(payload[0], FilePayload):
            payload[0].close()

    def local_files(self) -> int:
        return sum(isinstance(data, FilePayload) for data, _ in self.payloads.values())

    def close(self) -> None:
        for name in list(self.payloads):
            self.drop_payload(name)
        self.backlog.close()


class _Nowhere(Exception):
    """No target holds the object, and none will: it was deleted, or never stored."""


class _NotYet(Exception):
    """Only a target that still has to send it holds a copy: wait for it."""


class ReplicatedStore(Store):
    def __init__(self, targets: list[Target], *, check_copy: CopyCheck | None = None):
        if not targets:
            raise ValueError("a replicated store needs at least one target")
        self.targets = list(targets)
        self.check_copy = check_copy
        self.location = " + ".join(target.store.location for target in self.targets)
        self._holders: OrderedDict[str, set[str]] = OrderedDict()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    # -- the senders --------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Send every target's backlog until cancelled (`put` waits for one target
        from now on, instead of writing to all)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for target in self.targets:
                    nursery.start_soon(self._serve, target)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def add_target(self, target: Target) -> None:
        """A target that joined while running: it is leveled first, then sent to."""
        self.targets.append(target)
        if self._nursery is not None:
            self._nursery.start_soon(self._serve, target)

    def remove_target(self, name: str) -> None:
        for target in [t for t in self.targets if t.name == name]:
            target.scope.cancel()
            target.close()
            self.targets.remove(target)
        self._notify()

    async def _serve(self, target: Target) -> None:
        target.scope = trio.CancelScope()
        with target.scope:
            await self._until_leveled(target)
            async with trio.open_nursery() as nursery:
                while True:
                    for name in self._sendable(target):
                        target.sending.add(name)
                        nursery.start_soon(self._deliver, target, name)
                    if not target.sending and not len(target.backlog):
                        await self._idle(target)
                    else:
                        await target.sleep_until_woken()

    def _sendable(self, target: Target) -> list[str]:
        """What may start now: chunks side by side (at most SENDS_PER_TARGET at once, one
        while the target is failing); anything else alone, once all before it arrived."""
        room = (1 if target.error else SENDS_PER_TARGET) - len(target.sending)
        found = []
        for position, name in enumerate(target.backlog.iter_names()):
            if room <= 0:
                break
            if name in target.sending:
                continue
            if not name.startswith(CHUNKS):
                if position == 0 and not target.sending:
                    found.append(name)
                break
            found.append(name)
            room -= 1
        return found

    async def _deliver(self, target: Target, name: str) -> None:
        try:
            size = await self._send(target, name)
        except _Nowhere:
            log.info("target %s: no target holds %s any more; not sent", target.name, name)
            self._delivered(target, name, None)
        except _NotYet:
            with trio.move_on_after(5):
                await self._changed.wait()
        except (StoreError, IntegrityError) as error:
            delay = target.failed(error)
            self._notify()
            await trio.sleep(delay)
        else:
            target.succeeded()
            self._delivered(target, name, size)
        finally:
            target.sending.discard(name)
            target.wake()

    async def _idle(self, target: Target) -> None:
        """Nothing to send: wait for work, or while the target is failing, probe it."""
        if target.error is None:
            await target.sleep_until_woken()
            return
        with trio.move_on_after(RETRY_BASE * 2 ** min(target.failures, 6)):
            await target.sleep_until_woken()
        try:
            await target.store.check()
        except StoreError as error:
            target.failed(error)
        else:
            target.succeeded()
        self._notify()

    async def _until_leveled(self, target: Target) -> None:
        while not target.leveled:
            try:
                await self.level(target)
            except StoreError as error:
                delay = target.failed(error)
                self._notify()
                await trio.sleep(delay)

    async def level(self, target: Target) -> int:
        """Put what `target` lacks, of what the other targets hold, first in its backlog;
        return how many objects that is."""
        have = {info.name for info in await target.store.list()}
        missing: dict[str, int] = {}
        for other in self._reading_order(excluding=target):
            try:
                listing = await other.store.list()
            except StoreError as error:
                log.warning("target %s cannot be listed to level %s: %s", other.name, target.name, error)
                continue
            for info in listing:
                if info.name not in have:
                    missing.setdefault(info.name, info.size)
        target.backlog.put_first([(name, missing[name]) for name in sorted(missing, key=copy_rank)])
        target.leveled = True
        target.succeeded()
        self._notify()
        return len(missing)

    async def level_now(self, target: Target, progress: Callable[[int, int], None] | None = None) -> None:
        """Bring one target level with the others now (`cloudfs targets add/sync`): copy
        what it lacks, each copy checked, and return once it has everything; the first
        failure is raised rather than retried. `progress(sent, total)` in bytes.
        Resumable: what was copied before is not copied again."""
        sent_before = target.sent_bytes
        target.succeeded()
        target.leveled = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve, target)
            while not target.leveled or len(target.backlog) or target.sending:
                if target.error is not None:
                    raise StoreUnavailable(f"target {target.name}: {target.error}")
                if progress is not None and target.leveled:
                    sent = target.sent_bytes - sent_before
                    progress(sent, sent + target.backlog.bytes)
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        if progress is not None:
            progress(target.sent_bytes - sent_before, target.sent_bytes - sent_before)

    async def _send(self, target: Target, name: str) -> int:
        payload = target.payloads.get(name)
        if payload is not None:
            data, digest = payload
            await target.store.put(name, data, sha256=digest)
        else:
            data = await self._copy_from_holder(target, name)
            await target.store.put(name, data)
        await _check_stored(target, name, len(data))
        return len(data)

    async def good_copy(self, target: Target, name: str) -> bytes:
        """A checked copy of `name` from a target other than `target` (repair); raises
        ObjectNotFound if none holds one, StoreUnavailable if none gives a good one."""
        try:
            return await self._copy_from_holder(target, name)
        except (_Nowhere, _NotYet):
            raise ObjectNotFound(name, f"no other target holds {name}") from None

    async def store_copy(self, target: Target, name: str, data: bytes) -> None:
        """Put a good copy on `target`, replacing a damaged one, and check its size."""
        await target.store.put(name, data)
        await _check_stored(target, name, len(data))

    async def _copy_from_holder(self, target: Target, name: str) -> bytes:
        """The object's bytes from a target that holds a good copy."""
        missing = 0
        sources = self._reading_order(excluding=target)
        for source in sources:
            try:
                data = await source.store.get(name)
            except ObjectNotFound:
                missing += 1
                continue
            except StoreError as error:
                log.info("target %s cannot give %s to %s: %s", source.name, name, target.name, error)
                continue
            problem = await self._copy_problem(name, data)
            if problem is None:
                return data
            log.warning("target %s holds a damaged %s (%s); not copied from it", source.name, name, problem)
        if any(name in other.payloads for other in sources):
            raise _NotYet(name)
        if missing == len(sources):
            raise _Nowhere(name)
        raise StoreUnavailable(f"no target could give a good copy of {name}")

    async def _copy_problem(self, name: str, data: bytes) -> str | None:
        if self.check_copy is None:
            return None
        return await trio.to_thread.run_sync(self.check_copy, name, data)

    def _delivered(self, target: Target, name: str, size: int | None) -> None:
        target.backlog.done(name)
        target.drop_payload(name)
        if size is not None:
            target.sent_objects += 1
            target.sent_bytes += size
            target.last_sent_ns = time.time_ns()
            if name in self._holders:
                self._holders[name].add(target.name)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- writing ---------------------------------------------------------------------------

    async def put(self, name, data, *, exclusive=False, sha256=None, retention=None):
        if exclusive and await self.exists(name):
            raise ObjectExists(name)
        if self._nursery is None:
            await self._put_everywhere(name, data, exclusive, sha256, retention)
            return
        self._remember_holders(name)
        for target in self.targets:
            if not isinstance(data, FilePayload) or target.local_files() < LOCAL_COPIES:
                target.payloads[name] = (_local_copy(data), sha256)
            target.backlog.add(name, len(data))
            target.wake()
        await self._until_one_holds(name)

    async def _until_one_holds(self, name: str) -> None:
        while not self._holders[name]:
            if all(target.error is not None for target in self.targets):
                for target in self.targets:      # stored nowhere: the caller tries again
                    target.backlog.done(name)
                    target.drop_payload(name)
                raise StoreUnavailable("no target can store objects now: " + "; ".join(
                    f"{target.name}: {target.error}" for target in self.targets))
            await self._changed.wait()

    async def _put_everywhere(self, name, data, exclusive, sha256, retention) -> None:
        failures: dict[str, StoreError] = {}

        async def put_one(target: Target) -> None:
            try:
                await target.store.put(name, data, exclusive=exclusive, sha256=sha256, retention=retention)
            except StoreError as error:
                failures[target.name] = error

        async with trio.open_nursery() as nursery:
            for target in self.targets:
                nursery.start_soon(put_one, target)
        if len(failures) == len(self.targets):
            raise next(iter(failures.values()))
        self._remember_holders(name).update(t.name for t in self.targets if t.name not in failures)
        for target in self.targets:
            if target.name in failures:
                target.failed(failures[target.name])
                target.backlog.add(name, len(data))

    def _remember_holders(self, name: str) -> set[str]:
        holders = self._holders.setdefault(name, set())
        while len(self._holders) > HOLDERS_KEPT:
            self._holders.popitem(last=False)
        return holders

    async def wait_until_held(self, name: str, copies: int) -> None:
        """Return once `copies` targets hold `name` (an object put through this store)."""
        while len(self._holders.get(name, ())) < copies:
            await self._changed.wait()

    def holders(self, name: str) -> set[str]:
        return set(self._holders.get(name, ()))

    def pending(self) -> dict[str, int]:
        """Target name -> objects it has yet to receive."""
        return {target.name: len(target.backlog) for target in self.targets if len(target.backlog)}

    def status(self) -> list[dict]:
        now = time.time_ns()
        return [target.status(now) for target in self.targets]

    async def delete(self, name):
        failures = []
        for target in self.targets:
            target.backlog.done(name)
            target.drop_payload(name)
            try:
                await target.store.delete(name)
            except StoreError as error:
                failures.append(f"{target.name}: {error}")
        if failures:
            raise StoreUnavailable(f"{name} could not be deleted from every target ({'; '.join(failures)}); "
                                   "run the command again when they answer")

    async def extend_retention(self, name, retention, version_id=None):
        for target in self.targets:
            await target.store.extend_retention(name, retention, version_id)

    async def create_container(self, *, object_lock=False):
        for target in self.targets:
            await target.store.create_container(object_lock=object_lock)

    async def check_object_lock(self):
        for target in self.targets:
            await target.store.check_object_lock()

    async def check(self):
        """Fine if any target answers; the others are marked down."""
        errors = []
        for target in self.targets:
            try:
                await target.store.check()
            except StoreError as error:
                target.failed(error)
                errors.append(error)
        if len(errors) == len(self.targets):
            raise errors[0]

    # -- reading -----------------------------------------------------------------------------

    def _reading_order(self, excluding: Target | None = None) -> list[Target]:
        ranked = sorted(enumerate(self.targets), key=lambda item: (
            item[1].error is not None, len(item[1].backlog) > 0, item[1].read_failures, item[0]))
        return [target for _, target in ranked if target is not excluding]

    async def _read(self, what: str, operation):
        """`operation(target)` on the healthiest target that can do it."""
        errors: list[Exception] = []
        for target in self._reading_order():
            try:
                return await operation(target)
            except ObjectNotFound as error:
                errors.append(error)
            except IntegrityError as error:
                target.read_failures += 1
                log.warning("target %s: %s; trying the next target", target.name, error)
                errors.append(error)
            except StoreError as error:
                target.read_failures += 1
                log.info("target %s cannot %s: %s; trying the next target", target.name, what, error)
                errors.append(error)
        raise _most_telling(errors)

    async def get(self, name, offset=0, length=None):
        return await self._read(f"read {name}", lambda target: target.store.get(name, offset, length))

    async def get_verified(self, name, verify, offset=0, length=None):
        async def verified(target: Target):
            return await verify(await target.store.get(name, offset, length))

        return await self._read(f"read {name}", verified)

    async def head(self, name):
        return await self._read(f"find {name}", lambda target: target.store.head(name))

    async def exists(self, name):
        """Whether any target holds `name`: one that answers "no" is enough to say no
        while the others are down (a collision check must not wait for them)."""
        answered = False
        errors = []
        for target in self._reading_order():
            try:
                await target.store.head(name)
                return True
            except ObjectNotFound:
                answered = True
            except StoreError as error:
                errors.append(error)
        if answered:
            return False
        raise errors[0]

    async def list(self, prefix=""):
        return await self._read(f"list {prefix or 'everything'}", lambda target: target.store.list(prefix))

    async def retention(self, name, version_id=None):
        return await self._read(f"read the retention of {name}",
                                lambda target: target.store.retention(name, version_id))

    async def version_page(self, prefix="", after=None):
        return await self.targets[0].store.version_page(prefix, after)

    async def get_version(self, name, version_id, offset=0, length=None):
        return await self.targets[0].store.get_version(name, version_id, offset, length)

    async def aclose(self):
        for target in self.targets:
            target.close()
            await target.store.aclose()


async def _check_stored(target: Target, name: str, size: int) -> None:
    stored = await target.store.head(name)
    if stored.size != size:
        raise IntegrityError(name, f"target {target.name} stored {stored.size} of {size} bytes")


def find_replicated(store: Store) -> ReplicatedStore | None:
    """The replicated store beneath a repository's wrappers (roles, locks), if any."""
    while not isinstance(store, ReplicatedStore):
        store = getattr(store, "inner", None)
        if store is None:
            return None
    return store


def _local_copy(data) -> bytes | FilePayload:
    """A copy of put's data that outlives the call: bytes as they are, a chunk's file
    by a duplicate descriptor (the file is unnamed: it lives while one is open)."""
    if isinstance(data, FilePayload):
        return FilePayload(os.fdopen(os.dup(data.file.fileno()), "rb"), data.size)
    return bytes(data)


def _most_telling(errors: list[Exception]) -> Exception:
    """The error to raise when no target could: damage, else an outage, else absence."""
    damaged = [error for error in errors if isinstance(error, IntegrityError)]
    failing = [error for error in errors if not isinstance(error, ObjectNotFound)]
    return (damaged or failing or errors)[0]
