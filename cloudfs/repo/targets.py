"""Target objects: `targets/<target>/<id>`, one per place the repository is kept.

A repository may live in several stores at once (buckets, endpoints, regions,
providers): its targets. Every object goes to each of them, so a lost region,
a deleted bucket or silent damage in one leaves the others. The list lives in
the repository itself, as one object per target, because every writer must
send every object everywhere (a blob deduplicated against another writer's
upload is only safe on the targets that writer reached), and because a new
machine that can reach any one target then finds the others.

A record says where a target is and how to reach it, never with what secret:
credentials come from a profile or a credentials file named here (or from the
local configuration, which may override any setting per machine). Adding a
target is a put, which the writer role may do; removing one is a delete, which
only the maintenance role may do, so the keys on a protected machine can never
silently stop a target from receiving backups. docs/format.md specifies the
object; docs/operations.md says how to use it.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field, replace

from cloudfs.crypto import MasterKey
from cloudfs.errors import IntegrityError, UsageError
from cloudfs.repo.format import Kind, open_dataclass, seal_dataclass
from cloudfs.repo.keys import user_name

TARGETS_PREFIX = "targets/"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")


def checked_target_name(text: str) -> str:
    if not NAME_PATTERN.fullmatch(text):
        raise UsageError(f"target name {text!r}: 1-40 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return text


def target_of(object_name: str) -> str | None:
    """The target an object name `targets/<target>/<id>` records (None if it is not one)."""
    middle, slash, record_id = object_name.removeprefix(TARGETS_PREFIX).rpartition("/")
    if not object_name.startswith(TARGETS_PREFIX) or not slash or not record_id \
            or not NAME_PATTERN.fullmatch(middle):
        return None
    return middle


@dataclass(frozen=True)
class TargetRecord:
    target: str                          # the target's name: `eu`, `backup-disk`
    location: str                        # s3://…, s3+https://…, a path: as `--repo` takes it
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None           # an AWS profile of the machine that uses it
    credentials_file: str | None = None  # an AWS credentials file of that machine
    ca_bundle: str | None = None
    addressing: str = "auto"
    checksum: str = "sha256"
    bandwidth_limit: int = 0             # bytes per second of uploads to it; 0: none
    time_ns: int = field(default_factory=time.time_ns)
    host: str = field(default_factory=socket.gethostname)
    user: str = field(default_factory=user_name)
    name: str = ""                       # the object's name, set when saved

    def with_name(self) -> "TargetRecord":
        return replace(self, name=f"{TARGETS_PREFIX}{checked_target_name(self.target)}/{os.urandom(8).hex()}")

    def seal(self, master: MasterKey) -> bytes:
        return seal_dataclass(Kind.TARGET, master.target_key, self)

    @classmethod
    def open(cls, master: MasterKey, name: str, data: bytes) -> "TargetRecord":
        record = open_dataclass(cls, Kind.TARGET, master.target_key, name, data)
        if record.target != target_of(name):
            raise IntegrityError(name, f"records target {record.target!r}, which its name does not say")
        return record

    def settings(self) -> dict:
        """The settings a person may see (no secret is ever in a record)."""
        return {key: value for key, value in (
            ("endpoint_url", self.endpoint_url), ("region", self.region), ("profile", self.profile),
            ("credentials_file", self.credentials_file), ("ca_bundle", self.ca_bundle),
            ("bandwidth_limit", self.bandwidth_limit or None)) if value}


def current_records(records: list[TargetRecord]) -> list[TargetRecord]:
    """One record per target, its newest (two machines adding the same target at once
    write two), in the order the targets were first added."""
    newest: dict[str, TargetRecord] = {}
    for record in sorted(records, key=lambda r: (r.time_ns, r.name)):
        newest[record.target] = record     # a dict keeps the position of the first insertion
    return list(newest.values())
