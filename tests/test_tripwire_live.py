"""The ransomware tripwire through real mounts with a repository on the rclone S3 server.

A simulated attack (500 existing files rewritten in place with random bytes, or
renamed to `.locked`) fires it: the snapshot before the burst is pinned (forget
keeps it), `cloudfs status` and the metrics show the alert, it survives a
remount, and `cloudfs alerts ack` clears it. Ordinary heavy work does not fire
it: a 2 GiB high-entropy file copied in, a source tree untarred, a `git clone`,
a sqlite workload. With the store down when it fires, the pin is written once
the store answers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
import trio

from cloudfs import control
from cloudfs.locals3 import free_port
from tests.faults import FaultyProxy
from tests.live_fixtures import live, run_cloudfs  # noqa: F401 - fixture
from tests.snapshot_fixtures import new_protected, protected, wait_until  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(90)

FILES = 500
WORDS = b"invoice report budget meeting notes draft final summary quarter plan ".split()


def plain_files(root: Path, count: int = FILES) -> list[Path]:
    """`count` documents of 4-12 KiB of text, in a few folders (before mounting)."""
    paths = []
    for index in range(count):
        folder = root / f"folder{index % 10}"
        folder.mkdir(exist_ok=True)
        path = folder / f"document{index}.txt"
        words = [WORDS[(index * 7 + n * n) % len(WORDS)] for n in range(800 + index % 1600)]
        path.write_bytes(b" ".join(words))
        paths.append(path)
    return paths


def mount_with_a_first_snapshot(protected, *options: str) -> str:
    protected.mount(None, "--interval", "3600", *options)
    return protected.flush()["snapshot"]


def status_json(protected) -> dict:
    return json.loads(run_cloudfs("status", "--json", protected.source, env=protected.env).stdout)


def pinned_alert(protected, timeout: float = 30.0) -> dict:
    def pinned():
        alerts = protected.status()["alerts"]
        return alerts[0] if alerts and alerts[0]["pin_state"] == "pinned" else None

    return wait_until(pinned, timeout=timeout, interval=0.2, what="a pinned tripwire alert")


def encrypt_in_place(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "r+b") as handle:
            size = len(handle.read())
            handle.seek(0)
            handle.write(os.urandom(size))
    os.sync()     # the kernel's writeback cache hands the writes to the mount


def test_rewriting_500_files_with_random_bytes_pins_the_snapshot_before_and_alerts(protected):
    paths = plain_files(protected.source)
    port = free_port()
    clean = mount_with_a_first_snapshot(protected, "--metrics", f"127.0.0.1:{port}")
    attack_began = time.time_ns()
    encrypt_in_place([protected.source / p.relative_to(protected.source) for p in paths])

    alert = pinned_alert(protected)
    assert alert["snapshot"] == clean and alert["burst"]["rule"] == "rewrites"
    assert alert["burst"]["rewrites"] >= 100 and alert["burst"]["started_ns"] >= attack_began
    text = run_cloudfs("status", protected.source, env=protected.env).stdout
    assert f"ALERT          tripwire alert {alert['id']}: " in text and f"pinned {clean}" in text
    assert status_json(protected)["alerts"][0]["id"] == alert["id"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert "cloudfs_tripwire_alerts 1.0" in response.read().decode()
    assert "RANSOMWARE TRIPWIRE" in protected.log()

    # The encrypted state is snapshotted too; forget keeps the pinned snapshot before it.
    encrypted = run_cloudfs("snapshot", "--wait", protected.source, env=protected.env).stdout.split()[-1]
    run_cloudfs("forget", "--keep-last", "1", env=protected.env)
    listing = {row["name"]: row for row in json.loads(run_cloudfs("snapshots", "--json", env=protected.env).stdout)}
    assert set(listing) == {clean, encrypted}
    assert "rewritten with high-entropy data" in listing[clean]["pins"][0]["note"]

    # The alert survives a remount, and stays until acknowledged.
    protected.umount()
    protected.mount(None, "--interval", "3600")
    assert [a["id"] for a in protected.status()["alerts"]] == [alert["id"]]
    acknowledged = run_cloudfs("alerts", "ack", protected.source, env=protected.env).stdout
    assert acknowledged.startswith(f"acknowledged tripwire alert {alert['id']}: ") and acknowledged.count("\n") == 1
    assert protected.status()["alerts"] == []
    again = run_cloudfs("alerts", "ack", protected.source, check=False, env=protected.env)
    assert again.returncode == 1 and again.stderr == "cloudfs: error: no open tripwire alert to acknowledge\n"
    listed = json.loads(run_cloudfs("alerts", "list", "--json", protected.source, env=protected.env).stdout)
    assert listed["alerts"][0]["acknowledged_ns"] is not None


def test_renaming_500_files_to_locked_fires_and_ack_works_unmounted(protected):
    paths = plain_files(protected.source)
    clean = mount_with_a_first_snapshot(protected)
    for path in paths:
        os.rename(path, path.with_name(path.name + ".locked"))
    alert = pinned_alert(protected)
    assert alert["snapshot"] == clean and alert["burst"]["rule"] == "renames"
    assert alert["burst"]["extension"] == "locked" and alert["burst"]["renames"] == FILES
    protected.umount()
    listed = run_cloudfs("alerts", "list", "--state-dir", protected.state_dir, env=protected.env).stdout
    assert f"{FILES} files renamed to .locked" in listed
    acknowledged = run_cloudfs("alerts", "ack", "--state-dir", protected.state_dir, env=protected.env).stdout
    assert acknowledged.startswith(f"acknowledged tripwire alert {alert['id']}")


def test_with_the_store_down_the_alert_waits_and_the_pin_follows(protected):
    paths = plain_files(protected.source, 200)
    target = int(protected.endpoint.rsplit(":", 1)[1])
    with FaultyProxy(target) as proxy:
        clean = mount_with_a_first_snapshot(protected, "--endpoint-url", proxy.endpoint, "--retries", "1")
        proxy.add_faults(*["503"] * 100_000)
        proxy.drop_connections()
        encrypt_in_place(paths)
        alerts = wait_until(lambda: protected.status()["alerts"], timeout=30, what="the alert")
        time.sleep(2)
        assert protected.status()["alerts"][0]["pin_state"] == "pending"
        assert "pinning the snapshot before it" in run_cloudfs("status", protected.source, env=protected.env).stdout
        with proxy._lock:
            proxy.plan.clear()                       # the store answers again
        alert = pinned_alert(protected, timeout=60)
        assert alert["id"] == alerts[0]["id"] and alert["snapshot"] == clean


def test_thresholds_that_make_no_sense_are_refused_before_mounting(tmp_path):
    (tmp_path / "source").mkdir()
    for options, message in ((["--tripwire-files", "1"], "tripwire_files must be at least 2"),
                             (["--tripwire-entropy", "9"], "tripwire_entropy must be between 0 and 8 bits per byte")):
        result = run_cloudfs("mount", "--state-dir", tmp_path / "state", *options, tmp_path / "source", check=False)
        assert result.returncode == 2 and result.stderr == f"cloudfs: error: {message}\n"
    assert not (tmp_path / "state" / "alerts.json").exists()


def test_the_configuration_file_sets_the_thresholds_and_a_mount_without_repository_alerts(live, tmp_path):
    paths = plain_files(live.source, 7)
    config = tmp_path / "config.toml"
    config.write_text(f'tripwire_window = "2min"\n[directories.docs]\nsource = "{live.source}"\n'
                      'tripwire_files = 7\n')
    live.mount(None, "--config", config)
    assert control.request(live.state_dir, "status")["tripwire"] == {"files": 7, "window": 120.0, "entropy": 7.5}
    for path in paths:
        os.rename(path, path.with_name(path.stem + ".enc"))
    alert = wait_until(lambda: control.request(live.state_dir, "status")["alerts"], what="the alert")[0]
    assert alert["pin_state"] == "no repository" and alert["burst"]["extension"] == "enc"
    assert "nothing pinned: no repository" in run_cloudfs("status", live.source).stdout
    live.umount()
    config.write_text(f'[directories.docs]\nsource = "{live.source}"\ntripwire = false\n')
    live.mount(None, "--config", config)
    assert control.request(live.state_dir, "status")["tripwire"] is None
    shown = run_cloudfs("status", live.source).stdout
    assert "tripwire       off" in shown and "ALERT" in shown      # the open alert stays until acknowledged


def test_with_object_lock_the_locks_of_the_pinned_snapshot_are_extended(tmp_path, moto_env):
    from cloudfs.repo.config import ObjectLock

    tree = new_protected(tmp_path, moto_env, bucket=moto_env.new_bucket(object_lock=True),
                         object_lock=ObjectLock("governance", 1))
    try:
        paths = plain_files(tree.source, 120)
        clean = mount_with_a_first_snapshot(tree)
        attack_began = time.time()
        encrypt_in_place(paths)
        alert = pinned_alert(tree)
        assert alert["snapshot"] == clean
        locked = wait_until(lambda: tree.status()["alerts"][0]["locks"], what="the locks extended")
        assert locked.endswith("objects locked until at least " + time.strftime(
            "%Y-%m-%d", time.gmtime(attack_began + 86400))), locked
        retention = trio.run(tree.store().retention, clean)
        assert retention.until.timestamp() >= attack_began + 86400 - 5
    finally:
        tree.cleanup()


@pytest.mark.slow
def test_a_2_gib_high_entropy_file_copied_in_does_not_fire(protected, tmp_path):
    paths = plain_files(protected.source, 20)
    mount_with_a_first_snapshot(protected, "--tripwire-files", "2")     # the lowest threshold
    encrypt_in_place(paths[:1])                      # one real rewrite: one more file would fire
    block = os.urandom(8 << 20)
    with open(protected.source / "disk.img", "wb") as handle:
        for index in range(256):                     # 2 GiB; every sample random
            handle.write(block[index:] + block[:index])
    os.sync()
    assert (protected.source / "disk.img").stat().st_size == 2 << 30
    assert protected.status()["alerts"] == []
    encrypt_in_place(paths[1:2])                     # the tripwire was armed all along
    assert pinned_alert(protected)["burst"]["rewrites"] == 2


@pytest.mark.slow
def test_untar_git_clone_and_sqlite_do_not_fire(protected, tmp_path):
    database = protected.source / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("create table items (id integer primary key, name text, payload blob)")
    paths = plain_files(protected.source, 10)
    mount_with_a_first_snapshot(protected, "--tripwire-files", "10")   # a tenth of the default

    stdlib = Path(os.__file__).parent
    tarball = tmp_path / "stdlib.tar"
    with tarfile.open(tarball, "w") as archive:
        for part in ("json", "email", "asyncio", "unittest", "xml", "http", "logging", "concurrent"):
            archive.add(stdlib / part, arcname=f"stdlib/{part}")
    subprocess.run(["tar", "-xf", tarball, "-C", protected.source], check=True, timeout=60)

    bare = tmp_path / "main.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", "/work/main", bare], check=True, timeout=60)
    subprocess.run(["git", "clone", "--quiet", "--no-local", bare, protected.source / "clone"],
                   check=True, timeout=60)

    with sqlite3.connect(database) as connection:
        for index in range(1000):                    # a transaction each, random payloads
            connection.execute("insert or replace into items values (?, ?, ?)",
                               (index % 300, f"item {index}", os.urandom(2000)))
            connection.commit()
    os.sync()
    assert (protected.source / "clone" / "README.md").exists()
    assert protected.status()["alerts"] == []
    assert protected.status()["tripwire"] == {"files": 10, "window": 60.0, "entropy": 7.5}
    for path in paths:                               # the tripwire was armed all along
        os.rename(path, path.with_name(path.name + ".crypt"))
    assert pinned_alert(protected)["burst"]["extension"] == "crypt"
