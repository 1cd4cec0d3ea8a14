"""Test harness for the live mount: real mounts as subprocesses, and the journal check.

`LiveTree` owns one protected directory of a test: it mounts it the way a user does
(`python -m cloudfs mount --daemon`), unmounts, kills, and at the end compares the
journal's view of what changed (`cloudfs changes --json`) with what really changed
between the snapshot taken before the first mount and the tree after the last
unmount. The `live` fixture does that check for every test that uses it, and
always unmounts and stops what it started, even when the test fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloudfs.system import mounttable
from cloudfs.system.statedir import StateDir

CLOUDFS = [sys.executable, "-m", "cloudfs"]
SMALL_FILE = 256 * 1024  # contents kept whole below this; block digests above


def run_cloudfs(*args, check=True, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLOUDFS, *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    if check and result.returncode:
        raise AssertionError(f"cloudfs {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout}{result.stderr}")
    return result


# -- what the tree looks like ------------------------------------------------------------


@dataclass(frozen=True)
class EntryState:
    """Everything a test compares about one entry (times only where they are comparable)."""

    mode: int
    ino: int
    nlink: int
    uid: int
    gid: int
    size: int
    ctime_ns: int
    mtime_ns: int
    content: bytes | None = None  # small regular files
    digests: tuple | None = None  # large regular files: (block size, {index: digest})
    target: bytes | None = None  # symlinks
    xattrs: tuple = ()

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)


def _blocks(fd: int, size: int) -> tuple[int, dict[int, bytes]]:
    """Digests of the non-hole blocks (hole-aware, so sparse giants are cheap)."""
    block = 4096 if size <= 64 << 20 else 1 << 20
    digests = {}
    offset = 0
    while offset < size:
        try:
            offset = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, offset, os.SEEK_HOLE)
        index = offset // block
        while index * block < end:
            data = os.pread(fd, block, index * block)
            if data.strip(b"\0"):
                digests[index] = hashlib.blake2b(data, digest_size=16).digest()
            index += 1
        offset = index * block
    return block, digests


def entry_state(path: bytes) -> EntryState:
    st = os.lstat(path)
    content = digests = target = None
    if stat.S_ISREG(st.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if st.st_size <= SMALL_FILE:
                content = os.pread(fd, st.st_size + 1, 0)
            else:
                digests = _blocks(fd, st.st_size)
        finally:
            os.close(fd)
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
        xattrs = tuple((name, os.getxattr(path, name, follow_symlinks=False)) for name in names)
    except OSError:
        xattrs = ()
    return EntryState(st.st_mode, st.st_ino, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                      st.st_ctime_ns, st.st_mtime_ns, content, digests, target, xattrs)


def tree_state(root: Path) -> dict[bytes, EntryState]:
    """Every entry below `root` by relative path (b"" for the root itself)."""
    root_b = os.fsencode(root)
    states = {b"": entry_state(root_b)}
    device = os.lstat(root_b).st_dev
    waiting = [b""]
    while waiting:
        relative = waiting.pop()
        directory = os.path.join(root_b, relative) if relative else root_b
        for name in os.listdir(directory):
            path = relative + b"/" + name if relative else name
            full = os.path.join(root_b, path)
            state = entry_state(full)
            if os.lstat(full).st_dev != device:
                continue
            states[path] = state
            if stat.S_ISDIR(state.mode):
                waiting.append(path)
    return states


# -- the check: the journal's view against what really changed ---------------------------------


def expected_changes(before: dict[bytes, EntryState], after: dict[bytes, EntryState]):
    """path -> set of kinds the view must report; "changed" means one of data/whole/meta."""
    expected: dict[bytes, set[str]] = {}
    for path in before.keys() | after.keys():
        old, new = before.get(path), after.get(path)
        if old is None:
            expected[path] = {"added"}
        elif new is None:
            expected[path] = {"removed"}
        elif old.ino != new.ino or old.kind != new.kind:
            expected[path] = {"added", "removed"}
        elif old.ctime_ns != new.ctime_ns:
            expected[path] = {"changed"}
    return expected


def uncovered_bytes(old: EntryState, new: EntryState, ranges: list[tuple[int, int]]) -> list:
    """Changed bytes (or blocks) of a file that no reported range covers."""

    def covered(start, end):
        return any(s < end and e > start for s, e in ranges)

    problems = []
    if old.content is not None and new.content is not None:
        for block in range(0, len(new.content), 4096):
            if old.content[block:block + 4096] == new.content[block:block + 4096]:
                continue
            for offset in range(block, min(block + 4096, len(new.content))):
                after = new.content[offset]
                if offset >= len(old.content):
                    if after == 0:
                        continue  # a hole past the old end
                elif old.content[offset] == after:
                    continue
                if not any(s <= offset < e for s, e in ranges):
                    problems.append(offset)
        return problems[:10]
    old_blocks = _as_blocks(old)
    new_blocks = _as_blocks(new)
    block = max(old_blocks[0], new_blocks[0])
    old_map, new_map = _regroup(old_blocks, block), _regroup(new_blocks, block)
    for index in old_map.keys() | new_map.keys():
        start = index * block
        if start >= new.size:
            continue
        if old_map.get(index) != new_map.get(index) and not covered(start, start + block):
            if start >= old.size and index not in new_map:
                continue
            problems.append(start)
    return sorted(problems)[:10]


def _as_blocks(state: EntryState) -> tuple[int, dict[int, bytes]]:
    if state.digests is not None:
        return state.digests
    content = state.content or b""
    digests = {}
    for index in range(0, len(content), 4096):
        data = content[index:index + 4096]
        if data.strip(b"\0"):
            digests[index // 4096] = hashlib.blake2b(data, digest_size=16).digest()
    return 4096, digests


def _regroup(blocks: tuple[int, dict[int, bytes]], size: int) -> dict[int, tuple]:
    own, digests = blocks
    grouped: dict[int, list] = {}
    for index, digest in sorted(digests.items()):
        grouped.setdefault(index * own // size, []).append((index, digest))
    return {index: tuple(items) for index, items in grouped.items()}


def check_view(before, after, view: list[dict]) -> list[str]:
    """Every difference between the journal's view and the real changes, as messages."""
    expected = expected_changes(before, after)
    reported: dict[bytes, dict[str, dict]] = {}
    for change in view:
        reported.setdefault(os.fsencode(change["path"]), {})[change["kind"]] = change
    problems = []
    for path in sorted(expected.keys() | reported.keys()):
        want = expected.get(path, set())
        got = reported.get(path, {})
        name = path.decode(errors="backslashreplace") or "."
        if not want:
            problems.append(f"phantom change: {name} reported {sorted(got)} but did not change")
            continue
        if "changed" in want:
            kinds = set(got) & {"data", "whole", "meta"}
            if len(kinds) != 1 or set(got) - kinds:
                problems.append(f"missed change: {name} changed, reported {sorted(got)}")
                continue
            old, new = before[path], after[path]
            if stat.S_ISREG(new.mode) and "whole" not in got:
                ranges = [tuple(r) for r in got.get("data", {}).get("ranges", [])]
                missing = uncovered_bytes(old, new, ranges)
                if missing:
                    problems.append(f"missed data: {name} changed at offsets {missing} "
                                    f"outside the reported ranges {ranges[:5]}")
        elif set(got) != want:
            problems.append(f"wrong kind: {name} should be {sorted(want)}, reported {sorted(got)}")
    return problems


