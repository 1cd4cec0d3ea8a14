"""`cloudfs mount --repo` from the command line: settings, errors, the timer, stopping.

Errors of the repository (passphrase, options, configuration file) are one line
at the prompt and nothing is mounted; a signal or `cloudfs umount` takes a final
snapshot first, and unmounts anyway when the store is down.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
import trio

from cloudfs.system import mounttable
from cloudfs.store import LocalStore
from cloudfs.store.throttle import ThrottledStore
from tests.faults import FaultyProxy
from tests.live_fixtures import run_cloudfs
from tests.snapshot_fixtures import protected, wait_until  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)


def one_line_error(result) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloudfs: error: "), result.stderr
    return lines[0]


def mount_fails(protected, *options, env=None) -> str:
    result = run_cloudfs("mount", "--daemon", "--state-dir", protected.state_dir, *options,
                         protected.source, check=False, env=env or protected.env)
    assert mounttable.mounted_at(str(protected.source)) is None or \
        mounttable.mounted_at(str(protected.source)).fstype != mounttable.FSTYPE
    return one_line_error(result)


def test_repository_errors_are_one_line_at_the_prompt_and_nothing_is_mounted(protected, tmp_path):
    wrong = dict(protected.env, CLOUDFS_PASSWORD="not the passphrase")
    assert "wrong passphrase" in mount_fails(protected, env=wrong)
    assert "needs the journal" in mount_fails(protected, "--no-journal")
    missing = dict(protected.env, CLOUDFS_REPO=f"s3://{protected.bucket}/elsewhere")
    assert "no cloudfs repository" in mount_fails(protected, env=missing)
    config = tmp_path / "bad.toml"
    config.write_text("interval = [")
    assert "not valid TOML" in mount_fails(protected, "--config", config)
    config.write_text('intervall = 5')
    assert "unknown setting 'intervall'" in mount_fails(protected, "--config", config)
    config.write_text('spool_size = "lots"')
    assert "spool_size" in mount_fails(protected, "--config", config)


def test_a_config_file_sets_the_repository_interval_spool_and_exclusions(protected, tmp_path):
    source = protected.source
    (source / "keep.txt").write_text("kept")
    (source / "scratch.tmp").write_text("left out by name")
    (source / "cache").mkdir()
    (source / "cache" / "blob").write_text("left out by path")
    config = tmp_path / "cloudfs.toml"
    config.write_text(f'repository = "{protected.location}"\ninterval = "1h"\nspool_size = "64M"\n'
                      'exclude = ["*.tmp", "cache/*"]\n')
    env = dict(protected.env)
    del env["CLOUDFS_REPO"]
    protected.env = env
    protected.mount(None, "--config", config, "--interval", "2h")   # the command line wins
    status = protected.flush() and protected.status()
    assert status["repository"] == protected.location and status["interval"] == 7200
    assert status["spool_limit"] == 64 << 20
    repo = protected.repository()
    names = {path for path in protected.snapshot_capture(protected.snapshots(repo)[-1], repo)["entries"]}
    assert names == {b"keep.txt", b"cache"}


def test_each_mount_chooses_its_compression_and_the_repository_reads_both(protected, tmp_path):
    text = b"".join(b"line %d of a very compressible text file\n" % i for i in range(40_000))
    (protected.source / "text.txt").write_bytes(text)
    protected.mount(None, "--compression", "none")
    assert protected.flush() and protected.status()["compression"] == "none"
    first = protected.snapshots()[-1]
    assert first.stats["bytes_stored"] >= first.stats["bytes_added"] >= len(text)
    protected.umount()

    config = tmp_path / "cloudfs.toml"
    config.write_text('compression = "zstd:19"\n')
    root = protected.mount(None, "--config", config)
    assert protected.status()["compression"] == "zstd:19"
    (root / "text.txt").write_bytes(text.replace(b"line", b"LINE"))
    protected.request("snapshot", wait=True)
    second = protected.snapshots()[-1]
    assert second.stats["bytes_stored"] < second.stats["bytes_added"] / 10
    protected.assert_latest_matches()
    repo = protected.repository()
    assert protected.snapshot_capture(first, repo)["entries"][b"text.txt"][7] == hashlib.sha256(text).hexdigest()
    config.write_text('compression = "lz4"\n')
    protected.umount()
    assert "compression" in mount_fails(protected, "--config", config)


def test_the_timer_seals_by_itself_when_something_changed(protected):
    protected.mount(None, "--interval", "1")
    protected.flush()
    first = len(protected.snapshots())
    time.sleep(1.5)
    assert len(protected.snapshots()) == first  # nothing changed: no empty snapshots
    (protected.source / "new").write_text("changed")
    wait_until(lambda: len(protected.snapshots()) == first + 1, timeout=10, interval=0.2,
               what="a snapshot on the timer")
    assert protected.status()["next_snapshot_ns"] > time.time_ns()


def test_sigterm_takes_a_final_snapshot_before_unmounting(protected):
    root = protected.mount(None, "--interval", "3600")
    protected.flush()
    (root / "written-before-sigterm").write_bytes(os.urandom(100_000))
    pid = protected.daemon_pid()
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: protected.daemon_pid_or_none() is None, timeout=60, what="the daemon to stop")
    assert mounttable.mounted_at(str(root)) is None or mounttable.mounted_at(str(root)).fstype != mounttable.FSTYPE
    protected.assert_latest_matches()
    assert protected.changes(journal_only=True)["changes"] == []


def mount_behind(proxy: FaultyProxy, protected, tmp_path) -> Path:
    """Mount at tmp_path/mnt with the repository reached through `proxy`; flushed."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    protected.mount(mountpoint, "--interval", "3600", "--endpoint-url", proxy.endpoint, "--retries", "1")
    protected.flush()
    return mountpoint


