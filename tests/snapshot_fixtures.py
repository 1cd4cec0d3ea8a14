"""Test harness for snapshots taken by the live mount: a protected tree with a repository.

`Protected` is a LiveTree whose mounts take snapshots (`--repo` on the rclone S3
server of the session). Tests drive it the way a user does: `cloudfs mount`,
`cloudfs snapshot`, `cloudfs flush`, `cloudfs umount` as subprocesses, plus the
control socket directly where an exact instant matters (`seal()` returns once
the epoch is sealed, so the test can copy the tree while its writers are
paused: that copy is what the snapshot must equal). Snapshots are read back
through the repository API, every blob verified.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from cloudfs import control
from cloudfs.system import mounttable
from cloudfs.live.graveyard import NAME as GRAVEYARD
from cloudfs.repo import Repository
from cloudfs.snapshot.reader import TreeReader
from cloudfs.store import RetryPolicy, S3Options, S3Store
from tests.live_fixtures import LiveTree, run_cloudfs
from tests.repo_helpers import PASSPHRASE, fast_kdf
from tests.tree_helpers import capture_directory, capture_snapshot, diff


def reference_copy(root: Path) -> dict:
    """What a snapshot of `root` must hold now (the graveyard is not part of the tree)."""
    captured = capture_directory(root, with_identity=True)
    hidden = GRAVEYARD
    captured["entries"] = {path: record for path, record in captured["entries"].items()
                           if path != hidden and not path.startswith(hidden + b"/")}
    captured["hardlinks"] = {group for group in captured["hardlinks"]
                             if not any(path.startswith(hidden + b"/") for path in group)}
    return captured


@dataclass
class Protected(LiveTree):
    """A protected directory with a repository in its own bucket."""

    endpoint: str = ""
    bucket: str = ""
    data_dir: Path | None = None
    references: dict[int, dict] = field(default_factory=dict)

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/repo"

    def store(self, endpoint: str | None = None) -> S3Store:
        return S3Store(self.bucket, "repo", S3Options(endpoint_url=endpoint or self.endpoint,
                                                      retry=RetryPolicy(attempts=3, base_delay=0.05)))

    def repository(self) -> Repository:
        return trio.run(lambda: Repository.open(self.store(), PASSPHRASE, use_cache=False))

    def snapshots(self, repo: Repository | None = None) -> list:
        return trio.run((repo or self.repository()).snapshots)

    # -- talking to the daemon ------------------------------------------------------------

    def request(self, op: str, timeout: float = 120.0, **arguments) -> dict:
        return control.request(self.state_dir, op, timeout=timeout, **arguments)

    def status(self) -> dict:
        return self.request("status")

    def backing(self) -> Path:
        """Where to read the backing tree: SOURCE, or through the daemon's descriptor of
        it when the mount covers it (through the mount, the kernel's writeback cache
        shows its own ctimes, which a snapshot rightly does not record)."""
        holder = self._holder()
        if holder is not None and holder.mountpoint == str(self.source):
            return Path(holder.tree_path())
        return self.source

    def seal(self) -> dict:
        """Seal now and keep a reference copy of the tree as of the seal (the caller's
        writers are paused until this returns). Returns the daemon's answer."""
        reply = self.request("snapshot", wait=False)
        self.references[reply["time_ns"]] = reference_copy(self.backing())
        return reply

    def flush(self, timeout: float = 120.0) -> dict:
        return self.request("flush", timeout=timeout)

    def check(self, *options: str) -> subprocess.CompletedProcess:
        return run_cloudfs("check", *options, env=self.env, timeout=300)

    # -- comparing ------------------------------------------------------------------------

    def snapshot_capture(self, snapshot, repo: Repository) -> dict:
        return capture_snapshot(TreeReader(repo), snapshot.tree, with_identity=True)

    def assert_snapshots_match_references(self) -> list:
        """Every committed snapshot that has a reference copy equals it; returns them."""
        repo = self.repository()
        matched = []
        for snapshot in self.snapshots(repo):
            expected = self.references.get(snapshot.time_ns)
            if expected is None:
                continue
            differences = diff(expected, self.snapshot_capture(snapshot, repo))
            assert not differences, (f"{snapshot.name} differs from the tree at its seal:\n  "
                                     + "\n  ".join(differences[:20]))
            matched.append(snapshot)
        return matched

    def assert_latest_matches(self, expected: dict | None = None):
        repo = self.repository()
        latest = self.snapshots(repo)[-1]
        expected = expected or reference_copy(self.backing())
        differences = diff(expected, self.snapshot_capture(latest, repo))
        assert not differences, f"{latest.name} differs:\n  " + "\n  ".join(differences[:20])
        return latest

    # -- the store's own figures -----------------------------------------------------------

    def stored_objects(self) -> dict[str, int]:
        """name -> size of every object of the repository, from the S3 server's directory."""
        root = self.data_dir / self.bucket / "repo"
        found = {}
        for directory, _, files in os.walk(root):
            for name in files:
                path = Path(directory) / name
                found[str(path.relative_to(root))] = path.stat().st_size
        return found

    def daemon_pid_or_none(self) -> int | None:
        holder = self._holder()
        return holder.pid if holder else None

    def _holder(self):
        from cloudfs.system.statedir import StateDir

        return StateDir(self.state_dir).holder()

    def kill(self) -> None:
        super().kill()
        for where in self.mounted_at:
            entry = mounttable.mounted_at(str(where))
            if entry is not None and entry.fstype == mounttable.FSTYPE:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)


def new_protected(base: Path, server, bucket: str | None = None, **config) -> Protected:
    """A Protected tree below `base` with a new repository (RepoConfig `config`), in a new
    bucket unless given one."""
    from cloudfs.repo import RepoConfig

    bucket = bucket or server.new_bucket()
    base.mkdir(parents=True, exist_ok=True)
    tree = Protected(base, endpoint=server.endpoint, bucket=bucket, data_dir=server.data_dir)
    trio.run(lambda: Repository.init(tree.store(), PASSPHRASE, config=RepoConfig(**config),
                                     kdf=fast_kdf(), use_cache=False))
    env = server.env()
    env.update(CLOUDFS_REPO=tree.location, CLOUDFS_PASSWORD=PASSPHRASE.decode(),
               XDG_CACHE_HOME=str(base / "cache"))
    env.pop("CLOUDFS_PASSWORD_FILE", None)
    tree.env = env
    return tree


def protected_tree(base: Path, server, **config):
    """Yield a Protected; afterwards unmount everything and stop every daemon."""
    tree = new_protected(base, server, **config)
    try:
        yield tree
    finally:
        tree.cleanup()
        log = tree.log()
        if "Traceback" in log or "ERROR" in log:
            print(f"--- mount.log ---\n{log}")


@pytest.fixture
def protected(tmp_path, s3_env):
    """A Protected tree (s3_env: this process talks to the server too)."""
    yield from protected_tree(tmp_path, s3_env)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def kill_hard(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
