"""What is mounted where, from /proc/self/mountinfo (read without touching any mount)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

FSTYPE = "fuse.cloudfs"
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    device: str  # "major:minor"


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def mounts() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split()
            separator = fields.index("-")
            entries.append(MountEntry(
                mountpoint=_unescape(fields[4]),
                fstype=fields[separator + 1],
                source=_unescape(fields[separator + 2]),
                device=fields[2],
            ))
    return entries


def mounted_at(path: str) -> MountEntry | None:
    """The topmost mount whose mount point is `path` (made absolute), or None."""
    path = os.path.abspath(path)
    found = None
    for entry in mounts():
        if entry.mountpoint == path:
            found = entry
    return found


def fsname_for(state_dir: str) -> str:
    """The fsname option naming a state directory (libfuse wants , and \\ escaped)."""
    return state_dir.replace("\\", "\\\\").replace(",", "\\,")
