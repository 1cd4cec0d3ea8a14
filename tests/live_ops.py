"""Filesystem operations as data, for differential tests (mount vs plain directory).

An operation is a tuple ("name", *arguments) of JSON-friendly values. `Runner.apply`
performs one below a root directory and returns what a program would observe:
("ok", value) or ("err", errno name). Running the same list under two roots must
give the same observations and leave the same trees (`snapshot`). Open file
handles live in numbered slots, so sequences can unlink, rename and write files
that are open. `python -m tests.live_ops ROOT [UID GID]` runs a JSON list from
stdin as another user, for the permission tests.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import stat
import sys

from cloudfs.system import syscalls

PATHS = ["a", "b", "c", "d", "d/a", "d/b", "d/e", "d/e/a", "f", "f/a"]
SLOTS = 3
XATTRS = ["user.x", "user.y"]
MODES = [0o644, 0o600, 0o755, 0o700, 0o444, 0o000, 0o2755, 0o4755, 0o1777, 0o640]
OPEN_FLAGS = [
    os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_CREAT, os.O_RDWR | os.O_CREAT,
    os.O_WRONLY | os.O_CREAT | os.O_EXCL, os.O_RDWR | os.O_TRUNC, os.O_WRONLY | os.O_APPEND,
    os.O_RDWR | os.O_APPEND | os.O_CREAT, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
]
RENAME_FLAGS = [0, 0, 1, 2]  # plain, RENAME_NOREPLACE, RENAME_EXCHANGE


def payload(length: int, seed: int) -> bytes:
    block = hashlib.sha256(seed.to_bytes(8, "little")).digest()
    return (block * (length // len(block) + 1))[:length]


class Runner:
    """Applies operations below `root`; keeps the open handles between calls."""

    def __init__(self, root: str):
        self.root = os.fsencode(root)
        self.handles: dict[int, int] = {}

    def path(self, relative: str) -> bytes:
        return os.path.join(self.root, os.fsencode(relative))

    def apply(self, op) -> list:
        try:
            return ["ok", getattr(self, "op_" + op[0])(*op[1:])]
        except OSError as error:
            return ["err", errno.errorcode.get(error.errno, str(error.errno))]

    def close_all(self) -> None:
        for fd in self.handles.values():
            os.close(fd)
        self.handles.clear()

    # -- by path -------------------------------------------------------------------

    def op_write(self, path, offset, length, seed):
        fd = os.open(self.path(path), os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)
        try:
            return os.pwrite(fd, payload(length, seed), offset)
        finally:
            os.close(fd)

    def op_append(self, path, length, seed):
        fd = os.open(self.path(path), os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
        try:
            return os.write(fd, payload(length, seed))
        finally:
            os.close(fd)

    def op_truncate(self, path, size):
        os.truncate(self.path(path), size)

    def op_read(self, path):
        fd = os.open(self.path(path), os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block
        try:
            digest = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                digest.update(chunk)
            return digest.hexdigest()
        finally:
            os.close(fd)

    def op_mkdir(self, path, mode):
        os.mkdir(self.path(path), mode)

    def op_rmdir(self, path):
        os.rmdir(self.path(path))

    def op_unlink(self, path):
        os.unlink(self.path(path))

    def op_rename(self, source, target, flags):
        if flags:
            syscalls.renameat2(-100, self.path(source), -100, self.path(target), flags)
        else:
            os.rename(self.path(source), self.path(target))

    def op_link(self, source, target):
        os.link(self.path(source), self.path(target), follow_symlinks=False)

    def op_symlink(self, target, path):
        os.symlink(target, self.path(path))

    def op_readlink(self, path):
        return os.fsdecode(os.readlink(self.path(path)))

    def op_chmod(self, path, mode):
        os.chmod(self.path(path), mode)

    def op_chown(self, path, uid, gid):
        os.chown(self.path(path), uid, gid, follow_symlinks=False)

    def op_utime(self, path, atime_ns, mtime_ns):
        full = self.path(path)
        before = os.lstat(full)
        syscalls.set_times(full, atime_ns, mtime_ns, False)
        after = os.lstat(full)
        return [after.st_atime_ns if atime_ns is not None else after.st_atime_ns == before.st_atime_ns,
                after.st_mtime_ns if mtime_ns is not None else after.st_mtime_ns == before.st_mtime_ns]

    def op_setxattr(self, path, name, value, flags):
        os.setxattr(self.path(path), name, value.encode(), flags, follow_symlinks=False)

    def op_getxattr(self, path, name):
        return os.getxattr(self.path(path), name, follow_symlinks=False).decode()

    def op_listxattr(self, path):
        return sorted(os.listxattr(self.path(path), follow_symlinks=False))

    def op_removexattr(self, path, name):
        os.removexattr(self.path(path), name, follow_symlinks=False)

    def op_mkfifo(self, path):
        os.mkfifo(self.path(path), 0o640)

    def op_stat(self, path):
        st = os.lstat(self.path(path))
        return describe(st)

    def op_listdir(self, path):
        return sorted(os.fsdecode(name) for name in os.listdir(self.path(path)))

    def op_access(self, path, mode):
        return os.access(self.path(path), mode)

    # -- by handle -------------------------------------------------------------------

    def op_open(self, slot, path, flags):
        if slot in self.handles:
            os.close(self.handles.pop(slot))
        self.handles[slot] = os.open(self.path(path), flags | os.O_NONBLOCK, 0o644)

    def _fd(self, slot):
        if slot not in self.handles:
            raise OSError(errno.EBADF, "no such handle")
        return self.handles[slot]

    def op_hwrite(self, slot, offset, length, seed):
        fd = self._fd(slot)
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, payload(length, seed))

    def op_hread(self, slot, offset, length):
        return hashlib.sha256(os.pread(self._fd(slot), length, offset)).hexdigest()

    def op_htruncate(self, slot, size):
        os.ftruncate(self._fd(slot), size)

    def op_hfsync(self, slot):
        os.fsync(self._fd(slot))

    def op_hstat(self, slot):
        return describe(os.fstat(self._fd(slot)))

    def op_close(self, slot):
        os.close(self.handles.pop(slot)) if slot in self.handles else None


def describe(st: os.stat_result) -> list:
    """What must be equal between the mount and the plain directory (no times, no inode
    numbers; no size for directories, which depends on the directory's history)."""
    size = None if stat.S_ISDIR(st.st_mode) else st.st_size
    return [st.st_mode, st.st_nlink, st.st_uid, st.st_gid, size]


def snapshot(root: str) -> dict:
    """The whole tree below `root`: each entry's description, content, link target and
    xattrs, plus which paths are hard links of one another."""
    root_b = os.fsencode(root)
    entries, inodes = {}, {}
    for directory, subdirectories, files in os.walk(root_b):
        for name in subdirectories + files:
            full = os.path.join(directory, name)
            relative = os.fsdecode(os.path.relpath(full, root_b))
            st = os.lstat(full)
            entry = {"stat": describe(st)}
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as handle:
                    entry["content"] = hashlib.sha256(handle.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.fsdecode(os.readlink(full))
            entry["xattrs"] = {name: os.getxattr(full, name, follow_symlinks=False).hex()
                               for name in sorted(os.listxattr(full, follow_symlinks=False))}
            entries[relative] = entry
            inodes.setdefault(st.st_ino, []).append(relative)
    links = sorted(sorted(paths) for paths in inodes.values() if len(paths) > 1)
    return {"entries": entries, "links": links}


# -- generating sequences -----------------------------------------------------------------


def random_op(rng: random.Random, as_root: bool = True) -> tuple:
    """One operation, weighted towards the ones that change data and names."""
    path = lambda: rng.choice(PATHS)  # noqa: E731
    slot = lambda: rng.randrange(SLOTS)  # noqa: E731
    offset = lambda: rng.choice([0, 0, 1, 100, 4095, 4096, 5000, 65536, 70000])  # noqa: E731
    length = lambda: rng.choice([0, 1, 10, 4096, 5000, 20000])  # noqa: E731
    seed = lambda: rng.randrange(1000)  # noqa: E731
    choices = [
        (8, lambda: ("write", path(), offset(), length(), seed())),
        (3, lambda: ("append", path(), length(), seed())),
        (3, lambda: ("truncate", path(), rng.choice([0, 1, 3000, 4096, 9000]))),
        (3, lambda: ("read", path())),
        (5, lambda: ("mkdir", path(), rng.choice(MODES))),
        (2, lambda: ("rmdir", path())),
        (4, lambda: ("unlink", path())),
        (5, lambda: ("rename", path(), path(), rng.choice(RENAME_FLAGS))),
        (2, lambda: ("link", path(), path())),
        (2, lambda: ("symlink", rng.choice(["a", "../b", "nowhere", "d/e"]), path())),
        (1, lambda: ("readlink", path())),
        (3, lambda: ("chmod", path(), rng.choice(MODES))),
        (1, lambda: ("utime", path(), rng.choice([None, 10**9, 2 * 10**9 + 7]),
                     rng.choice([None, 3 * 10**9, 123_456_789]))),
        (2, lambda: ("setxattr", path(), rng.choice(XATTRS), rng.choice(["", "v", "value2"]),
                     rng.choice([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE]))),
        (1, lambda: ("getxattr", path(), rng.choice(XATTRS))),
        (1, lambda: ("listxattr", path())),
        (1, lambda: ("removexattr", path(), rng.choice(XATTRS))),
        (1, lambda: ("mkfifo", path())),
        (3, lambda: ("stat", path())),
        (2, lambda: ("listdir", rng.choice(["", "d", "d/e", "f"]))),
        (4, lambda: ("open", slot(), path(), rng.choice(OPEN_FLAGS))),
        (4, lambda: ("hwrite", slot(), offset(), length(), seed())),
        (2, lambda: ("hread", slot(), offset(), length())),
        (1, lambda: ("htruncate", slot(), rng.choice([0, 10, 5000]))),
        (1, lambda: ("hfsync", slot())),
        (2, lambda: ("hstat", slot())),
        (2, lambda: ("close", slot())),
    ]
    if as_root:
        choices.append((1, lambda: ("chown", path(), rng.choice([0, 1000, 65534]),
                                    rng.choice([0, 1000, 65534]))))
    else:
        choices.append((2, lambda: ("access", path(), rng.choice([os.R_OK, os.W_OK, os.X_OK]))))
    total = sum(weight for weight, _ in choices)
    pick = rng.uniform(0, total)
    for weight, make in choices:
        pick -= weight
        if pick <= 0:
            return make()
    return choices[-1][1]()


def random_ops(seed: int, count: int, as_root: bool = True) -> list[tuple]:
    rng = random.Random(seed)
    return [random_op(rng, as_root) for _ in range(count)]


def run_all(root: str, ops: list) -> list:
    runner = Runner(root)
    try:
        return [runner.apply(op) for op in ops]
    finally:
        runner.close_all()


if __name__ == "__main__":
    if len(sys.argv) > 2:
        os.setgroups([])
        os.setgid(int(sys.argv[3]))
        os.setuid(int(sys.argv[2]))
    os.umask(0o022)
    operations = json.load(sys.stdin)
    json.dump(run_all(sys.argv[1], operations), sys.stdout)