def store_goes_down(proxy: FaultyProxy) -> None:
    proxy.add_faults(*["reset"] * 1000)
    proxy.drop_connections()


def test_umount_with_the_store_down_unmounts_anyway_and_the_next_mount_commits(protected, tmp_path):
    with FaultyProxy(int(protected.endpoint.rsplit(":", 1)[1])) as proxy:
        mountpoint = mount_behind(proxy, protected, tmp_path)
        (mountpoint / "pending").write_bytes(b"written while the store is down")
        store_goes_down(proxy)
        started = time.monotonic()
        result = protected.umount(mountpoint, "--snapshot-timeout", "30")
        assert time.monotonic() - started < 20
        assert "did not complete" in result.stderr
    assert any(change["path"] == "pending" for change in protected.changes(journal_only=True)["changes"])
    protected.mount(mountpoint, "--interval", "3600")
    protected.flush()
    protected.assert_latest_matches()
    protected.umount(mountpoint)


def test_umount_with_the_store_gone_silent_waits_only_the_snapshot_timeout(protected, tmp_path):
    """A network that swallows requests (no answer, no reset) holds an S3 request for
    its 60 s read timeout; the umount must not wait for it."""
    with FaultyProxy(int(protected.endpoint.rsplit(":", 1)[1])) as proxy:
        mountpoint = mount_behind(proxy, protected, tmp_path)
        proxy.add_faults(*["stall"] * 1000)
        proxy.drop_connections()
        (mountpoint / "pending").write_bytes(b"written while the store is silent")
        protected.request("snapshot", wait=False)
        time.sleep(1)                                    # its upload now waits for an answer
        started = time.monotonic()
        result = protected.umount(mountpoint, "--snapshot-timeout", "3")
        assert time.monotonic() - started < 15
        assert "did not complete" in result.stderr
    protected.mount(mountpoint, "--interval", "3600")
    protected.flush()
    protected.assert_latest_matches()
    protected.umount(mountpoint)


def test_cloudfs_snapshot_answers_at_once_while_another_snapshot_waits_for_the_store(protected, tmp_path):
    with FaultyProxy(int(protected.endpoint.rsplit(":", 1)[1])) as proxy:
        mountpoint = mount_behind(proxy, protected, tmp_path)
        (mountpoint / "first").write_bytes(b"sealed while the store is down")
        store_goes_down(proxy)
        protected.request("snapshot", wait=False)
        wait_until(lambda: not protected.status()["upload"]["store_ok"], what="the store reported down")
        (mountpoint / "second").write_bytes(b"asked for while the first waits")
        started = time.monotonic()
        result = run_cloudfs("snapshot", str(mountpoint), env=protected.env)
        assert time.monotonic() - started < 10
        assert "will be sealed as soon as it is committed" in result.stdout
        status = run_cloudfs("status", str(mountpoint), env=protected.env).stdout
        assert "unreachable since" in status
        proxy.plan.clear()                               # the store is back
        protected.flush(timeout=90)
        protected.request("snapshot", wait=True)
    protected.umount(mountpoint, "--snapshot-timeout", "5")


def test_a_mount_without_a_repository_answers_status_and_refuses_snapshots(protected):
    env = dict(protected.env)
    del env["CLOUDFS_REPO"]
    protected.env = env
    root = protected.mount()
    (root / "file").write_text("journaled")
    time.sleep(0.2)
    status = json.loads(run_cloudfs("status", "--json", root, env=env).stdout)
    assert status["repository"] is None and status["pending_files"] == 1
    assert "mounted without --repo" in one_line_error(run_cloudfs("snapshot", root, check=False, env=env))
    result = protected.umount()
    assert result.stderr == ""


def test_a_bandwidth_limit_spaces_out_uploads(tmp_path):
    (tmp_path / "store").mkdir()
    store = ThrottledStore(LocalStore(str(tmp_path / "store")), 1_000_000)

    async def upload() -> float:
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for index in range(4):
                nursery.start_soon(store.put, f"object-{index}", os.urandom(200_000))
        return trio.current_time() - started

    elapsed = trio.run(upload)
    assert 0.55 <= elapsed < 2.0  # 800 kB at 1 MB/s: the first starts at once, the last at 0.6 s


def test_stop_takes_a_final_snapshot_and_unmounts(protected):
    root = protected.mount(None, "--interval", "3600")
    protected.flush()
    (root / "before-stop").write_bytes(b"s" * 5000)
    reply = protected.request("stop")
    assert reply["committed"] and reply["snapshot"]
    wait_until(lambda: protected.daemon_pid_or_none() is None, timeout=30, what="the daemon to stop")
    entry = mounttable.mounted_at(str(root))
    assert entry is None or entry.fstype != mounttable.FSTYPE
    assert protected.snapshots()[-1].name == reply["snapshot"]
    protected.assert_latest_matches()
