"""Faults: a full disk, kill -9 in the middle of writes, and changes made while unmounted.

In every case the journal's view after the next clean stop must match what really
changed (the `live` fixture checks it, remounting first after an unclean stop)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.live_fixtures import _live_tree, live  # noqa: F401 - live is a fixture

pytestmark = pytest.mark.timeout(180)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def live_on_small_disk(tmp_path):
    """A LiveTree whose SOURCE is an 8 MiB tmpfs."""
    _mount_tmpfs(tmp_path / "source", "8m")
    try:
        yield from _live_tree(tmp_path)
    finally:
        _unmount(tmp_path / "source")


@pytest.fixture
def live_with_small_state_disk(tmp_path):
    """A LiveTree whose state directory (the journal) is on a 2 MiB tmpfs."""
    _mount_tmpfs(tmp_path / "state", "2m")
    try:
        yield from _live_tree(tmp_path)
    finally:
        _unmount(tmp_path / "state")


def _fill(path: Path) -> OSError:
    """Write 1 MiB blocks until the disk is full; the error may come from write,
    fsync or close (the kernel's writeback cache reports it late, as NFS does)."""
    block = os.urandom(1 << 20)
    try:
        with open(path, "wb") as handle:
            for _ in range(64):
                handle.write(block)
                handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        return error
    raise AssertionError("64 MiB fitted on an 8 MiB disk")


def test_a_full_source_disk_gives_enospc_and_the_journal_stays_consistent(live_on_small_disk):
    live = live_on_small_disk
    (live.source / "kept").write_bytes(b"k" * 100_000)
    root = live.mount()
    error = _fill(root / "big")
    assert error.errno == errno.ENOSPC
    with pytest.raises(OSError) as raised:
        with open(root / "another", "wb") as handle:
            handle.write(os.urandom(2 << 20))
            os.fsync(handle.fileno())
    assert raised.value.errno == errno.ENOSPC
    os.unlink(root / "big")
    (root / "after").write_bytes(b"space again")
    with open(root / "kept", "r+b") as handle:
        handle.seek(50_000)
        handle.write(b"edited")
    live.umount()
    assert (live.source / "after").read_bytes() == b"space again"


def test_a_full_journal_disk_fails_fsync_and_loses_nothing(live_with_small_state_disk):
    live = live_with_small_state_disk
    (live.source / "existing").write_bytes(b"e" * 1_000_000)
    root = live.mount()
    filler = live.state_dir / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    with open(root / "existing", "r+b") as handle:
        for offset in range(0, 1_000_000, 8192):
            handle.seek(offset)
            handle.write(b"W" * 100)
            handle.flush()
            os.fsync(handle.fileno()) if offset % 80_000 == 0 else None
        handle.flush()
        with pytest.raises(OSError) as raised:
            for _ in range(50):  # the journal cannot grow: fsync must not claim durability
                handle.seek(0)
                handle.write(os.urandom(100))
                handle.flush()
                os.fsync(handle.fileno())
        assert raised.value.errno == errno.ENOSPC
        filler.unlink()
        os.fsync(handle.fileno())  # space again: everything kept in memory is written now
    live.umount()


WRITER = textwrap.dedent("""
    import os, sys, random
    root = sys.argv[1]
    rng = random.Random(1)
    os.makedirs(os.path.join(root, "many"), exist_ok=True)
    big = os.open(os.path.join(root, "big"), os.O_RDWR | os.O_CREAT, 0o644)
    index = 0
    while True:
        try:
            for _ in range(20):
                os.pwrite(big, os.urandom(65536), rng.randrange(0, 64) * 65536)
            with open(os.path.join(root, "many", f"f{index % 300}"), "wb") as handle:
                handle.write(os.urandom(rng.randrange(1, 30000)))
            if index % 50 == 0:
                os.fsync(big)
            index += 1
            if index == 30:
                print("writing", flush=True)
        except OSError:
            break
""")


def test_kill_9_during_heavy_writes_loses_nothing(live):
    (live.source / "big").write_bytes(os.urandom(4 << 20))
    (live.source / "untouched").write_bytes(b"u" * 5000)
    root = live.mount()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(1.0)
        live.kill()
        writer.wait(timeout=30)
    finally:
        writer.kill()
    with pytest.raises(OSError) as raised:
        os.listdir(root)
    assert raised.value.errno == errno.ENOTCONN
    live.mount()  # cleans up the dead mount, replays the journal, reconciles
    report = live.changes(journal_only=True)
    assert {"path": "big", "kind": "whole"} in report["changes"]
    assert not any(change["path"] == "untouched" for change in report["changes"])
    live.umount()


def test_changes_made_while_unmounted_are_journaled_by_the_next_mount(live):
    source = live.source
    for name in ("append", "chmod", "delete", "same-size", "xattr", "journaled"):
        (source / name).write_bytes(b"0123456789" * 1000)
    (source / "dir").mkdir()
    (source / "dir" / "inner").write_text("inner")
    root = live.mount()
    with open(root / "journaled", "r+b") as handle:
        handle.write(b"through the mount")
    live.umount()

    with open(source / "append", "ab") as handle:
        handle.write(b"appended while unmounted")
    os.chmod(source / "chmod", 0o600)
    os.unlink(source / "delete")
    (source / "new").write_text("new while unmounted")
    os.rename(source / "dir", source / "moved-dir")
    st = os.stat(source / "same-size")
    with open(source / "same-size", "r+b") as handle:  # rewritten, size and mtime put back
        handle.seek(500)
        handle.write(b"X" * 10)
    os.utime(source / "same-size", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.setxattr(source / "xattr", "user.added", b"offline")
    with open(source / "journaled", "r+b") as handle:  # journaled file, edited elsewhere
        handle.seek(9000)
        handle.write(b"offline edit")

    preview = {(c["path"], c["kind"]) for c in live.changes()["changes"]}
    assert ("same-size", "whole") in preview and ("new", "added") in preview
    journal_only = {(c["path"], c["kind"]) for c in live.changes(journal_only=True)["changes"]}
    assert ("new", "added") not in journal_only

    live.mount()
    live.umount()
    report = {(c["path"], c["kind"]) for c in live.changes(journal_only=True)["changes"]}
    assert {("append", "whole"), ("chmod", "meta"), ("delete", "removed"), ("new", "added"),
            ("same-size", "whole"), ("xattr", "whole"), ("journaled", "whole"),
            ("dir", "removed"), ("dir/inner", "removed"), ("moved-dir", "added"),
            ("moved-dir/inner", "added")} <= report


def test_kill_9_then_edits_while_unmounted_are_all_found(live):
    (live.source / "file").write_bytes(b"a" * 20000)
    root = live.mount()
    with open(root / "file", "r+b") as handle:
        handle.write(b"mounted")
        handle.flush()
        os.fsync(handle.fileno())
    (root / "created").write_text("c")
    live.kill()
    subprocess.run(["fusermount3", "-u", "-z", str(root)], check=True)
    with open(live.source / "file", "r+b") as handle:
        handle.seek(15000)
        handle.write(b"while unmounted")
    (live.source / "offline").write_text("o")
    live.mount()
    live.umount()
