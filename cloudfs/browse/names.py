"""What snapshots are called where people see them, and how a name picks one.

A snapshot object is named `snapshots/2026-11-26T054000.711247Z-50c0d921`. A
person sees it as `2026-11-26T054000Z`: its UTC second without colons, so the
name survives SMB, file managers and shells. When several snapshots share a
second, the earliest keeps the plain name and the others carry their
microseconds (`2026-11-26T054000.711247Z`), so a name never changes when a
later snapshot arrives. Samba's shadow copies want `@GMT-2026.11.26-05.40.00`;
that format has no room for more than one snapshot a second, so there the
newest of that second wins.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cloudfs.errors import UsageError
from cloudfs.repo import Snapshot
from cloudfs.repo.snapshots import SNAPSHOTS_PREFIX

LATEST = "latest"
TIME_NAME = re.compile(r"^\d{4}-\d\d-\d\dT\d{6}(\.\d{6})?Z(-[0-9a-f]+)?$")
GMT_NAME = re.compile(r"^@GMT-\d{4}\.\d\d\.\d\d-\d\d\.\d\d\.\d\d$")
MAX_EXTENSION = 16


@dataclass(frozen=True)
class SnapshotFilter:
    """Which snapshots a command looks at: those of one host and/or one protected
    directory (None: any)."""

    host: str | None = None
    sources: frozenset[str] | None = None   # the directory's path, in each form it may be recorded in

    def apply(self, snapshots: list[Snapshot]) -> list[Snapshot]:
        return [s for s in snapshots if (self.host is None or s.host == self.host)
                and (self.sources is None or s.source in self.sources)]

    def chosen(self, snapshots: list[Snapshot]) -> list[Snapshot]:
        """apply(), refusing (UsageError) to choose none of a repository that has some."""
        kept = self.apply(snapshots)
        if snapshots and not kept:
            raise UsageError(f"no snapshot matches --host/--source; the repository has snapshots of "
                             f"{_shown(_origins(snapshots))}")
        return kept


def _origins(snapshots: list[Snapshot]) -> list[str]:
    """The host:directory pairs the snapshots were taken of, sorted."""
    return sorted({f"{s.host}:{s.source}" for s in snapshots})


def _shown(origins: list[str]) -> str:
    return ", ".join(origins[:3]) + (", ..." if len(origins) > 3 else "")


def _utc(snapshot: Snapshot) -> datetime:
    return datetime.fromtimestamp(snapshot.time_ns // 1_000_000_000, timezone.utc)


def second_name(snapshot: Snapshot) -> str:
    return f"{_utc(snapshot):%Y-%m-%dT%H%M%S}Z"


def micro_name(snapshot: Snapshot) -> str:
    micros = (snapshot.time_ns // 1000) % 1_000_000
    return f"{_utc(snapshot):%Y-%m-%dT%H%M%S}.{micros:06d}Z"


def gmt_name(snapshot: Snapshot) -> str:
    return f"{_utc(snapshot):@GMT-%Y.%m.%d-%H.%M.%S}"


def short_id(snapshot: Snapshot) -> str:
    """The random suffix of the object name (`50c0d921`)."""
    return snapshot.name.rsplit("-", 1)[-1]


def looks_like_snapshot_name(name: str) -> bool:
    """True for names a new snapshot could have (worth refreshing the list for)."""
    return name == LATEST or bool(TIME_NAME.match(name) or GMT_NAME.match(name))


def version_name(time_name: str, file_name: bytes) -> bytes:
    """The name of one version in the history view: its snapshot's time name plus
    the file's extension, so a file manager still opens it with the right program."""
    extension = os.path.splitext(file_name)[1]
    if len(extension) > MAX_EXTENSION or not extension[1:].isalnum():
        extension = b""
    return time_name.encode() + extension


@dataclass
class Catalog:
    """The snapshots of a repository and their names, oldest first.

    Immutable once built: the mount swaps in a new catalog when the list
    changes, and `generation` tells views built on an older one to rebuild."""

    snapshots: list[Snapshot]
    generation: int = 0
    time_names: dict[str, str] = field(default_factory=dict)     # snapshot.name -> time name
    by_time_name: dict[str, Snapshot] = field(default_factory=dict)
    by_gmt_name: dict[str, Snapshot] = field(default_factory=dict)

    def __post_init__(self):
        self.snapshots = sorted(self.snapshots, key=lambda s: (s.time_ns, s.name))
        taken: set[str] = set()
        for snapshot in self.snapshots:
            name = second_name(snapshot)
            if name in taken:
                name = micro_name(snapshot)
            if name in taken:
                name = f"{micro_name(snapshot)}-{short_id(snapshot)}"
            taken.add(name)
            self.time_names[snapshot.name] = name
            self.by_time_name[name] = snapshot
            self.by_gmt_name[gmt_name(snapshot)] = snapshot   # the newest of a second wins

    @property
    def latest(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    def time_name(self, snapshot: Snapshot) -> str:
        return self.time_names[snapshot.name]

    def same_snapshots(self, snapshots: list[Snapshot]) -> bool:
        return {s.name for s in snapshots} == set(self.time_names)

    def resolve(self, text: str) -> Snapshot:
        """The snapshot a user means: `latest`, a full object name (with or
        without `snapshots/`), a time name, an @GMT name, its id, or a unique
        prefix of any of these. UsageError if none or several match."""
        if not self.snapshots:
            raise UsageError("the repository has no snapshots yet")
        if text == LATEST:
            origins = _origins(self.snapshots)
            if len(origins) > 1:
                raise UsageError(f"`latest` is ambiguous: the repository has snapshots of {len(origins)} "
                                 f"directories ({_shown(origins)}); choose one with --source (and --host)")
            return self.latest
        bare = text.removeprefix(SNAPSHOTS_PREFIX)
        exact = self.by_time_name.get(bare) or self.by_gmt_name.get(bare)
        if exact is not None:
            return exact
        matches = [s for s in self.snapshots
                   if bare and any(candidate.startswith(bare) for candidate in self._names_of(s))]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UsageError(f"no snapshot {text!r} (see `cloudfs snapshots`)")
        raise UsageError(f"snapshot {text!r} is ambiguous: it matches {len(matches)} snapshots "
                         f"({', '.join(self.time_name(s) for s in matches[:3])}...); give more of it")

    def _names_of(self, snapshot: Snapshot) -> tuple[str, ...]:
        return (snapshot.name.removeprefix(SNAPSHOTS_PREFIX), self.time_name(snapshot),
                gmt_name(snapshot), short_id(snapshot))
