"""`cloudfs prune` as a user runs it, on the rclone S3 server.

- After 30 snapshots of a changing tree, `forget` and `prune` reclaim at least
  90 % of the bytes no kept snapshot references; `check --read-data` is clean
  and every kept snapshot restores bit-exact.
- `--dry-run` changes nothing and says what the real run then does.
- kill -9 at each step of a prune (after the doom list, mid-repack, after the
  replacement index objects, mid-delete): `check` is clean, a rerun completes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from cloudfs.repo import RepoConfig, Repository
from cloudfs.repo.blobset import BlobSet
from cloudfs.snapshot.reachable import walk_blobs
from cloudfs.snapshot.source import DirectorySource
from cloudfs.uploader import commit_snapshot
from tests.live_fixtures import run_cloudfs
from tests.repo_helpers import PASSPHRASE, fast_kdf, s3_store
from tests.snapshot_fixtures import kill_hard, wait_until
from tests.tree_helpers import capture_directory, diff

pytestmark = pytest.mark.timeout(240)

CONFIG = dict(chunk_size=512 << 10, block_size=16 << 10)


class History:
    """A repository on the rclone server and a source directory whose snapshots it holds."""

    def __init__(self, server, base: Path):
        self.bucket = server.new_bucket()
        self.store = s3_store(server, self.bucket)
        self.source = base / "source"
        self.source.mkdir()
        self.base = base
        self.captures: dict[str, dict] = {}
        self.env = {**server.env(), "CLOUDFS_REPO": f"s3://{self.bucket}/repo",
                    "CLOUDFS_PASSWORD": PASSPHRASE.decode(), "XDG_CACHE_HOME": str(base / "cache")}
        self.env.pop("CLOUDFS_PASSWORD_FILE", None)
        trio.run(lambda: Repository.init(self.store, PASSPHRASE, config=RepoConfig(**CONFIG),
                                         kdf=fast_kdf(), use_cache=False))

    def take(self, count: int, change) -> None:
        """`count` snapshots, calling `change(i)` on the source before each."""
        async def run():
            repo = await Repository.open(self.store, PASSPHRASE, use_cache=False)
            previous = (await repo.snapshots() or [None])[-1]
            for i in range(count):
                change(i)
                source = DirectorySource.at(self.source)
                try:
                    previous = await commit_snapshot(repo, source, source_path=str(self.source), previous=previous)
                finally:
                    source.close()
                self.captures[previous.name] = capture_directory(self.source)
            await repo.close()
        trio.run(run)

    def cloudfs(self, *args, check=True, timeout=180):
        return run_cloudfs(*args, env=self.env, check=check, timeout=timeout)

    def chunk_bytes(self) -> int:
        async def run():
            return sum(info.size for info in await self.store.list("chunks/"))
        return trio.run(run)

    def referenced_bytes(self) -> int:
        """The bytes of the records that kept snapshots reach (what prune may not delete)."""
        async def run():
            repo = await Repository.open(self.store, PASSPHRASE, use_cache=False)
            with BlobSet(repo.index) as reached:
                collect = reached.collector()
                await walk_blobs(repo, [s.tree for s in await repo.snapshots()], collect)
                collect.flush()
                total = sum(location.length for page in reached.pages(1000)
                            for location in repo.index.get_many(page).values())
            await repo.close()
            return total
        return trio.run(run)

    def assert_kept_restore(self) -> None:
        listed = [row["name"] for row in json.loads(self.cloudfs("snapshots", "--json").stdout)]
        for name in listed:
            target = self.base / f"restored-{name.rsplit('-', 1)[-1]}"
            self.cloudfs("restore", name.removeprefix("snapshots/"), target)
            assert not diff(self.captures[name], capture_directory(target)), name

    def assert_check_clean(self, *options: str) -> subprocess.CompletedProcess:
        result = self.cloudfs("check", *options, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        return result


def changing_tree(source: Path, files: int = 24, size: int = 40_000):
    """Each snapshot rewrites a few files, adds one, removes one: old data goes out of date."""
    def change(i: int) -> None:
        if i == 0:
            for n in range(files):
                (source / f"f{n:03d}").write_bytes(os.urandom(size))
        for n in range(i % files, i % files + 3):
            (source / f"f{n % files:03d}").write_bytes(os.urandom(size))
        (source / f"new{i:03d}").write_bytes(os.urandom(size // 2))
        old = source / f"new{i - 2:03d}"
        if old.exists():
            old.unlink()
    return change


def test_forget_and_prune_reclaim_the_unreferenced_bytes_and_kept_snapshots_restore(s3_env, tmp_path):
    history = History(s3_env, tmp_path)
    history.take(30, changing_tree(history.source))
    history.cloudfs("forget", "--keep-last", "3")
    before, referenced = history.chunk_bytes(), history.referenced_bytes()
    started = time.monotonic()
    pruned = history.cloudfs("prune", "--grace", "0", "--json")
    seconds = time.monotonic() - started
    after = history.chunk_bytes()
    unreferenced = before - referenced
    reclaimed = before - after
    print(f"\nprune: {before} chunk bytes, {referenced} referenced; reclaimed {reclaimed} of "
          f"{unreferenced} unreferenced ({reclaimed / unreferenced:.1%}) in {seconds:.1f} s")
    assert reclaimed >= 0.9 * unreferenced, json.loads(pruned.stdout)
    history.assert_check_clean("--read-data")
    history.assert_kept_restore()


def test_a_dry_run_changes_nothing_and_says_what_the_run_then_does(s3_env, tmp_path):
    history = History(s3_env, tmp_path)
    history.take(6, changing_tree(history.source, files=6))
    history.cloudfs("forget", "--keep-last", "2")
    listing = trio.run(history.store.list)
    planned = json.loads(history.cloudfs("prune", "--dry-run", "--grace", "0", "--json").stdout)
    assert trio.run(history.store.list) == listing
    text = history.cloudfs("prune", "--dry-run", "--grace", "0").stdout
    assert "would mark" in text and "nothing changed (--dry-run)" in text
    done = json.loads(history.cloudfs("prune", "--grace", "0", "--json").stdout)
    assert planned["marked"]["delete"] == done["marked"]["delete"]
    assert planned["marked"]["repack"] == done["marked"]["repack"]
    assert done["swept"][0]["bytes"] == planned["marked"]["delete"]["bytes"] + planned["marked"]["repack"]["bytes"]
    history.assert_check_clean()


# -- kill -9 at each step ------------------------------------------------------------------------


def prune_frozen_at(history: History, when: str, prefix: str, count: int, *options: str) -> None:
    """Start a prune, wait until it reaches the step, kill -9 it."""
    marker = history.base / f"frozen-{time.monotonic_ns()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.prune_pause", str(marker), when, prefix, str(count),
         "prune", "--grace", "0", *options], env=history.env, cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: marker.exists() or process.poll() is not None, timeout=120, what="the step")
        assert marker.exists(), process.communicate()[0]
    finally:
        kill_hard(process.pid)
        process.communicate()


@pytest.mark.parametrize("when, prefix, count", [
    ("after-put", "doomed/", 1),          # between marking and sweeping
    ("after-put", "chunks/", 1),          # mid-repack: a new chunk, no index object for it yet
    ("before-delete", "index/", 1),       # replacement index objects written, old ones not yet dropped
    ("before-delete", "chunks/", 3),      # mid-delete
])
def test_a_prune_killed_at_any_step_leaves_a_clean_repository_and_a_rerun_completes(
        s3_env, tmp_path, when, prefix, count):
    history = History(s3_env, tmp_path)
    history.take(5, changing_tree(history.source, files=8, size=60_000))
    history.cloudfs("forget", "--keep-last", "2")
    prune_frozen_at(history, when, prefix, count, "--max-unused", "0%")
    history.assert_check_clean()
    rerun = history.cloudfs("prune", "--grace", "0", "--max-unused", "0%")
    assert "another prune" not in rerun.stdout
    history.assert_check_clean("--read-data")
    history.assert_kept_restore()
    assert not trio.run(lambda: history.store.list("doomed/"))
    assert not trio.run(lambda: history.store.list("leases/"))


def test_a_damaged_snapshot_object_stops_prune_until_healed_or_forgotten(s3_env, tmp_path):
    """A snapshot object that cannot be read might still be healed (a replica, an
    older version): prune must not delete what it refers to. `forget --damaged`
    drops it on purpose; then prune runs."""
    history = History(s3_env, tmp_path)
    history.take(3, lambda i: (history.source / f"f{i}").write_bytes(os.urandom(50_000)))
    names = sorted(trio.run(lambda: history.store.list("snapshots/")), key=lambda info: info.name)
    damaged = names[0].name
    data = bytearray(trio.run(lambda: history.store.get(damaged)))
    data[-5] ^= 0xFF
    trio.run(lambda: history.store.put(damaged, bytes(data)))
    refused = history.cloudfs("prune", "--grace", "0s", check=False)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("cloudfs: error: ")]
    assert refused.returncode == 1 and len(errors) == 1 and "snapshot objects are damaged" in errors[0]
    dry = json.loads(history.cloudfs("forget", "--keep-last", "10", "--damaged", "--dry-run", "--json").stdout)
    assert dry["damaged"] == [damaged]
    history.cloudfs("forget", "--keep-last", "10", "--damaged")
    assert damaged not in {info.name for info in trio.run(lambda: history.store.list("snapshots/"))}
    history.cloudfs("prune", "--grace", "0s")
    history.cloudfs("check", "--read-data")
