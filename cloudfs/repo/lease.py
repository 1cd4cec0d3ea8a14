"""Leases: `leases/<UTC time>-<id>`, one prune at a time (maintainers only).

A prune stores a lease before it changes anything and gives up if another
prune's lease is still valid. A lease is valid for `duration_ns` after the
store received it (its LastModified: the store's clock, never a client's),
unless it was taken on this machine, since its last boot, by a process that
no longer runs (a prune killed with -9 need not be waited for). Writers never
read or write leases. Renewing a lease writes a new one; the old is deleted.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field, replace

from cloudfs.crypto import MasterKey
from cloudfs.repo.format import Kind, open_dataclass, seal_dataclass, time_stamped_name
from cloudfs.repo.keys import user_name

LEASES_PREFIX = "leases/"


def boot_id() -> str:
    """This boot of this machine (a process id means nothing across boots)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Lease:
    duration_ns: int                 # valid this long after the store received it
    command: str = "prune"
    pid: int = field(default_factory=os.getpid)
    boot: str = field(default_factory=boot_id)
    time_ns: int = field(default_factory=time.time_ns)
    host: str = field(default_factory=socket.gethostname)
    user: str = field(default_factory=user_name)
    name: str = ""                   # set when saved

    def with_name(self) -> "Lease":
        return replace(self, name=time_stamped_name(LEASES_PREFIX, self.time_ns))

    def seal(self, master: MasterKey) -> bytes:
        return seal_dataclass(Kind.LEASE, master.prune_key, self)

    @classmethod
    def open(cls, master: MasterKey, name: str, data: bytes) -> "Lease":
        return open_dataclass(cls, Kind.LEASE, master.prune_key, name, data)

    def holder_is_gone(self) -> bool:
        """Taken on this machine since its last boot by a process that has ended."""
        if self.host != socket.gethostname() or not self.boot or self.boot != boot_id():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
