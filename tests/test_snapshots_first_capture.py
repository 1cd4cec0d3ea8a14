"""The first mount's full capture in a worker thread, with the snapshot's build following it
directory by directory (docs/live.md §13.1), on a plain directory.

The capture is slowed down as a cold disk would (its exclusion predicate, asked once
per entry, sleeps), so the builder catches up with it and must wait for directories
that are not published yet. The snapshot must still equal the tree, the manifest
must equal a fresh scan, and a capture that fails must fail the build it feeds
before anything is committed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from cloudfs.errors import leaf_errors
from cloudfs.live.capture import Capture, CaptureWalker, manifest_delta
from cloudfs.live.frozen import CaptureFailed, CaptureProgress, FrozenSource, FrozenState
from cloudfs.live.graveyard import Graveyard
from cloudfs.live.inodes import InodeTable
from cloudfs.live.manifest import MANIFEST_NAME, Checkpoint, Manifest
from cloudfs.live.scan import walk
from cloudfs.live.spool import Spool
from cloudfs.repo import RepoConfig, Repository
from cloudfs.snapshot.reader import TreeReader
from cloudfs.store import LocalStore
from cloudfs.uploader import commit_snapshot
from tests.repo_helpers import PASSPHRASE, fast_kdf
from tests.tree_helpers import capture_directory, capture_snapshot, diff

pytestmark = pytest.mark.timeout(60)
BLOCK = 4096
ENTRY_DELAY = 0.002     # per entry captured: 360 entries, ~0.7 s of capture


@pytest.fixture
def first_mount(tmp_path):
    root = tmp_path / "tree"
    for d in range(12):
        directory = root / f"d{d:02}" / "inner"
        directory.mkdir(parents=True)
        for f in range(14):
            (directory.parent / f"f{f}").write_bytes(os.urandom(100 + 700 * f))
            (directory / f"g{f}").write_bytes(b"g%d-%d" % (d, f) * 50)
    (root / "d03" / "big").write_bytes(os.urandom(BLOCK * 40 + 5))
    os.symlink("d00/f1", root / "link")
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "repo").mkdir()
    repo = trio.run(lambda: Repository.init(LocalStore(str(tmp_path / "repo")), PASSPHRASE,
                                            config=RepoConfig(block_size=BLOCK), kdf=fast_kdf(),
                                            use_cache=False))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    manifest = Manifest.of_listings(state / MANIFEST_NAME, ())    # a first mount's: empty
    yield root, state, repo, fd, manifest
    manifest.close()
    os.close(fd)


class Following:
    """The builder's FrozenSource, noting when it listed each directory."""

    def __init__(self, state: FrozenState):
        self.source = FrozenSource(state)
        self.listed_at: dict[bytes, float] = {}

    def __getattr__(self, name):
        return getattr(self.source, name)

    def listdir(self, path: bytes) -> list[bytes]:
        self.listed_at[path] = time.monotonic()
        return self.source.listdir(path)


def slow_exclude(fail_at: bytes | None = None):
    def exclude(path: bytes) -> bool:
        time.sleep(ENTRY_DELAY)
        if path == fail_at:
            raise OSError(5, "Input/output error", path.decode())
        return False
    return exclude


async def capture_and_build(root: Path, state_dir: Path, repo, fd: int, manifest: Manifest, exclude):
    """As Sealer.seal_before_serving and the daemon's upload do it: the capture in a
    thread, handed over before its walk, the build started at once."""
    progress = CaptureProgress()
    handed: list[FrozenState] = []
    built: dict = {}
    ended: dict = {}
    token = trio.lowlevel.current_trio_token()

    def install(capture: Capture) -> None:
        state = FrozenState(capture, Spool(state_dir, 1 << 20), Graveyard(fd), InodeTable(fd), fd, progress)
        handed.append(state)
        nursery.start_soon(build, state)

    async def build(state: FrozenState) -> None:
        source = Following(state)
        built["source"] = source
        built["snapshot"] = await commit_snapshot(repo, source, source_path=str(root), time_ns=1)

    walker = CaptureWalker(fd, manifest, block_size=BLOCK, has_previous=False, trusted=False,
                           exclude=exclude, time_ns=1, state_dir=state_dir)
    try:
        async with trio.open_nursery() as nursery:
            try:
                capture = await trio.to_thread.run_sync(lambda: walker.full(
                    lambda c: trio.from_thread.run_sync(install, c, trio_token=token), progress.published))
            except OSError as error:
                progress.end(error)
                handed[0].fail(f"the capture failed: {error}")
                raise
            progress.end()
            ended["at"] = time.monotonic()
            handed[0].progress = None
    except BaseException:
        handed[0].capture.close()
        raise
    return capture, built["snapshot"], built["source"], ended["at"]


def test_the_build_follows_the_capture_and_the_snapshot_is_the_tree(first_mount):
    root, state_dir, repo, fd, manifest = first_mount
    capture, snapshot, source, capture_ended = trio.run(
        capture_and_build, root, state_dir, repo, fd, manifest, slow_exclude())

    listed_early = [path for path, at in source.listed_at.items() if at < capture_ended]
    assert len(listed_early) >= 3, "the build waited for the whole capture"
    assert len(source.listed_at) == 1 + 12 * 2
    expected = capture_directory(root, with_identity=True)
    actual = capture_snapshot(TreeReader(repo), snapshot.tree, with_identity=True)
    assert not diff(expected, actual), diff(expected, actual)
    manifest.apply(manifest_delta(manifest, capture), Checkpoint(snapshot.name))
    fresh = Manifest.of_listings(state_dir / "fresh.db", walk(fd))
    assert dict(manifest.packed_items()) == dict(fresh.packed_items())
    capture.close()


def test_a_capture_that_fails_fails_its_build_before_anything_is_committed(first_mount):
    root, state_dir, repo, fd, manifest = first_mount
    with pytest.raises(BaseException) as raised:
        trio.run(capture_and_build, root, state_dir, repo, fd, manifest, slow_exclude(fail_at=b"d07/f3"))
    kinds = {type(leaf) for leaf in leaf_errors(raised.value)}
    assert OSError in kinds and kinds <= {OSError, CaptureFailed}, raised.value
    assert trio.run(repo.snapshots) == []
