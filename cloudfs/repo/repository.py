"""A repository: the store plus the master key, the config and the blob index.

Writes follow the commit-last rule (I4): chunks are stored and verified, then
the index object naming them, and only then may a snapshot refer to them.
Nothing here deletes an object except key management, failed-init cleanup, index
repair and forget: maintenance work, which fails with the writer role's store (I9);
prune deletes through cloudfs/snapshot/prune/.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from cloudfs import crypto
from cloudfs.errors import (
    IntegrityError,
    ObjectNotFound,
    RepositoryError,
    StoreUnavailable,
    UsageError,
    WrongPassphrase,
)
from cloudfs.repo.cache import ObjectCache, default_cache_root
from cloudfs.repo.chunk import (
    CHUNKS_PREFIX,
    BlobKind,
    BlobLocation,
    chunk_id_from_name,
    chunk_name,
    open_record,
    parse_footer,
)
from cloudfs.repo.config import CONFIG_NAME, RepoConfig
from cloudfs.repo.format import Kind, parse_header
from cloudfs.repo.index import (
    INDEX_PREFIX,
    ChunkInfo,
    new_index_name,
    open_index,
    open_index_listing,
    seal_index,
)
from cloudfs.repo.doomlist import DoomList
from cloudfs.repo.indexload import absorb_objects, forget_unlisted
from cloudfs.repo.localindex import INDEX_FILE, BlobIndex
from cloudfs.repo.keys import KEYS_PREFIX, KeySlot
from cloudfs.repo.lease import Lease
from cloudfs.repo.packer import Packer
from cloudfs.repo.pins import PINS_PREFIX, Pin, pinned_snapshot
from cloudfs.repo.policy import POLICY_PREFIX, PolicyRecord
from cloudfs.repo.snapshots import SNAPSHOTS_PREFIX, Snapshot
from cloudfs.repo.targets import TARGETS_PREFIX, TargetRecord, current_records, target_of
from cloudfs.store.base import Store
from cloudfs.store.locking import LockingStore

log = logging.getLogger(__name__)

# Below this size opening a blob is cheaper than a hop to a worker thread.
THREAD_THRESHOLD = 64 * 1024


@dataclass
class WriteStats:
    """What this session added to the repository (dedup hits add nothing)."""

    blobs: int = 0            # new blobs
    raw_bytes: int = 0        # their plaintext
    chunks: int = 0           # chunks stored
    chunk_bytes: int = 0      # bytes stored in chunks
    metadata_bytes: int = 0   # index and snapshot objects stored


class Repository:
    def __init__(self, store: Store, master: crypto.MasterKey, config: RepoConfig,
                 slot: KeySlot, cache: ObjectCache, index: BlobIndex | None = None):
        """`index` None: the local index beside the object cache (a temporary one
        without a cache)."""
        self.store = _locking(store, config)
        self.master = master
        self.config = config
        self.slot = slot                  # the key slot this session was opened with
        self.cache = cache
        if index is None:
            index = BlobIndex(cache.directory and cache.directory / INDEX_FILE, config.repo_id)
        self.index = index
        self._naming = trio.Lock()        # one index object written at a time
        self._reloading = trio.Lock()     # one reload of the index at a time (get_blob)
        self._listing_cache: tuple[str, dict[bytes, ChunkInfo]] | None = None
        self.damaged_objects: dict[str, str] = {}   # name -> why it could not be used
        self.written = WriteStats()
        self.packer = Packer(self)
        #: zstd level for the blobs this session writes (None: stored as they are). The
        #: repository's config sets the default; a mount may choose its own, since every
        #: blob records whether it is compressed (its length against its raw length).
        self.compression_level = config.compression_level if config.compression == "zstd" else None

    # -- creating and opening ----------------------------------------------------

    @classmethod
    async def init(cls, store: Store, passphrase: bytes, *, config: RepoConfig | None = None,
                   kdf: crypto.KdfParams | None = None, cache_root: Path | None = None,
                   use_cache: bool = True, create_container: bool = False) -> "Repository":
        """Create a repository in an empty location; refuse anything else."""
        if not passphrase:
            raise UsageError("the passphrase must not be empty")
        config = config or RepoConfig()
        if create_container:
            await store.create_container(object_lock=config.object_lock is not None)
        await store.check()
        if config.object_lock is not None:
            await store.check_object_lock()
        if await store.exists(CONFIG_NAME):
            raise RepositoryError(f"a repository already exists at {store.location}; nothing was changed")
        existing = await store.list()
        leftovers = [info.name for info in existing if info.name.startswith(KEYS_PREFIX)]
        if len(leftovers) != len(existing):
            raise RepositoryError(f"{store.location} is not empty; choose an empty location")
        for name in leftovers:  # key slots of an init that stopped before writing config
            await store.delete(name)
        master = crypto.MasterKey.generate()
        kdf = kdf or await trio.to_thread.run_sync(crypto.tune_kdf)
        slot = await trio.to_thread.run_sync(
            lambda: KeySlot.create(master, config.repo_id, passphrase, kdf, label="initial"))
        repo = cls(store, master, config, slot, _cache_for(config, cache_root, use_cache))
        await repo.store.put(slot.name, slot.raw, exclusive=True)
        await repo.store.put(CONFIG_NAME, config.seal(master), exclusive=True)  # the commit point
        return repo

    @classmethod
    async def open(cls, store: Store, passphrase: bytes, *, cache_root: Path | None = None,
                   use_cache: bool = True) -> "Repository":
        await store.check()
        try:
            config_data = await store.get(CONFIG_NAME)
        except ObjectNotFound:
            raise RepositoryError(f"no cloudfs repository at {store.location} "
                                  "(create one with `cloudfs init`)") from None
        parse_header(config_data, CONFIG_NAME, Kind.CONFIG)   # format version first
        slot, master, repo_id = await _unlock(store, passphrase)
        repo = cls._with_config(store, config_data, slot, master, repo_id, cache_root, use_cache)
        await repo.load_index()
        return repo

    @classmethod
    def _with_config(cls, store: Store, config_data: bytes, slot: KeySlot, master: crypto.MasterKey,
                     repo_id: bytes, cache_root: Path | None, use_cache: bool) -> "Repository":
        """The repository of `config_data`, opened with the master key `slot` unwrapped."""
        try:
            config = RepoConfig.open(master, config_data)
        except IntegrityError as error:
            raise IntegrityError(CONFIG_NAME, f"{error.detail} (or key slot {slot.slot_id[:16]} "
                                              "belongs to another repository)") from None
        if config.repo_id != repo_id:
            raise IntegrityError(slot.name, "key slot belongs to another repository")
        return cls(store, master, config, slot, _cache_for(config, cache_root, use_cache))

    @classmethod
    async def open_from_copies(cls, store: Store, passphrase: bytes, config_data: bytes, slot: KeySlot, *,
                               cache_root: Path | None = None, use_cache: bool = True) -> "Repository":
        """Open with local copies of `config` and a key slot, and the index objects of
        the local cache, without asking the store anything: for a mount that starts
        while the store cannot be reached. The index may lack what other writers
        added since; `load_index()` once the store answers completes it."""
        parse_header(config_data, CONFIG_NAME, Kind.CONFIG)
        unlocked = await trio.to_thread.run_sync(slot.unlock, passphrase)
        if unlocked is None:
            raise WrongPassphrase("wrong passphrase for the key slot the last mount saved (the store "
                                  "cannot be reached; if the passphrase was changed since, the "
                                  "store is needed once)")
        repo = cls._with_config(store, config_data, slot, *unlocked, cache_root, use_cache)
        await absorb_objects(repo.index, repo.cache.names(INDEX_PREFIX), repo._open_cached_index,
                             repo.damaged_objects)
        return repo

    async def _open_cached_index(self, name: str) -> list:
        data = self.cache.get(name)
        if data is None:
            raise ObjectNotFound(name)
        return open_index_listing(self.master, name, data)

    async def close(self) -> None:
        self.index.close()
        await self.store.aclose()

    # -- keys --------------------------------------------------------------------

    async def key_slots(self) -> list[KeySlot]:
        slots = []
        for info in await self.store.list(KEYS_PREFIX):
            slots.append(KeySlot.from_bytes(info.name, await self.store.get(info.name)))
        return slots

    async def add_key(self, passphrase: bytes, *, label: str = "",
                      kdf: crypto.KdfParams | None = None) -> KeySlot:
        if not passphrase:
            raise UsageError("the passphrase must not be empty")
        kdf = kdf or await trio.to_thread.run_sync(crypto.tune_kdf)
        slot = await trio.to_thread.run_sync(
            lambda: KeySlot.create(self.master, self.config.repo_id, passphrase, kdf, label))
        await self.store.put(slot.name, slot.raw, exclusive=True)
        return slot

    async def remove_key(self, slot_id_prefix: str) -> KeySlot:
        """Remove one key slot by (a unique prefix of) its id; never the last one,
        and never the one this session was opened with."""
        slots = await self.key_slots()
        matches = [s for s in slots if s.slot_id.startswith(slot_id_prefix)]
        if not slot_id_prefix or not matches:
            raise UsageError(f"no key slot {slot_id_prefix!r}")
        if len(matches) > 1:
            raise UsageError(f"key slot id {slot_id_prefix!r} is ambiguous; give more characters")
        slot = matches[0]
        if slot.name == self.slot.name:
            raise UsageError("refusing to remove the key slot in use; open the repository "
                             "with another passphrase to remove this one")
        await self.store.delete(slot.name)
        return slot

    async def change_passphrase(self, new_passphrase: bytes, *,
                                kdf: crypto.KdfParams | None = None) -> KeySlot:
        """Add a slot for the new passphrase, then remove the current one, so there
        is never a moment without a working slot."""
        new_slot = await self.add_key(new_passphrase, label=self.slot.label, kdf=kdf)
        await self.store.delete(self.slot.name)
        self.slot = new_slot
        return new_slot

    # -- the index -----------------------------------------------------------------

    async def load_index(self) -> None:
        """Bring the local index up to date with the store: absorb the index objects
        it lacks (from the object cache where possible), forget those the store no
        longer has."""
        mark = self.index.absorbed_mark()
        listed = {info.name for info in await self.store.list(INDEX_PREFIX)}
        await forget_unlisted(self.index, listed, mark)
        await absorb_objects(self.index, listed, lambda name: self._load_cached(name, open_index_listing),
                             self.damaged_objects)
        self.cache.keep_only(INDEX_PREFIX, listed)

    async def rebuild_index(self) -> tuple[int, list[str]]:
        """Index every stored chunk that no readable index object lists, from the
        chunk's own footer; then drop the damaged index objects it supersedes.
        Returns how many chunks were indexed and which objects were dropped."""
        await self.load_index()
        unindexed = [info.name for info in await self.store.list(CHUNKS_PREFIX)
                     if self.index.chunk(chunk_id_from_name(info.name)) is None]
        for name in unindexed:
            data = await self.store.get(name)
            self.index.add_chunk(await trio.to_thread.run_sync(self._chunk_info_from_footer, name, data))
            if len(self.index.unnamed_chunks()) >= self.packer.index_every:
                await self.write_index()
        await self.write_index()
        dropped = [name for name in self.damaged_objects if name.startswith(INDEX_PREFIX)]
        for name in dropped:
            await self.store.delete(name)
            del self.damaged_objects[name]
        return len(unindexed), dropped

    async def index_object(self, name: str) -> list[ChunkInfo]:
        """The chunks one index object lists (from the cache where possible)."""
        return await self._load_cached(name, open_index)

    async def chunk_blobs(self, chunk_id: bytes) -> tuple[BlobLocation, ...]:
        """Every blob of a chunk, as the index object listing it says (read from the
        object cache, or the store), or as this session stored it. Consecutive
        chunks of one object cost one reading of it."""
        unnamed = self.index.unnamed_chunk(chunk_id)
        if unnamed is not None:
            return unnamed.blobs
        for name in self.index.objects_listing(chunk_id):
            if self._listing_cache is None or self._listing_cache[0] != name:
                try:
                    chunks = await self._load_cached(name, open_index)
                except (IntegrityError, ObjectNotFound, RepositoryError) as error:
                    log.warning("cannot read index object %s: %s", name, error)
                    continue
                self._listing_cache = (name, {chunk.chunk_id: chunk for chunk in chunks})
            chunk = self._listing_cache[1].get(chunk_id)
            if chunk is not None:
                return chunk.blobs
        raise IntegrityError(chunk_name(chunk_id), "no readable index object lists this chunk")

    def _chunk_info_from_footer(self, name: str, data: bytes) -> ChunkInfo:
        blobs = parse_footer(self.master, name, data)
        return ChunkInfo(chunk_id_from_name(name), len(data), hashlib.sha256(data).digest(), tuple(blobs))

    async def _load_cached(self, name: str, opener):
        """Open a write-once object from the cache, or fetch and cache it."""
        data = self.cache.get(name)
        if data is not None:
            try:
                return opener(self.master, name, data)
            except IntegrityError:
                log.warning("cached copy of %s is damaged; fetching it again", name)

        async def opened(data: bytes):
            return opener(self.master, name, data), data

        # With several targets, a copy that does not open is read from the next one.
        value, data = await self.store.get_verified(name, opened)
        self.cache.put(name, data)
        return value

    # -- blobs ---------------------------------------------------------------------

    def blob_id(self, plaintext: bytes) -> bytes:
        return self.master.blob_id(plaintext)

    async def put_blob(self, kind: BlobKind, plaintext: bytes) -> bytes:
        """Store a blob unless the repository has it already; return its id.

        The blob is durable only after the next flush() (its chunk may still be
        in memory, and its index entry is written at flush). Many blobs at once
        go faster through `packer.store_sync` from worker threads."""
        return await trio.to_thread.run_sync(self.packer.store_sync, kind, plaintext)

    async def flush(self) -> None:
        """Store the partly filled chunks, then one index object for every chunk
        stored that no index object names yet. Afterwards every blob put so far is
        durable. Call it when no blob is being stored."""
        await self.packer.flush()
        await self.write_index()

    async def write_index(self) -> None:
        """One index object naming every stored chunk that none names yet (including
        those of an earlier attempt whose index object could not be written), then
        the same object into the local index."""
        async with self._naming:
            chunks = self.index.unnamed_chunks()
            if not chunks:
                return
            name = new_index_name()
            data = seal_index(self.master, name, chunks)
            await self.store.put(name, data)
            self.written.metadata_bytes += len(data)
            self.cache.put(name, data)
            await trio.to_thread.run_sync(self.index.add_object, name, chunks)

    async def get_blob(self, blob_id: bytes) -> bytes:
        """The verified plaintext of a stored blob (I5), or IntegrityError. A chunk
        that is gone makes the index be read again once: a prune may have moved the
        blob to another chunk since this process loaded it (docs/prune.md, R4)."""
        location = self.index.get(blob_id)
        if location is None:
            raise IntegrityError(f"blob {blob_id.hex()[:16]}", "not in the index")
        try:
            return await self._read_record(location)
        except ObjectNotFound:
            async with self._reloading:
                await self.load_index()
            moved = self.index.get(blob_id)
            if moved is None or moved.chunk_id == location.chunk_id:
                raise IntegrityError(chunk_name(location.chunk_id), "chunk is missing from the store") from None
            return await self.read_blob(moved)

    async def read_blob(self, location: BlobLocation) -> bytes:
        try:
            return await self._read_record(location)
        except ObjectNotFound:
            raise IntegrityError(chunk_name(location.chunk_id), "chunk is missing from the store") from None

    async def _read_record(self, location: BlobLocation) -> bytes:
        name = chunk_name(location.chunk_id)

        async def verified(record: bytes) -> bytes:
            if location.raw_length >= THREAD_THRESHOLD:
                return await trio.to_thread.run_sync(open_record, self.master, location, record, name)
            return open_record(self.master, location, record, name)

        # With several targets, a record that fails verification is read from the next.
        return await self.store.get_verified(name, verified, location.offset, location.length)

    # -- snapshots -------------------------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot,
                            before_put: Callable[[], Awaitable[None]] | None = None) -> Snapshot:
        """Write the snapshot object last (I4): flush first, and refuse a root tree
        that is not stored. `before_put` runs after the flush, right before the put
        (the writer's check against prune's doom lists, which may store blobs and
        flush again)."""
        await self.flush()
        if before_put is not None:
            await before_put()
        if snapshot.tree not in self.index:
            raise IntegrityError("snapshot", "its root tree is not stored; refusing to commit")
        snapshot = snapshot.with_name()
        data = snapshot.seal(self.master)
        await self.store.put(snapshot.name, data, exclusive=True)
        self.written.metadata_bytes += len(data)
        self.cache.put(snapshot.name, data)
        return snapshot

    async def snapshots(self) -> list[Snapshot]:
        """Every readable snapshot, oldest first (damaged ones go to damaged_objects)."""
        listed = {info.name for info in await self.store.list(SNAPSHOTS_PREFIX)}
        self.cache.keep_only(SNAPSHOTS_PREFIX, listed)
        found = []
        for name in sorted(listed):
            try:
                found.append(await self._load_cached(name, Snapshot.open))
            except (IntegrityError, ObjectNotFound, RepositoryError) as error:
                log.warning("skipping snapshot: %s", error)
                self.damaged_objects[name] = str(error)
        return found

    async def forget_snapshot(self, snapshot: Snapshot) -> None:
        """Delete a snapshot object (maintenance). Its data stays until a prune."""
        await self.store.delete(snapshot.name)

    # -- pins ------------------------------------------------------------------------

    async def pinned(self) -> dict[str, list[str]]:
        """Snapshot name -> the names of its pin objects, from one listing."""
        pins: dict[str, list[str]] = {}
        for info in await self.store.list(PINS_PREFIX):
            snapshot = pinned_snapshot(info.name)
            if snapshot is not None:
                pins.setdefault(snapshot, []).append(info.name)
        return pins

    async def open_pins(self, names: list[str]) -> list[Pin]:
        """The readable pins among `names` (a damaged one still pins by its name)."""
        pins = []
        for name in names:
            try:
                pins.append(await self._load_cached(name, Pin.open))
            except (IntegrityError, ObjectNotFound, RepositoryError) as error:
                log.warning("unreadable pin: %s", error)
        return pins

    async def save_pin(self, pin: Pin) -> Pin:
        """Write a pin (a put, which the writer role may do), then make sure its
        snapshot is still there: a forget running meanwhile may have deleted it."""
        pin = await self._save_sealed(pin)
        if not await self.store.exists(pin.snapshot):
            raise ObjectNotFound(pin.snapshot, f"{pin.snapshot} was forgotten while it was being pinned")
        return pin

    async def remove_pin(self, name: str) -> None:
        """Delete one pin object (maintenance)."""
        if pinned_snapshot(name) is None:
            raise ValueError(f"{name} is not a pin")
        await self.store.delete(name)

    # -- prune's objects (docs/prune.md) ---------------------------------------------

    async def doom_list(self, name: str) -> DoomList:
        return await self._load_cached(name, DoomList.open)

    async def lease(self, name: str) -> Lease:
        return await self._load_cached(name, Lease.open)

    async def save_doom_list(self, doom: DoomList) -> DoomList:
        return await self._save_sealed(doom)

    # -- targets -------------------------------------------------------------------

    async def targets(self) -> list[TargetRecord]:
        """The repository's targets, one record each (none: the repository is kept
        only where it was opened). Listed in the store; from the local cache while
        the store cannot be reached, so a mount at boot still knows the others."""
        try:
            listed = [info.name for info in await self.store.list(TARGETS_PREFIX)]
        except StoreUnavailable:
            listed = self.cache.names(TARGETS_PREFIX)
            if not listed:
                raise
        records = []
        for name in sorted(listed):
            if target_of(name) is None:
                continue
            try:
                records.append(await self._load_cached(name, TargetRecord.open))
            except (IntegrityError, ObjectNotFound, RepositoryError) as error:
                log.warning("skipping target record: %s", error)
                self.damaged_objects[name] = str(error)
        return current_records(records)

    async def save_target(self, record: TargetRecord) -> TargetRecord:
        """Record a target (a put: the writer role may add targets)."""
        return await self._save_sealed(record)

    async def remove_target(self, target: str) -> list[str]:
        """Delete every record of one target (maintenance); its copy of the data stays."""
        names = [info.name for info in await self.store.list(f"{TARGETS_PREFIX}{target}/")
                 if target_of(info.name) == target]
        for name in names:
            await self.store.delete(name)
        return names

    def use_store(self, store: Store) -> None:
        """Read and write through `store` from now on (the targets' replicated store)."""
        self.store = _locking(store, self.config)

    def at(self, store: Store) -> "Repository":
        """The same repository as one of its targets holds it, read through `store`
        alone and without the local cache (so a copy there cannot hide its damage);
        its index is loaded by the first load_index()."""
        return Repository(store, self.master, self.config, self.slot, ObjectCache(None))

    # -- the retention policy --------------------------------------------------------

    async def current_policy(self) -> PolicyRecord | None:
        """The newest policy object, or None if none was ever written. A newest one
        that cannot be read is an error, never a reason to fall back on an older one."""
        listed = [info.name for info in await self.store.list(POLICY_PREFIX)]
        return await self._load_cached(max(listed), PolicyRecord.open) if listed else None

    async def save_policy(self, record: PolicyRecord) -> PolicyRecord:
        return await self._save_sealed(record)

    async def _save_sealed(self, record):
        """Name, seal and write once a write-once object (pin, policy, doom list, target);
        keep a copy in the cache. Returns it with its name."""
        record = record.with_name()
        data = record.seal(self.master)
        await self.store.put(record.name, data, exclusive=True)
        self.cache.put(record.name, data)
        return record


def _locking(store: Store, config: RepoConfig) -> Store:
    """The store through which this repository writes: every put locked if the
    repository was created with Object Lock."""
    if config.object_lock is None:
        return store
    return LockingStore(store, config.object_lock.mode, config.object_lock.days)


def _cache_for(config: RepoConfig, cache_root: Path | None, use_cache: bool) -> ObjectCache:
    if not use_cache:
        return ObjectCache(None)
    return ObjectCache((cache_root or default_cache_root()) / config.repo_id_hex)


async def _unlock(store: Store, passphrase: bytes) -> tuple[KeySlot, crypto.MasterKey, bytes]:
    """Try the passphrase on every key slot; the first that opens wins."""
    damaged = []
    listed = await store.list(KEYS_PREFIX)
    for info in listed:
        try:
            slot = KeySlot.from_bytes(info.name, await store.get(info.name))
        except IntegrityError:
            damaged.append(info.name)
            continue
        unlocked = await trio.to_thread.run_sync(slot.unlock, passphrase)
        if unlocked is not None:
            if damaged:
                log.warning("damaged key slots (run cloudfs check): %s", ", ".join(damaged))
            return (slot, *unlocked)
    if not listed:
        raise RepositoryError(f"{store.location} has no key slots; the repository cannot be opened")
    if damaged:
        raise WrongPassphrase(f"wrong passphrase, or its key slot is damaged ({', '.join(damaged)})")
    raise WrongPassphrase(f"wrong passphrase: no key slot of {store.location} opens with it")
