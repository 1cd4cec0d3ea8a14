"""A repository kept on two targets: two `rclone serve s3` servers, each with its own directory.

Driven as a user does: `cloudfs targets add`, mounts, `cloudfs restore --target`,
with one target stopped (the proxy of tests/faults.py in front of it, so it can
come back on another port) or refusing, missing, corrupting.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cloudfs import locals3
from tests.faults import FaultyProxy
from tests.live_fixtures import run_cloudfs
from tests.snapshot_fixtures import new_protected, wait_until
from tests.tree_helpers import capture_directory, diff

pytestmark = pytest.mark.timeout(300)


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


class SecondTarget:
    """A bucket on the second rclone server; with `stoppable`, on a server of its own
    reached through a proxy, so that it can stop and come back (on another port,
    which the proxy follows)."""

    def __init__(self, shared, base: Path, stoppable: bool = False):
        self.servers = [locals3.start_rclone(base / "second-s3")] if stoppable else [shared]
        self.stoppable = stoppable
        self.data_dir = self.servers[0].data_dir
        self.proxy = FaultyProxy(_port(self.servers[0].endpoint)) if stoppable else None
        self.bucket = self.servers[0].new_bucket()

    @property
    def location(self) -> str:
        port = self.proxy.port if self.proxy else _port(self.servers[0].endpoint)
        return f"s3+http://127.0.0.1:{port}/{self.bucket}/repo"

    def objects(self) -> dict[str, int]:
        root = self.data_dir / self.bucket / "repo"
        return {str(path.relative_to(root)): path.stat().st_size for path in root.rglob("*") if path.is_file()}

    def stop(self) -> None:
        locals3.stop(self.servers[-1].proc)

    def restart(self) -> None:
        self.servers.append(locals3.start_rclone(self.data_dir))
        self.proxy.target_port = _port(self.servers[-1].endpoint)

    def close(self) -> None:
        if self.stoppable:
            self.proxy.close()
            for server in self.servers:
                locals3.stop(server.proc)


def _two_targets(tmp_path, first, second_server, stoppable: bool):
    tree = new_protected(tmp_path / "tree", first)
    second = SecondTarget(second_server, tmp_path, stoppable)
    try:
        yield tree, second
    finally:
        tree.cleanup()
        second.close()
        log = tree.log()
        if "Traceback" in log or "ERROR" in log:
            print(f"--- mount.log ---\n{log}")


@pytest.fixture
def two_targets(tmp_path, s3_env, second_s3_server):
    """A protected tree whose repository is on the session's server, and a bucket on the second."""
    yield from _two_targets(tmp_path, s3_env, second_s3_server, stoppable=False)


@pytest.fixture
def stoppable_second(tmp_path, s3_env):
    """The same, with the second target on a server that the test may stop."""
    yield from _two_targets(tmp_path, s3_env, None, stoppable=True)


def fill(source: Path, count: int = 20, size: int = 200_000) -> None:
    for index in range(count):
        (source / f"file-{index}").write_bytes(os.urandom(size))


def add_target(tree, second, *options: str):
    return run_cloudfs("targets", "add", "second", second.location, "--no-progress", *options,
                       env=tree.env, check=False)


def restore_alone(tree, target: str, destination: Path) -> None:
    run_cloudfs("restore", "--target", target, "latest", destination, env=tree.env, timeout=300)
    expected = capture_directory(tree.source)
    differences = diff(expected, capture_directory(destination))
    assert not differences, "\n".join(differences[:20])


def test_a_target_added_holds_everything_and_restores_alone(two_targets, tmp_path):
    tree, second = two_targets
    fill(tree.source)
    tree.mount(None, "--interval", "3600")
    tree.flush()
    tree.umount()
    added = add_target(tree, second)
    assert added.returncode == 0, added.stderr
    assert "target second added" in added.stdout
    assert set(second.objects()) == set(tree.stored_objects())      # targets/ records included
    listed = json.loads(run_cloudfs("targets", "list", "--json", env=tree.env).stdout)
    assert [row["name"] for row in listed] == ["primary", "second"]
    again = add_target(tree, second)                                 # already there: refused
    assert again.returncode == 2 and "already has a target" in again.stderr
    restore_alone(tree, "second", tmp_path / "from-second")
    restore_alone(tree, "primary", tmp_path / "from-primary")


def second_status(tree) -> dict:
    return next(t for t in tree.status()["targets"] if t["name"] == "second")


