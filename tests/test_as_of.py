"""AsOfStore on moto's versioned buckets: each name reads as it was at the moment,
later versions and later delete markers ignored; memory bounded by an LRU of folders."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
import trio

from cloudfs.errors import ObjectNotFound, UsageError
from cloudfs.store.asof import AsOfStore, folder_of
from tests.repo_helpers import s3_store

pytestmark = pytest.mark.timeout(60)


def past_and_present(moto_env, bucket):
    """Objects as they were, a moment, then overwrites, deletes and additions after it.
    S3 keeps times in whole seconds, so the moment has a second on each side."""
    store = s3_store(moto_env, bucket)

    async def write(names_and_data, delete=()):
        for name, data in names_and_data.items():
            await store.put(name, data)
        for name in delete:
            await store.delete(name)

    trio.run(write, {"config": b"old config", "chunks/ab/ab1": b"chunk one", "chunks/ab/ab2": b"chunk two",
                     "chunks/cd/cd1": b"chunk three", "snapshots/s1": b"first snapshot"})
    time.sleep(1.1)
    moment = datetime.now(timezone.utc)
    time.sleep(1.1)
    trio.run(write, {"config": b"vandalised", "chunks/ab/ab1": b"garbage", "snapshots/s2": b"later"},
             ["chunks/ab/ab2", "snapshots/s1", "chunks/cd/cd1"])
    return store, moment


def test_every_name_reads_as_it_was_at_the_moment(moto_env, locked_bucket):
    store, moment = past_and_present(moto_env, locked_bucket)
    then = AsOfStore(store, moment)

    async def run():
        assert [(i.name, i.size) for i in await then.list("chunks/")] == [
            ("chunks/ab/ab1", 9), ("chunks/ab/ab2", 9), ("chunks/cd/cd1", 11)]
        assert [i.name for i in await then.list("snapshots/")] == ["snapshots/s1"]
        assert await then.get("config") == b"old config"
        assert await then.get("chunks/ab/ab1", 6, 3) == b"one"
        assert await then.get("snapshots/s1") == b"first snapshot"
        assert (await then.head("chunks/cd/cd1")).size == 11
        assert not await then.exists("snapshots/s2")
        with pytest.raises(ObjectNotFound, match="did not exist"):
            await then.get("snapshots/s2")
        with pytest.raises(UsageError, match="read-only"):
            await then.put("snapshots/s3", b"x")
        with pytest.raises(UsageError, match="read-only"):
            await then.delete("config")
        assert [i.name for i in await store.list("snapshots/")] == ["snapshots/s2"]   # the present

    trio.run(run)


def test_a_bounded_memory_of_folders_still_reads_everything(moto_env, locked_bucket):
    store, moment = past_and_present(moto_env, locked_bucket)
    then = AsOfStore(store, moment, max_names=1)

    async def run():
        for _ in range(2):
            for name, data in [("chunks/ab/ab2", b"chunk two"), ("chunks/cd/cd1", b"chunk three"),
                               ("config", b"old config"), ("chunks/ab/ab1", b"chunk one")]:
                assert await then.get(name) == data
        assert then._names <= 2

    trio.run(run)


def test_folders():
    assert folder_of("chunks/ab/abcd") == "chunks/ab/"
    assert folder_of("config") == "config"
    assert folder_of("pins/2026-11-26T054000.000000Z-0a1b2c3d/77") == "pins/2026-11-26T054000.000000Z-0a1b2c3d/"


def test_a_store_without_versions_says_so(tmp_path):
    from cloudfs.store import LocalStore

    then = AsOfStore(LocalStore(tmp_path), datetime.now(timezone.utc))
    with pytest.raises(UsageError, match="keeps no object versions"):
        trio.run(then.get, "config")
