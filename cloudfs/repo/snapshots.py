"""Snapshot objects: `snapshots/<UTC time>-<id>`, one sealed msgpack map each.

A snapshot names the root tree of the protected directory at one instant and
says where and when it was taken. It is the last object an upload writes (I4).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from cloudfs.crypto import MasterKey
from cloudfs.errors import IntegrityError, UsageError
from cloudfs.repo.format import Kind, open_dataclass, seal_dataclass, time_stamped_name

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
        return replace(self, name=time_stamped_name(SNAPSHOTS_PREFIX, self.time_ns))

    def seal(self, master: MasterKey) -> bytes:
        return seal_dataclass(Kind.SNAPSHOT, master.snapshot_key, self)

    @classmethod
    def open(cls, master: MasterKey, name: str, data: bytes) -> "Snapshot":
        snapshot = open_dataclass(cls, Kind.SNAPSHOT, master.snapshot_key, name, data)
        if not isinstance(snapshot.tree, bytes) or not isinstance(snapshot.tags, (list, tuple)):
            raise IntegrityError(name, "unusable snapshot (tree or tags of the wrong type)")
        return replace(snapshot, tags=tuple(snapshot.tags))


MAX_TAG = 100


def checked_tags(tags) -> tuple[str, ...]:
    """Tags as given, once each, in order; UsageError for an empty one, one longer than
    MAX_TAG characters, or one with a comma, white space or a control character (a
    tag must survive a command line and a comma-separated list)."""
    if not isinstance(tags, (list, tuple)):
        raise UsageError("tags must be given as a list")
    for tag in tags:
        if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG or not tag.isprintable() \
                or "," in tag or any(c.isspace() for c in tag):
            raise UsageError(f"{tag!r} is not a tag: 1-{MAX_TAG} printable characters, no spaces or commas")
    return tuple(dict.fromkeys(tags))
