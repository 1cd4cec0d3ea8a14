"""Directory nodes and their entries: what a snapshot records about each file.

A directory node is the msgpack map {"v": 1, "e": [entry, ...]}, entries sorted
by name. An entry is a map with short keys (see docs/format.md, "Trees"):

    n   name (bin)              m   st_mode (type and permission bits)
    u   uid                     g   gid
    s   size                    mt, ct  mtime, ctime in ns
    i   inode number            nl  link count (entries sharing i are hard links)
    rd  device number (c, b)    x   xattrs {name (bin): value (bin)}
    l   symlink target (bin)    d   subdirectory node id (directories)
    b   block ids, inline       bl  block-list root id (files of more than FANOUT blocks)
    tf, tb  directories: files and bytes of files in the whole subtree (for totals
            without walking unchanged subtrees)

A nil block id is a block of zeros (a hole, or zeros written): stored nowhere,
restored as a hole. Access times are not recorded: reading a tree (even to back
it up) changes them, and they would make every snapshot differ from the last.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field, replace

from cloudfs.repo.format import pack, unpack

NODE_VERSION = 1


@dataclass(slots=True)
class Entry:
    name: bytes
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    nlink: int = 1
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    target: bytes | None = None              # symlinks
    subtree: bytes | None = None             # directories: node id
    blocks: list[bytes | None] | None = None  # files: inline block ids
    block_list: bytes | None = None          # files: root of a block-list tree
    tree_files: int = 0                       # directories: files below, at any depth
    tree_bytes: int = 0                       # directories: their total size

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def same_stat(self, st) -> bool:
        """True if a file's stat says its content cannot have changed since this entry."""
        return (self.ino == st.st_ino and self.size == st.st_size and self.mode == st.st_mode
                and self.mtime_ns == st.st_mtime_ns and self.ctime_ns == st.st_ctime_ns)

    def with_stat(self, st) -> "Entry":
        return replace(self, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, size=st.st_size,
                       mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino, nlink=st.st_nlink, rdev=st.st_rdev)

    def to_map(self) -> dict:
        out = {"n": self.name, "m": self.mode, "u": self.uid, "g": self.gid, "s": self.size,
               "mt": self.mtime_ns, "ct": self.ctime_ns, "i": self.ino, "nl": self.nlink}
        if self.rdev:
            out["rd"] = self.rdev
        if self.xattrs:
            out["x"] = self.xattrs
        if self.target is not None:
            out["l"] = self.target
        if self.subtree is not None:
            out["d"] = self.subtree
        if self.blocks is not None:
            out["b"] = self.blocks
        if self.block_list is not None:
            out["bl"] = self.block_list
        if self.subtree is not None:
            out["tf"], out["tb"] = self.tree_files, self.tree_bytes
        return out

    @classmethod
    def from_map(cls, value: dict) -> "Entry":
        return cls(
            name=bytes(value["n"]), mode=value["m"], uid=value["u"], gid=value["g"],
            size=value["s"], mtime_ns=value["mt"], ctime_ns=value["ct"], ino=value["i"], nlink=value["nl"], rdev=value.get("rd", 0),
            xattrs={bytes(k): bytes(v) for k, v in value.get("x", {}).items()},
            target=_optional_bytes(value.get("l")), subtree=_optional_bytes(value.get("d")),
            blocks=[_optional_bytes(b) for b in value["b"]] if "b" in value else None,
            block_list=_optional_bytes(value.get("bl")),
            tree_files=value.get("tf", 0), tree_bytes=value.get("tb", 0),
        )


def subtree_totals(entries: list[Entry]) -> tuple[int, int]:
    """Files and bytes of files in the tree these entries make (one directory's)."""
    files = total = 0
    for entry in entries:
        if entry.is_file:
            files, total = files + 1, total + entry.size
        elif entry.subtree is not None:
            files, total = files + entry.tree_files, total + entry.tree_bytes
    return files, total


def encode_directory(entries: list[Entry]) -> bytes:
    entries = sorted(entries, key=lambda e: e.name)
    return pack({"v": NODE_VERSION, "e": [e.to_map() for e in entries]})


def decode_directory(data: bytes) -> list[Entry]:
    value = unpack(data)
    if value.get("v") != NODE_VERSION:
        raise ValueError(f"directory node of unknown version {value.get('v')}")
    return [Entry.from_map(item) for item in value["e"]]


def _optional_bytes(value) -> bytes | None:
    return None if value is None else bytes(value)