def test_a_stopped_target_lags_then_catches_up_also_across_a_remount(stoppable_second, tmp_path):
    tree, second = stoppable_second
    fill(tree.source, count=5)
    assert add_target(tree, second).returncode == 0
    tree.mount(None, "--interval", "3600", "--required-targets", "1")
    second.stop()
    fill(tree.source, count=10)
    tree.seal()
    tree.flush(timeout=60)                                  # K=1: committed on primary alone
    wait_until(lambda: second_status(tree)["state"] == "down", timeout=90, what="the second target down")
    lagging = second_status(tree)
    assert lagging["backlog_objects"] > 0 and lagging["backlog_bytes"] > 1_000_000
    shown = run_cloudfs("status", tree.source, env=tree.env).stdout
    assert "second" in shown and "backlog" in shown
    tree.umount()                                           # the backlog waits on disk
    (tree.source / "while-unmounted").write_bytes(os.urandom(300_000))
    tree.mount(None, "--interval", "3600", "--required-targets", "1")
    tree.flush(timeout=60)
    assert second_status(tree)["backlog_objects"] > lagging["backlog_objects"]     # kept, and more
    second.restart()
    wait_until(lambda: second_status(tree)["state"] == "ok", timeout=120, what="the second target level")
    tree.umount()
    assert set(second.objects()) == set(tree.stored_objects())
    restore_alone(tree, "second", tmp_path / "from-second")


def test_with_k_of_n_at_two_a_snapshot_waits_for_the_stopped_target(stoppable_second):
    tree, second = stoppable_second
    fill(tree.source, count=3)
    assert add_target(tree, second).returncode == 0
    tree.mount(None, "--interval", "3600")                  # K = N = 2
    tree.flush()                                            # the first snapshot, on both
    second.stop()
    (tree.source / "new").write_bytes(os.urandom(500_000))
    started = time.perf_counter()
    with open(tree.source / "written-meanwhile", "wb") as handle:
        handle.write(os.urandom(1 << 20))
        os.fsync(handle.fileno())
    assert time.perf_counter() - started < 1.0              # writes never wait (I6)
    tree.request("snapshot", wait=False)
    wait_until(lambda: tree.status().get("waiting_for_targets"), timeout=60, what="the snapshot waiting")
    wait_until(lambda: (tree.status()["upload"]["store_error"] or "").startswith("waiting for targets: second"),
               timeout=60, what="status naming the target it waits for")   # once its retries gave up
    assert tree.status()["oldest_change_ns"]
    second.restart()
    tree.flush(timeout=120)
    assert tree.status().get("waiting_for_targets") is None
    tree.umount()
    assert set(second.objects()) == set(tree.stored_objects())


# -- bad input --------------------------------------------------------------------------------


