"""Test harness for the snapshot mount and restore.

- `TestRepo`: a repository on the rclone server, the environment a `cloudfs`
  subprocess needs to reach it, and snapshots of a directory taken with the
  uploader's scan (`snapshot_directory`), each with a reference capture.
- `BrowseMount`: `cloudfs browse --daemon` run the way a user runs it; leaving
  the `with` block always unmounts (`cloudfs umount`, then `fusermount3 -u -z`
  as the last resort), even when the test failed.
- `expected_damage`: which files and directories of a snapshot a set of
  damaged blobs makes unreadable, computed from the trees before the damage.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from cloudfs.system import mounttable
from cloudfs.repo import RepoConfig, Repository, Snapshot
from cloudfs.snapshot import blocklist
from cloudfs.snapshot.reader import TreeReader
from cloudfs.store import RetryPolicy, S3Options, S3Store
from cloudfs.uploader import snapshot_directory
from tests.repo_helpers import PASSPHRASE, fast_kdf
from tests.tree_helpers import capture_directory

CLOUDFS = [sys.executable, "-m", "cloudfs"]
_STATE_DIRS: list[str] = []
atexit.register(lambda: [shutil.rmtree(path, ignore_errors=True) for path in _STATE_DIRS])


def short_state_home() -> Path:
    """A state directory with a short path: `cloudfs umount` talks to a Unix
    socket in it, and pytest's temporary paths are too long for one."""
    path = tempfile.mkdtemp(prefix="cfs-", dir="/tmp")
    _STATE_DIRS.append(path)
    return Path(path)


@dataclass
class TestRepo:
    __test__ = False                     # not a test class, despite the name

    server: object
    bucket: str
    base: Path                           # the test's own directory (cache, state, ...)
    endpoint: str | None = None          # another way in (a fault proxy), else the server
    snapshots: list[Snapshot] = field(default_factory=list)
    references: list[dict] = field(default_factory=list)   # capture_directory of each
    state_home: Path = field(default_factory=short_state_home)

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/repo"

    def store(self) -> S3Store:
        return S3Store(self.bucket, "repo", S3Options(endpoint_url=self.endpoint or self.server.endpoint,
                                                      retry=RetryPolicy(attempts=3, base_delay=0.01)))

    def env(self, **extra) -> dict:
        env = self.server.env()
        env.update(CLOUDFS_REPO=self.location, CLOUDFS_PASSWORD=PASSPHRASE.decode(),
                   XDG_CACHE_HOME=str(self.base / "cache"), XDG_STATE_HOME=str(self.state_home))
        if self.endpoint:
            env["CLOUDFS_ENDPOINT_URL"] = self.endpoint
        env.update(extra)
        return env

    def init(self, **config) -> "TestRepo":
        async def init():
            repo = await Repository.init(self.store(), PASSPHRASE, config=RepoConfig(**config),
                                         kdf=fast_kdf(), use_cache=False)
            await repo.close()

        trio.run(init)
        return self

    def open(self) -> Repository:
        return trio.run(lambda: Repository.open(self.store(), PASSPHRASE, use_cache=False))

    def take_snapshot(self, directory: Path) -> Snapshot:
        """Snapshot `directory` as it is now (built on the previous snapshot) and
        keep a reference capture of it."""
        async def take():
            repo = await Repository.open(self.store(), PASSPHRASE, use_cache=False)
            try:
                previous = self.snapshots[-1] if self.snapshots else None
                return await snapshot_directory(repo, directory, previous=previous)
            finally:
                await repo.close()

        snapshot = trio.run(take)
        self.snapshots.append(snapshot)
        self.references.append(capture_directory(directory))
        return snapshot

    def cloudfs(self, *args, timeout: float = 120, **extra_env) -> subprocess.CompletedProcess:
        return subprocess.run([*CLOUDFS, *map(str, args)], env=self.env(**extra_env),
                              capture_output=True, text=True, timeout=timeout)


