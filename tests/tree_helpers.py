"""Reference copies of trees: what a directory or a snapshot holds, as comparable data.

capture_directory() reads a directory; capture_snapshot() reads a snapshot
through the repository API (every blob verified). Equal captures mean equal
trees: types, modes, owners, sizes, mtimes, symlink targets, xattrs, device
numbers, hard-link groups and content. with_identity adds inode numbers and
ctimes, which a snapshot records but a restore cannot reproduce.
"""

from __future__ import annotations

import hashlib
import os
import stat

import trio

from cloudfs.snapshot.reader import TreeReader


def _record(st, content: str | None, target: bytes | None, xattrs: dict, with_identity: bool) -> tuple:
    fields = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
              st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
              st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else 0,
              st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
              content, target, tuple(sorted(xattrs.items()))]
    if with_identity:
        fields += [st.st_ino, st.st_ctime_ns]
    return tuple(fields)


def _link_groups(inodes: dict[bytes, tuple[int, int]]) -> set[frozenset]:
    groups: dict[int, set] = {}
    for path, (ino, nlink) in inodes.items():
        if nlink > 1:
            groups.setdefault(ino, set()).add(path)
    return {frozenset(paths) for paths in groups.values() if len(paths) > 1}


def capture_directory(root: str | os.PathLike, with_identity: bool = False) -> dict:
    root = os.fsencode(root)
    records, inodes = {}, {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            content = target = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as handle:
                    content = hashlib.sha256(handle.read()).hexdigest()
                inodes[rel] = (st.st_ino, st.st_nlink)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(full)
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                for key in os.listxattr(full, follow_symlinks=False):
                    xattrs[os.fsencode(key)] = os.getxattr(full, key, follow_symlinks=False)
            records[rel] = _record(st, content, target, xattrs, with_identity)
    return {"entries": records, "hardlinks": _link_groups(inodes)}


class _EntryStat:
    def __init__(self, entry):
        self.st_mode, self.st_uid, self.st_gid = entry.mode, entry.uid, entry.gid
        self.st_size, self.st_mtime_ns, self.st_rdev = entry.size, entry.mtime_ns, entry.rdev
        self.st_ino, self.st_ctime_ns = entry.ino, entry.ctime_ns


async def capture_snapshot_async(reader: TreeReader, root: bytes, with_identity: bool = False) -> dict:
    records, inodes = {}, {}
    async for path, entry in reader.walk(root):
        content = None
        if entry.is_file:
            content = hashlib.sha256(await reader.read(entry, 0, entry.size)).hexdigest()
            inodes[path] = (entry.ino, entry.nlink)
        xattrs = {} if entry.is_symlink else entry.xattrs
        records[path] = _record(_EntryStat(entry), content, entry.target, xattrs, with_identity)
    return {"entries": records, "hardlinks": _link_groups(inodes)}


def capture_snapshot(reader: TreeReader, root: bytes, with_identity: bool = False) -> dict:
    return trio.run(capture_snapshot_async, reader, root, with_identity)


def diff(expected: dict, actual: dict) -> list[str]:
    """Human-readable differences between two captures (empty when equal)."""
    out = []
    for path in sorted(set(expected["entries"]) | set(actual["entries"])):
        a, b = expected["entries"].get(path), actual["entries"].get(path)
        if a != b:
            out.append(f"{path!r}: expected {a}, got {b}")
    if expected["hardlinks"] != actual["hardlinks"]:
        out.append(f"hard links: expected {expected['hardlinks']}, got {actual['hardlinks']}")
    return out


def make_rich_tree(root: str | os.PathLike, block_size: int) -> None:
    """A directory with every kind of entry a snapshot must record."""
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "docs", "deep", "deeper"))
    os.makedirs(os.path.join(root, "empty-dir"))
    files = {
        "empty": b"",
        "small.txt": b"hello\n",
        "docs/exact-block": os.urandom(block_size),
        "docs/block-plus-one": os.urandom(block_size + 1),
        "docs/deep/text.py": b"def f(x):\n    return x * 2\n" * 5000,
        "docs/deep/deeper/zeros": bytes(block_size * 3 + 17),
    }
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as handle:
            handle.write(data)
    # A file of more blocks than fit inline (FANOUT), so it gets a block-list tree.
    with open(os.path.join(root, "big.bin"), "wb") as handle:
        handle.write(os.urandom(block_size * 600 + 123))
    # A sparse file: data, a hole, data.
    with open(os.path.join(root, "sparse.img"), "wb") as handle:
        handle.write(b"start")
        handle.seek(block_size * 40)
        handle.write(b"end")
    os.symlink("docs/deep/text.py", os.path.join(root, "link-to-text"))
    os.symlink("/nonexistent/target", os.path.join(root, "dangling"))
    os.link(os.path.join(root, "small.txt"), os.path.join(root, "docs", "hardlink.txt"))
    os.mkfifo(os.path.join(root, "a-fifo"))
    weird = os.path.join(os.fsencode(root), b"name-\xff\xfe-not-utf8")
    with open(weird, "wb") as handle:
        handle.write(b"bytes in a name")
    os.chmod(os.path.join(root, "small.txt"), 0o640)
    os.chmod(os.path.join(root, "docs"), 0o750)
    os.chown(os.path.join(root, "docs", "exact-block"), 1234, 5678)
    os.setxattr(os.path.join(root, "small.txt"), "user.comment", b"an xattr value")
    os.setxattr(os.path.join(root, "docs"), "user.dir", b"on a directory")
    os.utime(os.path.join(root, "empty"), ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    os.mknod(os.path.join(root, "char-device"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
