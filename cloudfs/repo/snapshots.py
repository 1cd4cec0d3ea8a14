"""Snapshot objects: `snapshots/<UTC time>-<id>`, one sealed msgpack map each.

A snapshot names the root tree of the protected directory at one instant and
says where and when it was taken. It is the last object an upload writes (I4).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from cloudfs.crypto import MasterKey
from cloudfs.errors import IntegrityError
from cloudfs.repo.format import Kind, open_object, seal_object

SNAPSHOTS_PREFIX = "snapshots/"


@dataclass(frozen=True)
class Snapshot:
    tree: bytes                      # blob id of the root tree
    time_ns: int = field(default_factory=time.time_ns)   # the sealing instant
    host: str = field(default_factory=socket.gethostname)
    source: str = ""                 # the protected directory
    parent: str | None = None        # name of the snapshot this one was built from
    stats: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    name: str = ""                   # set from time_ns when saved

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_ns / 1e9, timezone.utc)

    def with_name(self) -> "Snapshot":
        stamp = datetime.fromtimestamp(self.time_ns // 1_000_000_000, timezone.utc)
        micros = (self.time_ns // 1000) % 1_000_000
        name = f"{SNAPSHOTS_PREFIX}{stamp:%Y-%m-%dT%H%M%S}.{micros:06d}Z-{os.urandom(4).hex()}"
        return Snapshot(**{**asdict(self), "name": name})

    def seal(self, master: MasterKey) -> bytes:
        value = asdict(self)
        del value["name"]
        value["tags"] = list(self.tags)
        return seal_object(Kind.SNAPSHOT, master.snapshot_key, self.name, value)

    @classmethod
    def open(cls, master: MasterKey, name: str, data: bytes) -> "Snapshot":
        value = open_object(Kind.SNAPSHOT, master.snapshot_key, name, data)
        try:
            value["tree"] = bytes(value["tree"])
            value["tags"] = tuple(value.get("tags", ()))
            return cls(**value, name=name)
        except (TypeError, KeyError) as error:
            raise IntegrityError(name, f"unusable snapshot ({error})") from None
