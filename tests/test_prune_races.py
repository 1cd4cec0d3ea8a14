"""Each race of docs/prune.md that can be forced deterministically, on the rclone S3 server.

The store's clock is moved by AgedStore (no sleeps); the writer is paused
between building a snapshot and putting its object by a guard that runs a
prune step first. After each race, every listed snapshot restores bit-exact
and `check` finds nothing wrong.
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import timedelta

import pytest
import trio

from cloudfs.check import check_repository
from cloudfs.errors import IntegrityError
from cloudfs.repo import RepoConfig, Repository
from cloudfs.snapshot.prune.guard import DoomGuard, ParentPruned, PrunedMeanwhile
from cloudfs.snapshot.prune.lease import PruneBusy, holding_lease
from cloudfs.snapshot.reader import TreeReader
from cloudfs.snapshot.source import DirectorySource
from cloudfs.uploader import commit_snapshot
from tests.prune_helpers import HOUR, AgedStore, open_roles, prune_once
from tests.repo_helpers import PASSPHRASE, fast_kdf, s3_store
from tests.tree_helpers import capture_directory, capture_snapshot_async, diff

pytestmark = pytest.mark.timeout(120)

CONFIG = dict(chunk_size=256 << 10, block_size=16 << 10)


class Paused(DoomGuard):
    """A writer's guard that lets `step()` happen between the build and the check."""

    def __init__(self, repo, step, check=True):
        super().__init__(repo)
        self.step, self.check = step, check

    async def before_put(self, root, parent):
        await self.step()
        if self.check:
            await super().before_put(root, parent)


@pytest.fixture
def world(s3_env, tmp_path):
    bucket = s3_env.new_bucket()
    store = AgedStore(s3_store(s3_env, bucket))
    trio.run(lambda: Repository.init(store, PASSPHRASE, config=RepoConfig(**CONFIG), kdf=fast_kdf(),
                                     use_cache=False))
    source = tmp_path / "source"
    source.mkdir()
    return store, source


async def commit(repo, source, previous=None, guard=None):
    directory = DirectorySource.at(source)
    try:
        return await commit_snapshot(repo, directory, source_path=str(source), previous=previous, guard=guard)
    finally:
        directory.close()


async def assert_intact(store, expected: dict) -> None:
    """Every snapshot in `expected` (name -> capture) restores as captured; check is clean."""
    repo = await Repository.open(store, PASSPHRASE, use_cache=False)
    listed = {snapshot.name: snapshot for snapshot in await repo.snapshots()}
    for name, capture in expected.items():
        differences = diff(capture, await capture_snapshot_async(TreeReader(repo), listed[name].tree))
        assert not differences, f"{name}: {differences[:5]}"
    report = await check_repository(repo, read_data=True)
    assert report.ok, report.errors


async def garbage_brought_back(store, writer, maintainer, source):
    """x's content goes out of every kept snapshot (forgotten, old by the store's
    clock), then comes back into the source: building it again is all dedup hits.
    Returns the snapshot that is kept (x's other content)."""
    content = os.urandom(200_000)
    (source / "x").write_bytes(content)
    first = await commit(writer, source)
    (source / "x").write_bytes(b"other")
    kept = await commit(writer, source, first)
    await maintainer.forget_snapshot(first)
    store.age()
    (source / "x").write_bytes(content)
    return kept


def test_r1_a_dedup_hit_on_a_doomed_chunk_is_stored_again_before_the_commit(world):
    store, source = world

    async def run():
        writer, maintainer = await open_roles(store)
        second = await garbage_brought_back(store, writer, maintainer, source)

        async def mark():
            report = await prune_once(maintainer)
            assert report.doom is not None and not report.swept

        guard = Paused(writer, mark)
        third = await commit(writer, source, second, guard)
        assert guard.restored > 0
        store.age()
        swept = await prune_once(maintainer)              # the doom list is ripe: sweep
        assert swept.swept and swept.swept[0].chunks and not swept.swept[0].rescued
        await assert_intact(store.inner, {third.name: capture_directory(source)})

    trio.run(run)


