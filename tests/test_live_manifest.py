"""The manifest on disk through real mounts: lost, damaged, of the previous version, on a full disk.

Each scenario commits a snapshot, changes the tree behind the mount's back while
it is unmounted, does something to the manifest, and mounts again as a user
would: the next snapshot must equal the tree, so nothing was lost.
"""

from __future__ import annotations

import os
import sys
import subprocess

import msgpack
import pytest

from cloudfs.errors import CloudfsError

from cloudfs.live.manifest import LEGACY_NAME, MANIFEST_NAME, Manifest
from tests.snapshot_fixtures import protected, wait_until  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)


def first_snapshot(protected) -> None:
    root = protected.mount()
    (root / "docs").mkdir()
    for index in range(20):
        (root / "docs" / f"note{index}.txt").write_text(f"note {index}\n" * (index + 1))
    (root / "big.bin").write_bytes(os.urandom(300_000))
    protected.flush()
    protected.umount()


def edit_behind_the_back(protected) -> None:
    (protected.source / "docs" / "note3.txt").write_text("edited while unmounted\n")
    (protected.source / "docs" / "new.txt").write_text("made while unmounted\n")
    os.unlink(protected.source / "docs" / "note4.txt")


def remount_and_commit(protected) -> dict:
    protected.mount()
    protected.request("snapshot", wait=True)
    protected.flush()
    protected.assert_latest_matches()
    return protected.status()


def manifest_files(protected) -> list:
    return [protected.state_dir / name for name in (MANIFEST_NAME, f"{MANIFEST_NAME}-wal", f"{MANIFEST_NAME}-shm")]


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_a_lost_or_damaged_manifest_is_rebuilt_and_nothing_is_lost(protected, damage):
    first_snapshot(protected)
    edit_behind_the_back(protected)
    for path in manifest_files(protected):
        path.unlink(missing_ok=True)
    if damage == "garbage":
        (protected.state_dir / MANIFEST_NAME).write_bytes(b"this is not a database" * 100)
    status = remount_and_commit(protected)
    assert "rebuilt from the tree as it is" in protected.log()
    assert status["history"][0]["full"]        # compared everything with the last snapshot
    assert Manifest.open(protected.state_dir) is not None


def test_a_state_directory_of_the_previous_version_mounts_and_carries_on(protected):
    first_snapshot(protected)
    write_legacy_manifest(protected.state_dir)
    edit_behind_the_back(protected)
    status = remount_and_commit(protected)
    assert not (protected.state_dir / LEGACY_NAME).exists()
    assert not any(entry["full"] for entry in status["history"])   # the checkpoint was kept
    assert "rebuilt" not in protected.log()


def write_legacy_manifest(state_dir) -> None:
    """The manifest as cloudfs wrote it before (format version 1: one msgpack file)."""
    manifest = Manifest.open(state_dir)
    point = manifest.checkpoint
    document = {
        "format": "cloudfs-live-manifest", "version": 1,
        "checkpoint": {"snapshot": point.snapshot, "repo_id": point.repo_id,
                       "exclude": list(point.exclude), "time_ns": point.time_ns},
        "entries": [[path, *entry] for path, entry in manifest.items()],
    }
    manifest.close()
    for name in (MANIFEST_NAME, f"{MANIFEST_NAME}-wal", f"{MANIFEST_NAME}-shm"):
        (state_dir / name).unlink(missing_ok=True)
    (state_dir / LEGACY_NAME).write_bytes(msgpack.packb(document, use_bin_type=True))


@pytest.mark.parametrize("where", ["state", "cache"])
def test_a_full_disk_under_the_manifest_or_the_index_fails_clearly_and_nothing_is_lost(protected, tmp_path, where):
    """The disk holding the manifest (the state directory) or the blob index (the
    cache) fills: the snapshot fails with one clear line in status, writes through
    the mount go on, and once there is room the next snapshot commits everything."""
    first_snapshot(protected)
    full = protected.state_dir if where == "state" else protected.base / "cache"
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(full), str(copy)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(full)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{copy}/.", str(full)], check=True)
        root = protected.mount()
        filler = full / "filler"
        with open(filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
            except OSError:
                pass
        for index in range(200):
            (root / "docs" / f"more{index}.txt").write_text("x" * index)
        try:
            protected.request("snapshot")
        except CloudfsError as error:              # the seal itself may be what fails
            assert "full" in str(error) or "space" in str(error), error
        status = wait_until(lambda: (current := protected.status())["failures"] and current,
                            timeout=60, what="the snapshot to fail")
        error = status["last_error"]
        assert "space" in error or "full" in error, error
        assert len(error.splitlines()) == 1
        (root / "docs" / "still-writable.txt").write_text("writes go on")
        filler.unlink()
        protected.request("snapshot", wait=True)
        protected.flush()
        protected.assert_latest_matches()
        protected.umount()
    finally:
        protected.cleanup()
        subprocess.run(["umount", "-l", str(full)], capture_output=True)


def test_the_manifest_holds_no_entry_in_memory_between_calls(tmp_path):
    """Opening a manifest of many entries costs what SQLite's page cache holds, not
    an entry per file: the process's peak grows by a few MB whatever the count."""
    code = """
import os, resource, sys
from pathlib import Path
from cloudfs.live.manifest import Manifest
from cloudfs.live.scan import PACKED
count, path = int(sys.argv[1]), Path(sys.argv[2])
def entries():
    yield b"", PACKED.pack(0o40755, 1, 0, 0, 0, 0, 0, 2)
    for d in range(count // 1000):
        yield b"d%d" % d, PACKED.pack(0o40755, 2 + d, 0, 0, 0, 0, 0, 2)
    for i in range(count):
        yield b"d%d/f%d" % (i // 1000, i), PACKED.pack(0o100644, 10**6 + i, i, i, i, 0, 0, 1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
manifest = Manifest.build(path, entries())
assert len(manifest) == count + count // 1000 + 1
assert manifest.get(b"d7/f7123").size == 7123 and manifest.paths_of(10**6 + 5) == [b"d0/f5"]
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    grown = {}
    for count in (20_000, 200_000):
        result = subprocess.run([sys.executable, "-c", code, str(count), str(tmp_path / f"m{count}.db")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        grown[count] = int(result.stdout) / 1024   # MiB
    assert grown[200_000] - grown[20_000] < 15, grown
    assert (tmp_path / "m200000.db").stat().st_size / 200_000 < 128    # bytes per entry on disk