def test_a_target_that_refuses_the_credentials_or_lacks_its_bucket_is_not_added(two_targets, tmp_path):
    tree, second = two_targets
    wrong = tmp_path / "wrong-credentials"
    wrong.write_text("[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing-at-all\n")
    refused = add_target(tree, second, "--target-credentials-file", wrong)
    assert refused.returncode == 1 and "access denied" in refused.stderr.splitlines()[-1]
    missing = run_cloudfs("targets", "add", "second", second.location.replace(second.bucket, "no-such-bucket"),
                          "--no-progress", env=tree.env, check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr.splitlines()[-1]
    listed = run_cloudfs("targets", "list", env=tree.env).stdout
    assert "no targets recorded" in listed


def test_k_larger_than_n_and_removing_the_last_target_are_refused(two_targets):
    tree, second = two_targets
    assert add_target(tree, second).returncode == 0
    too_many = run_cloudfs("mount", "--daemon", "--state-dir", tree.state_dir, "--required-targets", "3",
                           tree.source, env=tree.env, check=False)
    assert too_many.returncode == 2 and "more than the repository's 2" in too_many.stderr
    removed = run_cloudfs("targets", "remove", "second", env=tree.env)
    assert "target second removed" in removed.stdout
    last = run_cloudfs("targets", "remove", "primary", env=tree.env, check=False)
    assert last.returncode == 2 and "last target" in last.stderr
    assert "second" not in run_cloudfs("targets", "list", env=tree.env).stdout


def corrupt_a_chunk(objects: dict[str, int], root: Path) -> str:
    """Flip bytes in the middle of the largest chunk; return its name."""
    name = max((n for n in objects if n.startswith("chunks/")), key=objects.get)
    with open(root / name, "r+b") as handle:
        handle.seek(objects[name] // 2)
        data = handle.read(64)
        handle.seek(objects[name] // 2)
        handle.write(bytes(b ^ 0xFF for b in data))
    return name


def backed_up_on_both(tree, second) -> None:
    """A few megabytes in one snapshot, then the second target added."""
    fill(tree.source, count=4, size=1_000_000)
    tree.mount(None, "--interval", "3600")
    tree.flush()
    tree.umount()
    assert add_target(tree, second).returncode == 0


def test_a_target_returning_corrupted_bytes_is_read_around(two_targets, tmp_path):
    tree, second = two_targets
    backed_up_on_both(tree, second)
    corrupt_a_chunk(tree.stored_objects(), tree.data_dir / tree.bucket / "repo")   # primary, asked first
    run_cloudfs("restore", "latest", tmp_path / "restored", env=tree.env, timeout=300)
    assert not diff(capture_directory(tree.source), capture_directory(tmp_path / "restored"))
    alone = run_cloudfs("restore", "--target", "primary", "latest", tmp_path / "damaged", env=tree.env,
                        check=False, timeout=300)
    assert alone.returncode == 1 and "damaged" in alone.stdout + alone.stderr


def test_a_target_added_while_a_mount_uploads_gets_everything(two_targets):
    tree, second = two_targets
    fill(tree.source, count=2)
    tree.mount(None, "--interval", "3600", "--bandwidth-limit", "4M")
    tree.flush()
    fill(tree.source, count=16, size=1_000_000)             # about four seconds of uploading
    tree.request("snapshot", wait=False)
    wait_until(lambda: tree.status()["upload"]["uploading"], what="the upload")
    assert add_target(tree, second).returncode == 0
    tree.flush(timeout=120)
    (tree.source / "after").write_bytes(os.urandom(100_000))
    tree.request("snapshot", wait=True)                     # the mount learns of the target
    wait_until(lambda: all(t["state"] == "ok" for t in tree.status()["targets"]), timeout=120,
               what="both targets level")
    tree.umount()
    assert set(second.objects()) == set(tree.stored_objects())


# -- check and repair per target ----------------------------------------------------------------


def test_a_chunk_corrupted_in_one_target_is_found_by_check_and_healed_by_repair(two_targets, tmp_path):
    tree, second = two_targets
    backed_up_on_both(tree, second)
    damaged = corrupt_a_chunk(tree.stored_objects(), tree.data_dir / tree.bucket / "repo")
    found = run_cloudfs("check", "--read-data", env=tree.env, check=False, timeout=300)
    assert found.returncode == 1
    assert f"primary: error: {damaged}" in found.stdout and "second: checked" in found.stdout
    assert "primary: damaged: " in found.stdout and "/file-" in found.stdout      # the paths it hurts
    healed = run_cloudfs("repair", env=tree.env, check=False, timeout=300)
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert f"primary: {damaged}: healed" in healed.stdout
    again = run_cloudfs("check", "--read-data", env=tree.env, check=False, timeout=300)
    assert again.returncode == 0, again.stdout
    restore_alone(tree, "primary", tmp_path / "from-primary")


def test_forget_and_prune_reclaim_space_on_every_target(two_targets, tmp_path):
    tree, second = two_targets
    fill(tree.source, count=10, size=300_000)
    assert add_target(tree, second).returncode == 0
    tree.mount(None, "--interval", "3600")
    tree.flush()
    for index in range(10):
        (tree.source / f"file-{index}").unlink()
    (tree.source / "kept").write_bytes(os.urandom(100_000))
    tree.seal()
    tree.flush()
    tree.umount()
    run_cloudfs("forget", "--keep-last", "1", env=tree.env)
    for _ in range(2):                                  # the first marks, the second deletes
        run_cloudfs("prune", "--grace", "0", env=tree.env, timeout=300)
    primary, copy = set(tree.stored_objects()), set(second.objects())
    assert copy == primary
    assert sum(size for name, size in tree.stored_objects().items() if name.startswith("chunks/")) < 1_000_000
    for target in ("primary", "second"):
        checked = run_cloudfs("check", "--read-data", "--target", target, env=tree.env, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    restore_alone(tree, "second", tmp_path / "from-second")


def test_three_checks_of_a_third_read_every_chunk(tmp_path, s3_env):
    # A chunk's third is its random id modulo 3: with 13 chunks one third came out
    # empty about once in 70 runs; with ~55, about once in two billion.
    tree = new_protected(tmp_path / "tree", s3_env, chunk_size=128 << 10)
    try:
        fill(tree.source, count=24, size=300_000)
        tree.mount(None, "--interval", "3600")
        tree.flush()
        tree.umount()
        env = dict(tree.env, XDG_STATE_HOME=str(tmp_path / "state-home"))
        runs = [json.loads(run_cloudfs("check", "--read-data-subset", "1/3", "--json", env=env).stdout)
                for _ in range(3)]
    finally:
        tree.cleanup()
    chunks = {name for name in tree.stored_objects() if name.startswith("chunks/")}
    read = [set(run["chunks_read"]) for run in runs]
    assert len(chunks) >= 6 and all(read)
    assert read[0] | read[1] | read[2] == chunks
    assert not (read[0] & read[1]) and not (read[1] & read[2])