def test_r1_r2_a_snapshot_committed_during_the_mark_is_rescued_by_the_sweep(world):
    store, source = world

    async def run():
        writer, maintainer = await open_roles(store)
        await garbage_brought_back(store, writer, maintainer, source)

        async def mark():            # the writer checked before the doom list existed
            assert (await prune_once(maintainer)).doom is not None

        unaware = Paused(writer, mark, check=False)
        third = await commit(writer, source, None, unaware)
        store.age()
        swept = (await prune_once(maintainer)).swept[0]
        assert swept.rescued                                # the sweep saw the new snapshot
        await assert_intact(store.inner, {third.name: capture_directory(source)})

    trio.run(run)


def test_r1_a_chunk_swept_before_the_commit_makes_the_attempt_read_again(world):
    store, source = world

    async def run():
        writer, maintainer = await open_roles(store)
        await garbage_brought_back(store, writer, maintainer, source)

        async def mark_and_sweep():
            await prune_once(maintainer)
            store.age()
            assert (await prune_once(maintainer)).swept

        with pytest.raises(PrunedMeanwhile):
            await commit(writer, source, None, Paused(writer, mark_and_sweep))
        again = await commit(writer, source, None)         # what the uploader's retry does
        await assert_intact(store.inner, {again.name: capture_directory(source)})

    trio.run(run)


def test_r2_r3_chunks_of_an_upload_not_yet_committed_are_never_doomed(world):
    store, source = world

    async def run():
        writer, maintainer = await open_roles(store)
        (source / "a").write_bytes(os.urandom(300_000))
        await writer.put_blob(0, os.urandom(100_000))
        await writer.packer.flush()                        # a chunk stored, no index object yet (R3)
        unnamed = [chunk.chunk_id for chunk in writer.index.unnamed_chunks()]
        await writer.flush()                               # named, no snapshot yet (R2)
        report = await prune_once(maintainer)              # within the grace period: young
        assert report.doom is None and len(report.marked.young) >= len(unnamed)


        async def mark():
            store.age()                                    # an upload slower than the grace period
            assert (await prune_once(maintainer)).doom is not None

        with pytest.raises(PrunedMeanwhile, match="grace period is shorter"):
            await commit(writer, source, None, Paused(writer, mark))

    trio.run(run)


def test_r4_a_reader_with_an_old_index_finds_a_repacked_blob(world):
    store, source = world

    async def run():
        writer, maintainer = await open_roles(store)
        for name in "abcdefgh":
            (source / name).write_bytes(os.urandom(60_000))
        first = await commit(writer, source)
        for name in "abcdefg":
            (source / name).unlink()
        second = await commit(writer, source, first)
        expected = capture_directory(source)
        reader = await Repository.open(store.inner, PASSPHRASE, use_cache=False)   # loaded now
        await maintainer.forget_snapshot(first)
        store.age()
        report = await prune_once(maintainer, max_unused=0.0)
        assert report.marked.repack and report.repacked.blobs
        store.age()
        assert (await prune_once(maintainer)).swept
        listed = next(s for s in await reader.snapshots() if s.name == second.name)
        assert not diff(expected, await capture_snapshot_async(TreeReader(reader), listed.tree))

    trio.run(run)


def test_r5_a_forgotten_parent_doomed_meanwhile_has_its_reused_blobs_stored_again(world):
    store, source = world

    async def run():
        writer, maintainer = await open_roles(store)
        (source / "keep").write_bytes(os.urandom(200_000))
        (source / "dir").mkdir()
        (source / "dir" / "old").write_bytes(os.urandom(50_000))
        parent = await commit(writer, source)
        await maintainer.forget_snapshot(parent)            # the mount's parent, forgotten
        store.age()
        (source / "new").write_bytes(b"a change beside reused subtrees")

        async def mark():
            assert (await prune_once(maintainer)).doom is not None

        guard = Paused(writer, mark)
        child = await commit(writer, source, parent, guard)  # reuses `keep` and `dir` by id
        assert guard.restored > 0
        store.age()
        assert (await prune_once(maintainer)).swept
        await assert_intact(store.inner, {child.name: capture_directory(source)})

    trio.run(run)


