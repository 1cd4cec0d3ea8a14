"""Faults while snapshots are taken: kill -9 at each stage, a store that goes away, cut
connections, a full spool.

After each kill the tree is mounted again, as a user would: the next snapshot
must hold everything on disk (so every byte a writer fsynced), every snapshot
committed before must still equal the tree at its seal, and `cloudfs check
--read-data` must find nothing that a snapshot references missing or damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cloudfs import locals3
from tests.faults import FaultyProxy
from tests.live_fixtures import run_cloudfs
from tests.snapshot_fixtures import (  # noqa: F401 - protected is a fixture
    Protected,
    new_protected,
    protected,
    reference_copy,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

# Writes scattered blocks and whole small files. Before each write it prints what it
# is about to write ("W path offset length sha256"), after each fsync "D": so the
# test knows which writes are durable and which were still to come when it died.
WRITER = textwrap.dedent("""
    import hashlib, os, random, sys
    root = sys.argv[1]
    rng = random.Random(int(sys.argv[2]))
    os.makedirs(os.path.join(root, "many"), exist_ok=True)
    big = os.open(os.path.join(root, "big"), os.O_RDWR | os.O_CREAT, 0o644)

    def intend(path, offset, data):
        print("W", path, offset, len(data), hashlib.sha256(data).hexdigest(), flush=True)

    index = 0
    while True:
        try:
            for _ in range(8):
                data, offset = os.urandom(20000), rng.randrange(0, 32) * 65536
                intend("big", offset, data)
                os.pwrite(big, data, offset)
            name = os.path.join("many", f"f{index % 100}")
            data = os.urandom(rng.randrange(1, 30000))
            intend(name, 0, data)
            with open(os.path.join(root, name), "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.fsync(big)
            print("D", flush=True)
            index += 1
        except OSError:
            break
""")


def start_writer(root: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(seed)],
                            stdout=subprocess.PIPE, text=True)


def durable_writes(writer: subprocess.Popen) -> dict[tuple[str, int], tuple[int, str]]:
    """The fsynced writes that no later write (durable or not) touched: these must
    be in the next snapshot exactly."""
    out, _ = writer.communicate(timeout=30)
    last: dict[tuple[str, int], tuple[int, str, bool]] = {}
    batch = []
    for line in out.splitlines():
        if line == "D":
            for key, value in batch:
                last[key] = (*value, True)
            batch = []
            continue
        _, path, offset, length, digest = line.split()
        batch.append(((path, int(offset)), (int(length), digest)))
    for key, value in batch:
        last[key] = (*value, False)  # still to come, or in flight, when it died
    return {key: (length, digest) for key, (length, digest, durable) in last.items() if durable}


def assert_durable_writes_in_latest(protected: Protected, durable: dict) -> None:
    import trio

    from cloudfs.snapshot.reader import TreeReader

    repo = protected.repository()
    latest = protected.snapshots(repo)[-1]
    reader = TreeReader(repo)

    async def read(path: str, offset: int, length: int) -> bytes:
        entry = await reader.lookup(latest.tree, path.encode())
        return await reader.read(entry, offset, length)

    for (path, offset), (length, digest) in durable.items():
        data = trio.run(read, path, offset, length)
        assert hashlib.sha256(data).hexdigest() == digest, f"{path}@{offset}: fsynced data lost"
    assert durable


def recover_and_verify(protected: Protected, mountpoint: Path | None, *options: str) -> None:
    """Mount again, let the next snapshot commit, and check everything."""
    remount_and_compare(protected, mountpoint, *options)
    check_every_byte(protected)


def remount_and_compare(protected: Protected, mountpoint: Path | None, *options: str) -> None:
    """Mount again, let the next snapshot commit, compare every snapshot, unmount."""
    protected.mount(mountpoint, "--interval", "3600", *options)
    protected.flush()
    protected.assert_latest_matches()
    protected.assert_snapshots_match_references()
    protected.umount(mountpoint)


def check_every_byte(protected: Protected) -> None:
    result = protected.check("--read-data")
    assert result.returncode == 0, result.stdout + result.stderr


def prepare(protected: Protected, tmp_path: Path, *options: str) -> Path:
    (protected.source / "big").write_bytes(os.urandom(2 << 20))
    (protected.source / "untouched").write_bytes(b"u" * 5000)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir(exist_ok=True)
    protected.mount(mountpoint, "--interval", "3600", *options)
    protected.flush()
    return mountpoint


# -- kill -9 ----------------------------------------------------------------------------------


def test_kill_9_mid_write_loses_nothing_fsynced(protected, tmp_path):
    mountpoint = prepare(protected, tmp_path)
    protected.seal()                                   # one committed snapshot to keep intact
    writer = start_writer(mountpoint, 1)
    try:
        wait_until(lambda: protected.status()["pending_files"] > 20, what="writes")
        protected.kill()
        durable = durable_writes(writer)
    finally:
        writer.kill()
    recover_and_verify(protected, mountpoint)
    assert_durable_writes_in_latest(protected, durable)


# Keeps one file open and rewrites it without fsync, so the kernel's cache holds
# dirty pages that each seal must flush first.
DIRTY_WRITER = textwrap.dedent("""
    import os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    block = os.urandom(1 << 20)
    print("writing", flush=True)
    try:
        while True:
            for offset in range(0, 8 << 20, 1 << 20):
                os.pwrite(fd, block, offset)
    except OSError:
        pass
""")


def test_kill_9_mid_seal_loses_nothing(protected, tmp_path):
    """The seal's only long part is flushing the kernel's cache; its synchronous
    part (journal flip and capture) takes well under a millisecond. Kill at several
    points from the request on, each time with dirty pages to flush."""
    mountpoint = prepare(protected, tmp_path)
    for round_, delay in enumerate((0.0, 0.003, 0.015)):
        if round_:
            protected.mount(mountpoint, "--interval", "3600")
        writer = subprocess.Popen([sys.executable, "-c", DIRTY_WRITER, str(mountpoint / "dirty")],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().strip() == "writing"
            (mountpoint / f"created-{round_}").write_bytes(b"x" * 1000)
            time.sleep(0.2)
            asker = threading.Thread(target=_ask_quietly, args=(protected, "snapshot"))
            asker.start()
            time.sleep(delay)
            protected.kill()
            asker.join(30)
        finally:
            writer.kill()  # its writes into cached pages would go on (the daemon is gone)
            writer.wait(timeout=30)
        remount_and_compare(protected, mountpoint)
    check_every_byte(protected)


def _ask_quietly(protected: Protected, op: str) -> None:
    try:
        protected.request(op, timeout=30)
    except Exception:  # noqa: BLE001 - the daemon is killed under it
        pass


def test_kill_9_mid_chunk_upload_commits_nothing_partial(protected, tmp_path):
    target = int(protected.endpoint.rsplit(":", 1)[1])
    with FaultyProxy(target) as proxy:
        mountpoint = prepare(protected, tmp_path, "--endpoint-url", proxy.endpoint, "--retries", "1",
                             "--bandwidth-limit", "2M")
        protected.seal()
        protected.flush()
        with open(mountpoint / "new", "wb") as handle:
            handle.write(os.urandom(8 << 20))           # four seconds of uploading
        protected.request("snapshot", wait=False)
        wait_until(lambda: protected.status()["upload"]["uploading"], what="the upload")
        proxy.add_faults(*["stall"] * 50)               # the chunk's put is cut, its retry hangs
        proxy.drop_connections()
        wait_until(lambda: proxy.faults_injected > 0, what="a hanging upload")
        time.sleep(0.3)
        protected.kill()
        names = set(protected.stored_objects())
    assert not any(name.startswith("snapshots/") and name not in names for name in names)
    recover_and_verify(protected, mountpoint)


def test_kill_9_between_the_last_chunk_and_the_snapshot_object(protected, tmp_path):
    mountpoint = prepare(protected, tmp_path, "--bandwidth-limit", "2M")
    protected.seal()
    protected.flush()
    before = set(protected.stored_objects())
    with open(mountpoint / "new", "wb") as handle:
        handle.write(os.urandom(6 << 20))              # one chunk; its index waits 3 s behind it
    protected.request("snapshot", wait=False)
    wait_until(lambda: any(name.startswith("chunks/") for name in set(protected.stored_objects()) - before),
               what="the chunk in the store")
    protected.kill()
    added = set(protected.stored_objects()) - before
    assert not any(name.startswith(("snapshots/", "index/")) for name in added), added
    recover_and_verify(protected, mountpoint)


# -- the store --------------------------------------------------------------------------------


class StoreThatStops:
    """A protected tree whose repository is on a private rclone server, reached
    through a proxy, so that the server can be stopped and started again (on
    another port, which the proxy follows)."""

    def __init__(self, tmp_path: Path):
        self.data_dir = tmp_path / "s3-data"
        self.servers = [locals3.start_rclone(self.data_dir)]
        self.proxy = FaultyProxy(_port(self.servers[0].endpoint))
        self.servers[0].endpoint = self.proxy.endpoint
        self.tree = new_protected(tmp_path / "tree", self.servers[0])

    def stop(self) -> None:
        locals3.stop(self.servers[-1].proc)

    def restart(self) -> str:
        """Serve again; returns the server's own endpoint (the proxy's stays the same)."""
        self.servers.append(locals3.start_rclone(self.data_dir))
        self.proxy.target_port = _port(self.servers[-1].endpoint)
        return self.servers[-1].endpoint

    def close(self) -> None:
        self.tree.cleanup()
        self.proxy.close()
        for server in self.servers:
            locals3.stop(server.proc)


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.fixture
def store_that_stops(tmp_path, s3_env):
    store = StoreThatStops(tmp_path)
    try:
        yield store
    finally:
        store.close()


def test_a_mount_starts_while_the_store_is_down_and_uploads_when_it_returns(store_that_stops, tmp_path):
    tree = store_that_stops.tree
    mountpoint = prepare(tree, tmp_path, "--retries", "1")   # through the store: copies saved
    tree.umount(mountpoint)
    store_that_stops.stop()                                  # down, as at a boot without network
    mount = ["mount", "--daemon", "--state-dir", tree.state_dir, "--interval", "3600", "--retries", "1",
             tree.source, mountpoint]
    wrong = run_cloudfs(*mount, check=False, env=dict(tree.env, CLOUDFS_PASSWORD="not it"))
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr.splitlines()[-1]
    tree.mounted_at.append(mountpoint)
    started = run_cloudfs(*mount, env=tree.env)
    assert "mounting with the repository details the last mount saved" in started.stderr
    tree.pids.add(tree.daemon_pid())
    with open(mountpoint / "written-offline", "wb") as handle:
        handle.write(os.urandom(300_000))
        os.fsync(handle.fileno())
    assert not tree.status()["upload"]["store_ok"]
    # As `cloudfs snapshot` asks: queued, not waited for, if a snapshot (the startup
    # walk's) is already uploading, which it cannot while the store is down.
    reply = tree.request("snapshot", wait=False, queue=True)
    store_that_stops.restart()
    tree.flush(timeout=150)
    if reply.get("queued"):
        tree.request("snapshot", wait=True, timeout=150)
    assert tree.status()["upload"]["store_ok"]
    latest = tree.assert_latest_matches()
    assert reply.get("queued") or latest.time_ns == reply["time_ns"]


def test_a_stopped_store_slows_no_write_and_uploads_resume_when_it_returns(store_that_stops, tmp_path):
    tree = store_that_stops.tree
    mountpoint = prepare(tree, tmp_path, "--retries", "2")
    store_that_stops.stop()                                  # the store goes away
    latencies = []
    for index in range(40):
        started = time.perf_counter()
        with open(mountpoint / f"during-{index}", "wb") as handle:
            handle.write(os.urandom(50_000))
            os.fsync(handle.fileno())
        latencies.append(time.perf_counter() - started)
        if index == 10:
            tree.seal()                                      # sealed while the store is down
    wait_until(lambda: not tree.status()["upload"]["store_ok"], what="the store error")
    assert max(latencies) < 1.0, latencies
    status = json.loads(subprocess.run([sys.executable, "-m", "cloudfs", "status", "--json",
                                        str(mountpoint)], capture_output=True, text=True,
                                       env=tree.env).stdout)
    assert status["upload"]["store_error"]
    endpoint = store_that_stops.restart()                    # back, on another port
    tree.flush(timeout=120)
    assert tree.status()["upload"]["store_ok"]
    tree.seal()
    tree.flush()
    assert len(tree.assert_snapshots_match_references()) == 2
    tree.umount(mountpoint)
    tree.endpoint = endpoint
    tree.env["CLOUDFS_ENDPOINT_URL"] = endpoint
    result = tree.check("--read-data")
    assert result.returncode == 0, result.stdout + result.stderr


def test_connections_cut_mid_put_are_retried(protected, tmp_path):
    target = int(protected.endpoint.rsplit(":", 1)[1])
    with FaultyProxy(target) as proxy:
        mountpoint = prepare(protected, tmp_path, "--endpoint-url", proxy.endpoint)
        with open(mountpoint / "new", "wb") as handle:
            handle.write(os.urandom(3 << 20))
        proxy.add_faults(("cut", 200_000), ("cut", 1_000_000), ("cut", 50_000))
        proxy.drop_connections()
        protected.seal()
        protected.flush()
        assert proxy.faults_injected == 3
        protected.umount(mountpoint)
    assert len(protected.assert_snapshots_match_references()) == 1
    result = protected.check("--read-data")
    assert result.returncode == 0, result.stdout + result.stderr


# -- the spool --------------------------------------------------------------------------------


@pytest.fixture
def small_chunks(tmp_path, s3_env):
    """Chunks of 512 KiB: with a bandwidth limit, the builder waits for chunk slots
    between its reads, so a seal stays unread for seconds."""
    from tests.snapshot_fixtures import protected_tree

    yield from protected_tree(tmp_path, s3_env, chunk_size=512 << 10)


def test_a_full_spool_gives_that_snapshot_up_and_a_fresh_seal_commits(small_chunks, tmp_path):
    protected = small_chunks
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    protected.mount(mountpoint, "--interval", "3600", "--spool-size", "256K", "--bandwidth-limit", "2M")
    names = [f"new-{index}" for index in range(16)]
    for name in names:
        (mountpoint / name).write_bytes(os.urandom(512 << 10))
    given_up = protected.seal()
    started = time.perf_counter()
    for name in names:                                   # overwrite sealed, unread bytes
        with open(mountpoint / name, "r+b") as handle:
            handle.write(os.urandom(64 << 10))
            os.fsync(handle.fileno())
    assert time.perf_counter() - started < 2.0          # the full spool made no one wait
    wait_until(lambda: protected.status()["failures"] >= 1, timeout=60, what="the snapshot given up")
    status = protected.status()
    assert "spool is full" in status["last_error"] and status["spool_bytes"] == 0
    reply = protected.request("snapshot", wait=True)
    assert reply["committed"]
    assert given_up["time_ns"] not in [snapshot.time_ns for snapshot in protected.snapshots()]
    protected.references[reply["time_ns"]] = reference_copy(protected.source)
    assert len(protected.assert_snapshots_match_references()) == 1
    protected.umount(mountpoint)
