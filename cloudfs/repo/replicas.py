"""A repository's targets as one store: their records, the stores that reach them, their backlogs.

Wiring only; the behaviour is `cloudfs.store.replicated`. The caller (the CLI,
the mount) says how to build the store of a record (`store_for`: its options,
retries and connections come from the command line) and where backlogs live
(the mount's state directory; None for a command that runs once). The store
the repository was opened with serves the target it is, with the credentials
the command line gave.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from cloudfs.errors import IntegrityError, RepositoryError
from cloudfs.repo.chunk import CHUNKS_PREFIX, chunk_id_from_name
from cloudfs.repo.config import CONFIG_NAME, RepoConfig
from cloudfs.repo.index import INDEX_PREFIX, open_index
from cloudfs.repo.keys import KEYS_PREFIX, KeySlot
from cloudfs.repo.pins import PINS_PREFIX, Pin
from cloudfs.repo.policy import POLICY_PREFIX, PolicyRecord
from cloudfs.repo.snapshots import SNAPSHOTS_PREFIX, Snapshot
from cloudfs.repo.targets import TARGETS_PREFIX, TargetRecord
from cloudfs.store.backlog import Backlog
from cloudfs.store.base import Store
from cloudfs.store.locking import LockingStore
from cloudfs.store.replicated import ReplicatedStore, Target
from cloudfs.store.throttle import ThrottledStore
from cloudfs.store.wrapper import StoreWrapper

StoreFor = Callable[[TargetRecord], Store]


def chunk_facts(repo, name: str) -> tuple[int, bytes] | None:
    """A chunk's size and SHA-256 as the index records them (None for other objects
    and for chunks no index names). The one place the targets look into the blob
    index (`repo.index.chunk`)."""
    if not name.startswith(CHUNKS_PREFIX):
        return None
    try:
        chunk = repo.index.chunk(chunk_id_from_name(name))
    except ValueError:
        return None
    return (chunk.size, chunk.sha256) if chunk is not None else None


#: How each kind of object is opened (authenticated) by its name's prefix.
OPENERS = {
    INDEX_PREFIX: open_index,
    SNAPSHOTS_PREFIX: Snapshot.open,
    PINS_PREFIX: Pin.open,
    POLICY_PREFIX: PolicyRecord.open,
    TARGETS_PREFIX: TargetRecord.open,
    KEYS_PREFIX: lambda master, name, data: KeySlot.from_bytes(name, data),
}


def copy_problem(repo, name: str, data: bytes) -> str | None:
    """What is wrong with a copy of object `name` (None: it is good): a chunk must have
    the size and SHA-256 the index records (a chunk no index names is taken as it is),
    any other object must open with the repository's key."""
    if name.startswith(CHUNKS_PREFIX):
        facts = chunk_facts(repo, name)
        if facts is None:
            return None
        if len(data) != facts[0]:
            return f"{len(data)} bytes, the index says {facts[0]}"
        return None if hashlib.sha256(data).digest() == facts[1] else "its SHA-256 is not the index's"
    try:
        if name == CONFIG_NAME:
            RepoConfig.open(repo.master, data)
        else:
            opener = next((opener for prefix, opener in OPENERS.items() if name.startswith(prefix)), None)
            if opener is not None:
                opener(repo.master, name, data)
    except (IntegrityError, RepositoryError) as error:
        return str(error)
    return None


def place(store: Store) -> tuple[str, str | None]:
    """Where a store is: its location, and its endpoint if it has one."""
    while isinstance(store, StoreWrapper):
        store = store.inner
    return store.location, getattr(store, "endpoint", None)


def backlog_path(directory: Path, record: TargetRecord) -> Path:
    """One file per target and location: a name reused for another place starts afresh."""
    where = hashlib.sha256(f"{record.location}\n{record.endpoint_url}".encode()).hexdigest()[:12]
    return directory / f"{record.target}-{where}.backlog"


def target_for(repo, record: TargetRecord, store_for: StoreFor, *, opened: Store | None = None,
               backlog_dir: Path | None = None) -> Target:
    """One target: its store (the opened one if it is that place), limited to its bandwidth,
    locking its puts if the repository locks, with its backlog."""
    store = store_for(record)
    if opened is not None and place(opened) == place(store):
        store = opened
    if record.bandwidth_limit:
        store = ThrottledStore(store, record.bandwidth_limit)
    lock = repo.config.object_lock
    if lock is not None:
        store = LockingStore(store, lock.mode, lock.days)
    backlog = Backlog(backlog_path(backlog_dir, record)) if backlog_dir is not None else None
    return Target(record.target, store, backlog)


def replicated_store(repo, records: list[TargetRecord], store_for: StoreFor, *, opened: Store | None = None,
                     backlog_dir: Path | None = None) -> ReplicatedStore:
    """The store of every target of `records`; the opened one is asked first."""
    targets = [target_for(repo, record, store_for, opened=opened, backlog_dir=backlog_dir)
               for record in records]
    if opened is not None:
        targets.sort(key=lambda target: place(target.store) != place(opened))
    return ReplicatedStore(targets, check_copy=lambda name, data: copy_problem(repo, name, data))