def new_repo(s3_server, tmp_path: Path, **config) -> TestRepo:
    config.setdefault("block_size", 4096)
    config.setdefault("chunk_size", 1 << 20)
    return TestRepo(s3_server, s3_server.new_bucket(), tmp_path).init(**config)


class BrowseMount:
    """`cloudfs browse MOUNTPOINT --daemon` for the length of a `with` block."""

    def __init__(self, repo: TestRepo, mountpoint: Path | None = None, *options: str):
        self.repo = repo
        self.path = mountpoint or repo.base / "mnt"
        self.options = options

    def __enter__(self) -> "BrowseMount":
        self.path.mkdir(exist_ok=True)
        result = self.repo.cloudfs("browse", self.path, "--daemon", *self.options)
        if result.returncode:
            raise AssertionError(f"cloudfs browse failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return self

    def __exit__(self, *exc) -> None:
        self.unmount()

    def unmount(self) -> None:
        if mounttable.mounted_at(str(self.path)) is None:
            return
        result = self.repo.cloudfs("umount", self.path, "--timeout", "20", timeout=30)
        if result.returncode:
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
            raise AssertionError(f"cloudfs umount failed:\n{result.stderr}")

    def __truediv__(self, name) -> Path:
        return self.path / name

    def log(self) -> str:
        logs = list((self.repo.state_home / "cloudfs").glob("browse-*/mount.log"))
        return "\n".join(path.read_text(errors="replace") for path in logs)

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return log


# -- what a damaged blob breaks ----------------------------------------------------------------


async def _block_list_nodes(reader: TreeReader, root: bytes) -> set[bytes]:
    nodes, waiting = set(), [root]
    while waiting:
        node = waiting.pop()
        nodes.add(node)
        level, ids = blocklist.decode_node(await reader.tree_blob(node))
        if level > 0:
            waiting += ids
    return nodes


async def _needs(reader: TreeReader, root: bytes) -> tuple[dict[bytes, set], dict[bytes, bytes]]:
    """For every file: the blobs reading it needs; for every directory: its node."""
    files, directories = {}, {b"": root}
    async for path, entry in reader.walk(root):
        if entry.is_dir:
            directories[path] = entry.subtree
        elif entry.is_file:
            needed = {b for b in entry.blocks or [] if b is not None}
            if entry.block_list is not None:
                nodes = await _block_list_nodes(reader, entry.block_list)
                needed |= nodes
                needed |= {b for b in await reader.block_ids(entry, 0, 1 << 40) if b is not None}
            files[path] = needed
    return files, directories


def snapshot_needs(repo: Repository, snapshot: Snapshot) -> tuple[dict[bytes, set], dict[bytes, bytes]]:
    """What reading each file needs and each directory's node (before any damage)."""
    return trio.run(_needs, TreeReader(repo), snapshot.tree)


def expected_damage(needs, damaged: set[bytes]) -> tuple[set[bytes], set[bytes], set[bytes]]:
    """(files that must fail to read, directories that must fail to list, files
    still reachable) when the blobs `damaged` are unreadable."""
    files, directories = needs
    unlistable = {path for path, node in directories.items() if node in damaged}

    def reachable(path: bytes) -> bool:
        parent = path.rpartition(b"/")[0]
        while True:
            if parent in unlistable:
                return False
            if not parent:
                return True
            parent = parent.rpartition(b"/")[0]

    reachable_files = {path for path in files if reachable(path)}
    broken = {path for path in reachable_files if files[path] & damaged}
    return broken, {p for p in unlistable if reachable(p) or p == b""}, reachable_files


def blobs_in_chunk(repo: Repository, chunk_id: bytes) -> list:
    return sorted(trio.run(repo.chunk_blobs, chunk_id), key=lambda blob: blob.offset)


def read_error(path: Path) -> int | None:
    """The errno reading a whole file fails with, or None if it reads."""
    try:
        with open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass
    except OSError as error:
        return error.errno
    return None


def listing_error(path: Path) -> int | None:
    try:
        os.listdir(path)
    except OSError as error:
        return error.errno
    return None
