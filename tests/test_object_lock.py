"""S3 Object Lock on moto's server: init checks the bucket, every put is locked, and
`locks extend` keeps exactly what the snapshots need locked (I10), with the clock
injected so that days pass in a second."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import trio

from cloudfs.errors import UsageError
from cloudfs.repo import BlobKind, RepoConfig, Repository, Snapshot
from cloudfs.repo.chunk import chunk_name
from cloudfs.repo.config import CONFIG_NAME, ObjectLock
from cloudfs.snapshot.locks import extend_locks
from cloudfs.snapshot.tree import Entry, encode_directory
from cloudfs.store import LocalStore
from cloudfs.store.versions import first_version, versions_by_name
from tests.cli_helpers import cloudfs, one_line_error
from tests.repo_helpers import PASSPHRASE, fast_kdf, s3_store

pytestmark = pytest.mark.timeout(120)

FAST = ("--kdf-time", "0.01")
SECONDS = timedelta(seconds=30)      # how far apart two "now"s of one test may be


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def cli_env(server, bucket: str, tmp_path) -> dict:
    env = server.env()
    env.update(CLOUDFS_REPO=f"s3://{bucket}/repo", CLOUDFS_PASSWORD=PASSPHRASE.decode(),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("CLOUDFS_PASSWORD_FILE", None)
    return env


def locked_repo(server, bucket: str, mode: str = "governance", days: int = 3) -> Repository:
    config = RepoConfig(object_lock=ObjectLock(mode, days))
    return trio.run(lambda: Repository.init(s3_store(server, bucket), PASSPHRASE, config=config,
                                            kdf=fast_kdf(), use_cache=False))


def first_versions(store) -> dict[str, str]:
    """name -> the version id of its first version, for every object of the store."""
    async def run():
        return {name: first_version(versions).version_id
                async for name, versions in versions_by_name(store, "")}
    return trio.run(run)


def retentions(store) -> dict:
    """name -> the retention of its first version."""
    versions = first_versions(store)

    async def run():
        return {name: await store.retention(name, version) for name, version in versions.items()}
    return trio.run(run)


# -- init ------------------------------------------------------------------------------------


def test_init_refuses_a_bucket_without_object_lock(moto_server, tmp_path):
    plain = moto_server.new_bucket()
    env = cli_env(moto_server, plain, tmp_path)
    line = one_line_error(cloudfs("init", *FAST, "--object-lock", "7", env=env))
    assert "does not have Object Lock enabled" in line and repr(plain) in line
    assert cloudfs("snapshots", env=env).returncode != 0          # nothing was created

    env["CLOUDFS_REPO"] = str(tmp_path / "local")
    assert "cannot lock objects" in one_line_error(cloudfs("init", *FAST, "--object-lock", "7", env=env))
    assert "at least 1" in one_line_error(cloudfs("init", *FAST, "--object-lock", "0", env=env))


def test_init_creates_a_bucket_with_object_lock(moto_server, tmp_path):
    env = cli_env(moto_server, "t-made-with-lock", tmp_path)
    result = cloudfs("init", *FAST, "--create-bucket", "--object-lock", "5", "--lock-mode", "compliance", env=env)
    assert result.returncode == 0, result.stderr
    assert "locked for 5 days (compliance mode)" in result.stdout
    client = moto_server.client()
    assert client.get_bucket_versioning(Bucket="t-made-with-lock")["Status"] == "Enabled"


def test_every_object_is_written_locked_and_the_config_says_so(moto_env, locked_bucket):
    repo = locked_repo(moto_env, locked_bucket, "compliance", days=2)
    written = utc_now()

    async def write():
        data = await repo.put_blob(BlobKind.DATA, b"x" * 5000)
        tree = await repo.put_blob(BlobKind.TREE, encode_directory([file_entry(b"x", data, 5000)]))
        await repo.save_snapshot(Snapshot(tree=tree))
        await repo.add_key(b"second passphrase", kdf=fast_kdf())

    trio.run(write)
    found = retentions(s3_store(moto_env, locked_bucket))
    assert {name.split("/")[0] for name in found} == {"config", "keys", "chunks", "index", "snapshots"}
    for name, retention in found.items():
        assert retention.mode == "compliance", name
        assert abs(retention.until - (written + timedelta(days=2))) < SECONDS, name

    reopened = trio.run(lambda: Repository.open(s3_store(moto_env, locked_bucket), PASSPHRASE, use_cache=False))
    assert reopened.config.object_lock == ObjectLock("compliance", 2)


def test_a_config_without_object_lock_stores_no_such_key_and_unknown_keys_are_ignored():
    from cloudfs import crypto
    from cloudfs.repo.format import Kind, open_object, seal_object

    master = crypto.MasterKey.generate()
    assert "object_lock" not in open_object(Kind.CONFIG, master.config_key, CONFIG_NAME,
                                            RepoConfig().seal(master))
    newer = {**open_object(Kind.CONFIG, master.config_key, CONFIG_NAME, RepoConfig().seal(master)),
             "written_by_a_newer_cloudfs": 1}
    sealed = seal_object(Kind.CONFIG, master.config_key, CONFIG_NAME, newer)
    assert RepoConfig.open(master, sealed).object_lock is None


# -- locks follow references -------------------------------------------------------------------


def file_entry(name: bytes, block: bytes, size: int) -> Entry:
    return Entry(name=name, mode=0o100644, size=size, blocks=[block])


def test_lock_extension_keeps_what_snapshots_need_and_lets_the_rest_run_out(moto_env, locked_bucket):
    repo = locked_repo(moto_env, locked_bucket, days=3)
    written = utc_now()

    async def history():
        shared = await repo.put_blob(BlobKind.DATA, b"shared" * 1000)
        first_tree = await repo.put_blob(BlobKind.TREE, encode_directory([file_entry(b"a", shared, 6000)]))
        first = await repo.save_snapshot(Snapshot(tree=first_tree))
        orphan = await repo.put_blob(BlobKind.DATA, b"an upload no snapshot refers to")
        await repo.flush()
        added = await repo.put_blob(BlobKind.DATA, b"added" * 1000)
        second_tree = await repo.put_blob(BlobKind.TREE, encode_directory(
            [file_entry(b"a", shared, 6000), file_entry(b"b", added, 5000)]))
        await repo.save_snapshot(Snapshot(tree=second_tree, parent=first.name))
        return [chunk_name(repo.index.get(blob).chunk_id) for blob in (shared, orphan, added)]

    shared_chunk, orphan_chunk, added_chunk = trio.run(history)
    assert len({shared_chunk, orphan_chunk, added_chunk}) == 3
    store = s3_store(moto_env, locked_bucket)
    orphan_index, = [name for name in first_versions(store) if name.startswith("index/")
                     and chunk_name(trio.run(repo.index_object, name)[0].chunk_id) == orphan_chunk]

    later = written + timedelta(days=2, hours=12)     # every lock runs out within a day of this
    kept = trio.run(lambda: extend_locks(repo, now=later, margin=timedelta(days=1)))
    assert kept.snapshots == 2 and not kept.unreadable and kept.reachable.missing_blobs == 0
    assert not kept.locks.missing and not kept.locks.overwritten

    found = retentions(store)
    extended = {name for name, retention in found.items()
                if abs(retention.until - (later + timedelta(days=3))) < SECONDS}
    untouched = {name for name, retention in found.items()
                 if abs(retention.until - (written + timedelta(days=3))) < SECONDS}
    assert extended | untouched == set(found)
    assert orphan_chunk in untouched and {shared_chunk, added_chunk} <= extended
    assert {n for n in found if not n.startswith(("chunks/", "index/"))} <= extended
    indexes = sorted(n for n in found if n.startswith("index/"))
    assert len(indexes) == 3 and len([n for n in indexes if n in extended]) == 2
    assert kept.locks.extended == len(extended) == kept.locks.checked
    assert orphan_index in untouched

    again = trio.run(lambda: extend_locks(repo, now=later, margin=timedelta(days=1)))
    assert again.locks.extended == 0 and again.locks.checked == kept.locks.checked


def test_lock_extension_locks_the_first_version_of_an_overwritten_object(moto_env, locked_bucket):
    repo = locked_repo(moto_env, locked_bucket, days=3)

    async def one_snapshot():
        tree = await repo.put_blob(BlobKind.TREE, encode_directory([]))
        return await repo.save_snapshot(Snapshot(tree=tree))

    snapshot = trio.run(one_snapshot)
    store = s3_store(moto_env, locked_bucket)
    genuine = first_versions(store)[snapshot.name]
    moto_env.client().put_object(Bucket=locked_bucket, Key=f"repo/{snapshot.name}", Body=b"vandalised")

    later = utc_now() + timedelta(days=2, hours=12)
    kept = trio.run(lambda: extend_locks(repo, now=later, margin=timedelta(days=1)))
    assert kept.locks.overwritten == [snapshot.name]
    assert any(snapshot.name in problem for problem in kept.unreadable)
    retention = trio.run(lambda: store.retention(snapshot.name, genuine))
    assert abs(retention.until - (later + timedelta(days=3))) < SECONDS


def test_a_repository_without_object_lock_has_no_locks_to_extend(tmp_path):
    async def run():
        repo = await Repository.init(LocalStore(tmp_path / "repo"), PASSPHRASE, kdf=fast_kdf(),
                                     create_container=True, use_cache=False)
        await extend_locks(repo)

    with pytest.raises(UsageError, match="without --object-lock"):
        trio.run(run)


def test_locks_extend_on_the_command_line(moto_server, locked_bucket, tmp_path):
    env = cli_env(moto_server, locked_bucket, tmp_path)
    assert cloudfs("init", *FAST, "--object-lock", "3", env=env).returncode == 0
    fresh = cloudfs("locks", "extend", env=env)
    assert fresh.returncode == 0, fresh.stderr
    assert "0 snapshots need 2 objects; extended 0 locks" in fresh.stdout
    forced = cloudfs("locks", "extend", "--margin", "4", env=env)
    assert "extended 2 locks" in forced.stdout, forced.stdout
