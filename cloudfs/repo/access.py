"""What a mount keeps so it can open its repository while the store cannot be reached.

I6 says the network is never on the write path; that must hold at boot too, when a
protected directory is mounted before the network (or the store) is up. After
every mount that opened its repository through the store, the state directory
gets `repository`: the location, the sealed `config` and the key slot that
opened it — both as useless without the passphrase as their copies in the
store. A later mount that finds the store unreachable opens the repository from
these copies and the index objects in the local cache (`Repository.open_from_copies`),
and its uploads wait until the store answers.

Format: msgpack map {format, version, location, config (bin), slot_name, slot (bin)},
written atomically, owner-only.
"""

from __future__ import annotations

from pathlib import Path

import msgpack

from cloudfs.errors import IntegrityError, StoreUnavailable
from cloudfs.fsutil import make_directories, replace_durably
from cloudfs.repo.keys import KeySlot
from cloudfs.repo.repository import Repository
from cloudfs.store.base import Store

ACCESS_NAME = "repository"
FORMAT = "cloudfs-repository-access"
VERSION = 1


async def open_for_mount(store: Store, passphrase: bytes, state_dir: Path, location: str, *,
                         cache_root: Path | None, use_cache: bool) -> tuple[Repository, str | None]:
    """The repository, through the store if it answers (then its copies are saved),
    else from the copies the last mount saved. Returns it with why the store was not
    used (None if it was). Without copies, the store's error is raised."""
    try:
        repo = await Repository.open(store, passphrase, cache_root=cache_root, use_cache=use_cache)
    except StoreUnavailable as error:
        saved = load_access(state_dir, location)
        if saved is None:
            raise
        config_data, slot = saved
        repo = await Repository.open_from_copies(store, passphrase, config_data, slot,
                                                 cache_root=cache_root, use_cache=use_cache)
        return repo, str(error)
    try:
        save_access(state_dir, location, repo)
    except OSError:
        pass   # only the next offline start needs it
    return repo, None


def save_access(state_dir: Path, location: str, repo: Repository) -> None:
    make_directories(state_dir)
    document = {"format": FORMAT, "version": VERSION, "location": location,
                "config": repo.config.seal(repo.master), "slot_name": repo.slot.name, "slot": repo.slot.raw}
    replace_durably(state_dir / ACCESS_NAME, msgpack.packb(document, use_bin_type=True))


def load_access(state_dir: Path, location: str) -> tuple[bytes, KeySlot] | None:
    """The saved config and key slot of the repository at `location`, or None (none
    saved, saved for another location, or unreadable)."""
    try:
        document = msgpack.unpackb((state_dir / ACCESS_NAME).read_bytes(), raw=False)
        if (document.get("format"), document.get("version"), document.get("location")) != \
                (FORMAT, VERSION, location):
            return None
        return document["config"], KeySlot.from_bytes(document["slot_name"], document["slot"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException,
            IntegrityError):   # a damaged copy is as good as none
        return None