def test_r5_a_parent_pruned_before_the_commit_is_not_reused(world):
    store, source = world

    async def run():
        writer, maintainer = await open_roles(store)
        (source / "keep").write_bytes(os.urandom(200_000))
        parent = await commit(writer, source)
        await maintainer.forget_snapshot(parent)
        store.age()
        (source / "new").write_bytes(b"change")

        async def mark_and_sweep():
            await prune_once(maintainer)
            store.age()
            assert (await prune_once(maintainer)).swept

        with pytest.raises((ParentPruned, PrunedMeanwhile)):
            await commit(writer, source, parent, Paused(writer, mark_and_sweep))
        fresh = await commit(writer, source, None)
        await assert_intact(store.inner, {fresh.name: capture_directory(source)})

    trio.run(run)


def test_r6_grace_is_measured_by_the_store_not_a_client_clock_a_day_ahead(world, monkeypatch):
    store, source = world
    real = time.time_ns

    async def run():
        writer, maintainer = await open_roles(store)
        (source / "x").write_bytes(os.urandom(100_000))
        first = await commit(writer, source)
        (source / "x").write_bytes(b"y")
        await commit(writer, source, first)
        await maintainer.forget_snapshot(first)
        store.age()                       # the chunks are old by the store's clock
        monkeypatch.setattr(time, "time_ns", lambda: real() + 86400 * 10**9)
        monkeypatch.setattr(time, "time", lambda: real() / 1e9 + 86400)
        marked = await prune_once(maintainer)
        assert marked.doom is not None
        pass                                         # the doom list is a moment old by the store
        waiting = await prune_once(maintainer)
        assert waiting.waiting and not waiting.swept

    trio.run(run)


def test_r7_one_prune_at_a_time_and_a_dead_holder_on_this_machine_does_not_block(world):
    store, _ = world

    async def run():
        _, maintainer = await open_roles(store)
        async with holding_lease(maintainer):
            with pytest.raises(PruneBusy, match="another prune holds the repository"):
                await prune_once(maintainer)
        from cloudfs.repo.lease import Lease
        dead = Lease(duration_ns=3600 * 10**9, pid=2**22 + 12345).with_name()   # no such process
        await maintainer.store.put(dead.name, dead.seal(maintainer.master))
        await prune_once(maintainer)
        assert not await maintainer.store.list("leases/")

    trio.run(run)


def test_r8_a_check_older_than_its_validity_is_made_again_before_the_put(world):
    store, source = world

    async def run():
        writer, _ = await open_roles(store)
        (source / "x").write_bytes(b"x")
        ticks = itertools.chain([0.0], itertools.repeat(10_000.0))   # it slept after the first check
        guard = DoomGuard(writer, clock=lambda: next(ticks), validity=60.0)
        store.listed.clear()
        await commit(writer, source, None, guard)
        assert store.listed.count("doomed/") == 2

    trio.run(run)


def test_an_unreadable_doom_list_stops_commits_until_a_prune_voids_it(world):
    store, source = world

    async def run():
        writer, maintainer = await open_roles(store)
        (source / "x").write_bytes(b"x")
        await maintainer.store.put("doomed/2026-01-01T000000.000000Z-00000000", b"CLFS\x01\x08\x01\x00garbage")
        with pytest.raises(IntegrityError, match="doomed/"):
            await commit(writer, source)
        await prune_once(maintainer)
        assert not await maintainer.store.list("doomed/")
        await commit(writer, source)

    trio.run(run)
