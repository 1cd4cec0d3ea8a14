"""The rescan: changes made to SOURCE behind the mount's back while it is mounted
elsewhere are found (on `cloudfs rescan` and on the mount's own timer), journaled,
and in the next snapshot; the mount's own changes are never reported as such."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.live_fixtures import live, run_cloudfs  # noqa: F401 - fixture
from tests.snapshot_fixtures import protected, wait_until  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)

CLOCK_TICK = 0.05   # ctimes come from a coarse clock: let it move on


def rescan(tree, where) -> dict:
    return json.loads(run_cloudfs("rescan", "--json", where, env=tree.env).stdout)


def populate(source) -> None:
    (source / "dir").mkdir()
    for name in ("both", "behind", "mode", "removed", "renamed", "dir/kept"):
        (source / name).write_bytes(os.urandom(200_000))


def test_a_rescan_finds_what_bypassed_the_mount_and_nothing_else(live, tmp_path):
    populate(live.source)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    live.mount(mountpoint)
    with open(mountpoint / "both", "r+b") as handle:       # through the mount
        handle.seek(4096)
        handle.write(b"through the mount")
    (mountpoint / "made").write_bytes(os.urandom(10_000))
    os.rename(mountpoint / "renamed", mountpoint / "dir" / "renamed")
    os.mkdir(mountpoint / "newdir")
    os.link(mountpoint / "made", mountpoint / "newdir" / "link")
    os.chmod(mountpoint / "dir" / "kept", 0o600)
    assert rescan(live, mountpoint)["changed_inodes"] == 0, "the mount's own changes"

    time.sleep(CLOCK_TICK)
    source = live.source                                    # behind its back
    with open(source / "both", "r+b") as handle:
        handle.seek(150_000)
        handle.write(b"behind the mount's back")
    with open(source / "behind", "ab") as handle:
        handle.write(b"appended behind its back")
    os.chmod(source / "mode", 0o640)
    os.unlink(source / "removed")
    (source / "dir" / "new-behind").write_text("made behind its back")
    found = rescan(live, mountpoint)
    # both, behind, mode, SOURCE (a name gone; its times), dir (a new name)
    assert found["changed_inodes"] >= 5 and found["entries"] >= 9
    assert rescan(live, mountpoint)["changed_inodes"] == 0, "nothing is found twice"
    # the fixture then checks that the journal's view is exactly what changed


def test_the_mount_rescans_by_itself_and_says_so_in_status(live, tmp_path):
    populate(live.source)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    live.mount(mountpoint, "--rescan-interval", "1")
    time.sleep(CLOCK_TICK)
    with open(live.source / "behind", "ab") as handle:
        handle.write(b"appended behind its back")

    def status() -> dict:
        return json.loads(run_cloudfs("status", "--json", mountpoint, env=live.env).stdout)

    wait_until(lambda: ((status()["rescan"] or {}).get("last") or {}).get("changed_inodes", 0) >= 1,
               timeout=20, interval=0.2, what="a rescan on the timer")
    assert status()["rescan"]["interval"] == 1
    assert status()["pending_files"] == 1 and status()["pending_bytes"] >= 200_000   # never looked up
    assert "rescan         every 1 s" in run_cloudfs("status", mountpoint, env=live.env).stdout


def test_the_timer_can_be_turned_off_and_a_rescan_still_be_asked_for(live, tmp_path):
    populate(live.source)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    config = tmp_path / "cloudfs.toml"
    config.write_text('rescan_interval = "off"\n')
    live.mount(mountpoint, "--config", config)
    status = json.loads(run_cloudfs("status", "--json", mountpoint, env=live.env).stdout)
    assert status["rescan"] == {"interval": None, "last": None}
    assert "only when asked; none yet" in run_cloudfs("status", mountpoint, env=live.env).stdout
    time.sleep(CLOCK_TICK)
    os.chmod(live.source / "mode", 0o600)
    (live.source / "dir" / "copied-in").write_bytes(os.urandom(150_000))
    assert rescan(live, mountpoint)["changed_inodes"] == 3   # mode, copied-in, dir
    status = json.loads(run_cloudfs("status", "--json", mountpoint, env=live.env).stdout)
    assert status["pending_files"] == 2 and status["pending_bytes"] >= 150_000


def test_rescan_needs_the_journal(live, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    live.mount(mountpoint, "--no-journal")
    result = run_cloudfs("rescan", mountpoint, check=False, env=live.env)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"cloudfs: error: {mountpoint} was mounted with --no-journal: there is no journal to "
        "record what a rescan finds"]
    live.before = None   # nothing was journaled, by design


def test_the_next_snapshot_has_what_a_rescan_found(protected, tmp_path):
    populate(protected.source)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    protected.mount(mountpoint, "--interval", "1h")
    protected.flush()
    with open(mountpoint / "both", "r+b") as handle:
        handle.write(b"through the mount")
    time.sleep(CLOCK_TICK)
    with open(protected.source / "both", "r+b") as handle:
        handle.seek(100_000)
        handle.write(b"behind the mount's back")
    with open(protected.source / "behind", "r+b") as handle:
        handle.seek(50_000)
        handle.write(b"behind the mount's back")
    (protected.source / "dir" / "new-behind").write_bytes(os.urandom(70_000))
    assert rescan(protected, mountpoint)["changed_inodes"] >= 3
    run_cloudfs("snapshot", "--wait", mountpoint, env=protected.env)
    protected.assert_latest_matches()
    os.unlink(mountpoint / "both")   # through the mount, into the graveyard while it uploads
    protected.seal()
    assert rescan(protected, mountpoint)["changed_inodes"] == 0
    protected.flush()
    assert rescan(protected, mountpoint)["changed_inodes"] == 0
    assert protected.assert_snapshots_match_references()