# -- mounts ------------------------------------------------------------------------------------


@dataclass
class LiveTree:
    """A protected directory of one test, its state directory and its mounts."""

    base: Path
    source: Path = field(init=False)
    state_dir: Path = field(init=False)
    before: dict | None = None
    mounted_at: list[Path] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    #: Environment of the cloudfs commands (None: this process's).
    env: dict | None = None

    def __post_init__(self):
        self.source = self.base / "source"
        self.state_dir = self.base / "state"
        self.source.mkdir(exist_ok=True)

    def mount(self, mountpoint: Path | None = None, *options: str) -> Path:
        """Mount (over SOURCE unless `mountpoint`), as a daemon; return where."""
        if self.before is None:
            self.before = tree_state(self.source)
        args = ["mount", "--daemon", "--state-dir", self.state_dir, *options, self.source]
        if mountpoint is not None:
            args.append(mountpoint)
        where = mountpoint or self.source
        self.mounted_at.append(where)
        run_cloudfs(*args, env=self.env)
        holder = StateDir(self.state_dir).holder()
        assert holder is not None, "mounted, but no daemon holds the state directory"
        self.pids.add(holder.pid)
        return where

    def umount(self, where: Path | None = None, *options: str) -> subprocess.CompletedProcess:
        return run_cloudfs("umount", *options, where or self.mounted_at[-1], env=self.env)

    def daemon_pid(self) -> int:
        holder = StateDir(self.state_dir).holder()
        assert holder is not None, "no daemon is running"
        return holder.pid

    def kill(self) -> None:
        """kill -9 the daemon: the mount stays behind, dead (ENOTCONN)."""
        pid = self.daemon_pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while StateDir(self.state_dir).holder() is not None and time.monotonic() < deadline:
            time.sleep(0.02)

    def changes(self, journal_only: bool = False) -> dict:
        args = ["changes", "--json", "--state-dir", self.state_dir, self.source]
        if journal_only:
            args.append("--journal-only")
        return json.loads(run_cloudfs(*args, env=self.env).stdout)

    def verify_changes(self) -> None:
        """The journal's view equals what changed since before the first mount.

        Only what the journal recorded counts (--journal-only): the scan that `changes`
        adds otherwise would hide what the journal missed. After an unclean stop the
        tree is mounted once more, as a user would, so reconcile journals the rest.
        """
        if self.before is None:
            return
        report = self.changes(journal_only=True)
        if not report["clean_stop"]:
            self.mount()
            self.umount()
            report = self.changes(journal_only=True)
        after = tree_state(self.source)
        problems = check_view(self.before, after, report["changes"])
        assert not problems, "the journal's view differs from what changed:\n  " + "\n  ".join(problems)

    def cleanup(self) -> None:
        """Unmount everything and stop every daemon, whatever state the test left."""
        for where in reversed(self.mounted_at):
            entry = mounttable.mounted_at(str(where))
            if entry is None or entry.fstype != mounttable.FSTYPE:
                continue
            result = run_cloudfs("umount", where, "--timeout", "20", "--snapshot-timeout", "5",
                                 check=False, timeout=60, env=self.env)
            if result.returncode:
                subprocess.run(["fusermount3", "-u", "-z", str(where)], capture_output=True)
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log(self) -> str:
        try:
            return (self.state_dir / "mount.log").read_text()
        except FileNotFoundError:
            return ""


@pytest.fixture
def live(tmp_path):
    """A LiveTree; after the test it is unmounted and the journal's view checked."""
    yield from _live_tree(tmp_path)


@pytest.fixture
def public_live():
    """A LiveTree in a directory every user can reach (pytest's tmp_path is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="cloudfs-live-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield from _live_tree(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _live_tree(base: Path):
    tree = LiveTree(base)
    try:
        yield tree
        tree.cleanup()
        tree.verify_changes()
    finally:
        tree.cleanup()
        log = tree.log()
        if "Traceback" in log or "ERROR" in log:
            print(f"--- mount.log ---\n{log}")
