"""`cloudfs mount`, `umount` and `changes` from the command line: bad input gets one
clear line and a non-zero exit; signals and umount stop the mount cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudfs.system import mounttable
from cloudfs.live.journal import read_journal
from cloudfs.system.statedir import StateDir
from tests.live_fixtures import CLOUDFS, check_view, live, run_cloudfs, tree_state  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def fails_with(*args, message: str) -> None:
    result = run_cloudfs(*args, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloudfs: error: "), result.stderr
    assert message in lines[0], lines[0]


def test_a_missing_source_is_refused(tmp_path):
    fails_with("mount", tmp_path / "nope", message="does not exist")


def test_a_source_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    fails_with("mount", tmp_path / "file", message="is not a directory")


def test_a_non_empty_mountpoint_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "something").write_text("x")
    fails_with("mount", tmp_path / "src", tmp_path / "mnt", message="is not empty")


def test_a_mountpoint_that_is_a_file_or_missing_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "file").write_text("x")
    fails_with("mount", tmp_path / "src", tmp_path / "file", message="is not a directory")
    fails_with("mount", tmp_path / "src", tmp_path / "missing", message="does not exist")


def test_a_busy_mountpoint_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "mnt").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path / "mnt")], check=True)
    try:
        fails_with("mount", tmp_path / "src", tmp_path / "mnt", message="is busy")
    finally:
        subprocess.run(["umount", str(tmp_path / "mnt")], check=True)


def test_a_mountpoint_or_state_directory_inside_source_is_refused(tmp_path):
    (tmp_path / "src" / "inner").mkdir(parents=True)
    fails_with("mount", tmp_path / "src", tmp_path / "src" / "inner", message="must not be inside SOURCE")
    fails_with("mount", "--state-dir", tmp_path / "src" / "state", tmp_path / "src",
               message="must be outside SOURCE")


def test_a_second_mount_of_the_same_source_is_refused(live, tmp_path):
    live.mount()
    other = tmp_path / "elsewhere"
    other.mkdir()
    fails_with("mount", "--state-dir", live.state_dir, live.source, other, message="already mounted")
    fails_with("mount", "--state-dir", tmp_path / "other-state", live.source, message="already mounted")


def test_without_dev_fuse_the_error_says_so(tmp_path):
    (tmp_path / "src").mkdir()
    script = (f"mount -t tmpfs none /dev && exec {sys.executable} -m cloudfs mount "
              f"--state-dir {tmp_path / 'state'} {tmp_path / 'src'}")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=30,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode != 0
    assert result.stderr.strip() == ("cloudfs: error: /dev/fuse does not exist: load the fuse module "
                                     "(modprobe fuse), or give the container the device")


def _wait_for_mount(path: Path, state_dir: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        holder = StateDir(state_dir).holder()
        if holder is not None and holder.pid == process.pid and mounttable.mounted_at(str(path)):
            return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    raise AssertionError("the mount did not come up")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_unmounts_the_foreground_mount_cleanly(tmp_path, signum):
    source, state_dir = tmp_path / "src", tmp_path / "state"
    source.mkdir()
    (source / "existing").write_text("before")
    before = tree_state(source)
    process = subprocess.Popen([*CLOUDFS, "mount", "--state-dir", str(state_dir), str(source)],
                               stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    try:
        _wait_for_mount(source, state_dir, process)
        (source / "written").write_text("through the mount")
        (source / "existing").write_text("changed")
        process.send_signal(signum)
        assert process.wait(timeout=20) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            subprocess.run(["fusermount3", "-u", "-z", str(source)], capture_output=True)
    assert mounttable.mounted_at(str(source)) is None
    assert read_journal(state_dir).clean_stop
    assert "mounted on" in process.stderr.read()
    report = json.loads(run_cloudfs("changes", "--json", "--journal-only", "--state-dir", state_dir,
                                    source).stdout)
    assert not check_view(before, tree_state(source), report["changes"])


def test_umount_refuses_a_busy_mount_and_lazy_detaches(live):
    root = live.mount()
    handle = open(root / "open-file", "w")
    try:
        fails_with("umount", root, message="is busy")
        run_cloudfs("umount", "--lazy", root)
        assert mounttable.mounted_at(str(root)) is None
        handle.write("still works after the lazy detach")
        handle.flush()
        assert StateDir(live.state_dir).holder() is not None  # serving the open file
    finally:
        handle.close()
    deadline = time.monotonic() + 20
    while StateDir(live.state_dir).holder() is not None:
        assert time.monotonic() < deadline, "the daemon did not stop after the last close"
        time.sleep(0.05)
    assert (live.source / "open-file").read_text() == "still works after the lazy detach"
    assert read_journal(live.state_dir).clean_stop


def test_umount_of_something_else_is_refused(tmp_path):
    fails_with("umount", tmp_path, message="is not a cloudfs mount")


def test_changes_of_a_never_mounted_source_says_so(tmp_path):
    (tmp_path / "src").mkdir()
    fails_with("changes", "--state-dir", tmp_path / "state", tmp_path / "src", message="never been mounted")


def test_changes_lists_pending_changes_as_text_while_mounted(live):
    (live.source / "edited").write_text("x" * 100)
    root = live.mount()
    (root / "edited").write_text("y" * 100)
    (root / "added").write_text("new")
    os.sync()
    time.sleep(0.3)  # the journal reaches its file within 0.1 s
    lines = run_cloudfs("changes", "--state-dir", live.state_dir, live.source).stdout.splitlines()
    assert "added    added" in lines
    assert any(line.startswith("data     edited") or line.startswith("whole    edited") for line in lines)


def test_a_damaged_journal_is_reported_by_the_daemon(live):
    live.mount()
    live.umount()
    (live.state_dir / "journal").write_bytes(b"not a journal at all, sorry")
    fails_with("mount", "--daemon", "--state-dir", live.state_dir, live.source, message="not a cloudfs journal")
    (live.state_dir / "journal").unlink()  # a lost journal is recovered by reconcile
    live.mount()
    live.umount()


def test_without_journaling_the_next_mount_still_finds_every_change(live):
    (live.source / "f").write_text("before")
    live.mount()  # the first journaled mount sets the baseline
    live.umount()
    root = live.mount(None, "--no-journal")
    (root / "f").write_text("changed without a journal")
    (root / "g").write_text("new")
    live.umount()
    assert read_journal(live.state_dir).pending().inodes() == set()
    live.mount()
    live.umount()


def test_a_state_directory_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "file").write_text("not a directory")
    for daemon in ([], ["--daemon"]):
        fails_with("mount", *daemon, "--state-dir", tmp_path / "file" / "state", tmp_path / "src",
                   message="cannot create the state directory")
    assert mounttable.mounted_at(str(tmp_path / "src")) is None
