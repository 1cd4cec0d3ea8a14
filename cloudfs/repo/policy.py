"""Policy objects: `policy/<UTC time>-<id>`, the retention policy `forget` applies by default.

Objects are write-once, so changing the policy writes a new one and the newest
(by name, which sorts by time) is the policy. The rules themselves are a map
whose meaning belongs to cloudfs.snapshot.retention; this module only stores
and finds them. Writing one is maintenance work: a writer that could change the
policy could make the next forget delete what it should keep.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field, replace

from cloudfs.crypto import MasterKey
from cloudfs.errors import IntegrityError
from cloudfs.repo.format import Kind, open_dataclass, seal_dataclass, time_stamped_name
from cloudfs.repo.keys import user_name

POLICY_PREFIX = "policy/"


@dataclass(frozen=True)
class PolicyRecord:
    rules: dict                      # see docs/format.md and retention.Policy.to_record
    time_ns: int = field(default_factory=time.time_ns)
    host: str = field(default_factory=socket.gethostname)
    user: str = field(default_factory=user_name)
    name: str = ""                   # set when saved

    def with_name(self) -> "PolicyRecord":
        return replace(self, name=time_stamped_name(POLICY_PREFIX, self.time_ns))

    def seal(self, master: MasterKey) -> bytes:
        return seal_dataclass(Kind.POLICY, master.policy_key, self)

    @classmethod
    def open(cls, master: MasterKey, name: str, data: bytes) -> "PolicyRecord":
        record = open_dataclass(cls, Kind.POLICY, master.policy_key, name, data)
        if not isinstance(record.rules, dict):
            raise IntegrityError(name, "unusable policy (its rules are not a map)")
        return record
