"""Pin objects: `pins/<snapshot>/<id>`, each keeps one snapshot whatever the policy.

A pin is written once, by anyone who may write (the writer role: a person with
`cloudfs pin`, the live mount, a tripwire), and removed only by the maintenance
role (`cloudfs unpin`), so that a writer's credentials can keep a snapshot but
never give one up. The name says which snapshot is pinned, so one listing tells
forget what is pinned; the sealed body says who pinned it, when and why.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field, replace

from cloudfs.crypto import MasterKey
from cloudfs.errors import IntegrityError
from cloudfs.repo.format import Kind, open_dataclass, seal_dataclass
from cloudfs.repo.keys import user_name
from cloudfs.repo.snapshots import SNAPSHOTS_PREFIX

PINS_PREFIX = "pins/"


def pins_prefix_of(snapshot_name: str) -> str:
    """`pins/<time>-<id>/`: where the pins of snapshot `snapshots/<time>-<id>` are."""
    return f"{PINS_PREFIX}{snapshot_name.removeprefix(SNAPSHOTS_PREFIX)}/"


def pinned_snapshot(pin_name: str) -> str | None:
    """The name of the snapshot a pin object's name pins (None if it is not a pin's name)."""
    middle, slash, pin_id = pin_name.removeprefix(PINS_PREFIX).rpartition("/")
    if not pin_name.startswith(PINS_PREFIX) or not slash or not middle or "/" in middle or not pin_id:
        return None
    return SNAPSHOTS_PREFIX + middle


@dataclass(frozen=True)
class Pin:
    snapshot: str                    # the pinned snapshot's object name
    note: str = ""                   # why, for people
    time_ns: int = field(default_factory=time.time_ns)
    host: str = field(default_factory=socket.gethostname)
    user: str = field(default_factory=user_name)
    name: str = ""                   # set when saved

    def with_name(self) -> "Pin":
        return replace(self, name=pins_prefix_of(self.snapshot) + os.urandom(8).hex())

    def seal(self, master: MasterKey) -> bytes:
        return seal_dataclass(Kind.PIN, master.pin_key, self)

    @classmethod
    def open(cls, master: MasterKey, name: str, data: bytes) -> "Pin":
        pin = open_dataclass(cls, Kind.PIN, master.pin_key, name, data)
        if pin.snapshot != pinned_snapshot(name):
            raise IntegrityError(name, f"pins {pin.snapshot}, which its name does not say")
        return pin
