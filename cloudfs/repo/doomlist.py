"""Doom lists: `doomed/<UTC time>-<id>`, what one prune marked for deletion.

Prune deletes in two runs (docs/prune.md): the first *marks* (writes a doom
list naming the chunks no snapshot it saw needs), the next, at least the
grace period later by the store's clock, *sweeps* (deletes them, less any
that a snapshot committed meanwhile turned out to need). The doom list is
the only thing the two runs share, and what writers read to know which
chunks they must not count on (cloudfs/snapshot/prune/guard.py). Written by
the maintenance role, read by every writer; write-once like every object.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field, replace

from cloudfs.crypto import MasterKey
from cloudfs.errors import IntegrityError
from cloudfs.repo.format import Kind, open_dataclass, seal_dataclass, time_stamped_name
from cloudfs.repo.keys import user_name

DOOMED_PREFIX = "doomed/"


@dataclass(frozen=True)
class DoomList:
    chunks: list[bytes]              # ids of the chunks the sweep deletes
    snapshots: list[str]             # the snapshot objects the mark walked
    grace_ns: int                    # the sweep waits this long after the doom list was stored
    repacked: int = 0                # how many of `chunks` had their live blobs copied first
    chunk_bytes: int = 0             # their total size
    time_ns: int = field(default_factory=time.time_ns)
    host: str = field(default_factory=socket.gethostname)
    user: str = field(default_factory=user_name)
    name: str = ""                   # set when saved

    def with_name(self) -> "DoomList":
        return replace(self, name=time_stamped_name(DOOMED_PREFIX, self.time_ns))

    def seal(self, master: MasterKey) -> bytes:
        return seal_dataclass(Kind.DOOM_LIST, master.prune_key, self, compress=True)

    @classmethod
    def open(cls, master: MasterKey, name: str, data: bytes) -> "DoomList":
        doom = open_dataclass(cls, Kind.DOOM_LIST, master.prune_key, name, data)
        if not all(isinstance(chunk, bytes) and len(chunk) == 32 for chunk in doom.chunks):
            raise IntegrityError(name, "unusable doom list (a chunk id is not 32 bytes)")
        return replace(doom, chunks=list(doom.chunks), snapshots=list(doom.snapshots))
