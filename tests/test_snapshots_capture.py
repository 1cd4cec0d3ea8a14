"""The capture at a seal, on a plain directory: from the journal's inodes to the builder's paths.

Each test builds a tree, takes a first snapshot and the manifest of it, changes
the tree, and describes the changes the way the mount's handlers journal them
(by inode: `dirs` of the directories whose names changed, `whole` for new
inodes, `meta` for renamed or relinked ones, byte ranges for writes). The
capture must then let the real TreeBuilder build a snapshot equal to the tree
(reading only through the FrozenSource, which refuses anything the seal did not
capture), and the manifest it yields must equal a fresh scan.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from cloudfs.live.capture import CaptureWalker, Inconsistent, blocks_to_read, manifest_delta
from cloudfs.live.changes import ChangeSet
from cloudfs.live.frozen import FrozenState
from cloudfs.live.graveyard import Graveyard
from cloudfs.live.inodes import InodeTable
from cloudfs.live.manifest import MANIFEST_NAME, Checkpoint, Manifest
from cloudfs.live.scan import walk
from cloudfs.live.spool import Spool
from cloudfs.repo import RepoConfig, Repository
from cloudfs.snapshot.reader import TreeReader
from cloudfs.store import LocalStore
from cloudfs.uploader import commit_snapshot, snapshot_directory
from tests.repo_helpers import PASSPHRASE, fast_kdf
from tests.tree_helpers import capture_directory, capture_snapshot, diff

pytestmark = pytest.mark.timeout(60)
BLOCK = 4096


class Scenario:
    """A tree, its first snapshot and manifest, and a ChangeSet kept by hand."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "tree"
        self.root.mkdir()
        self.state = tmp_path / "state"
        self.state.mkdir()
        (tmp_path / "repo").mkdir()
        self.repo = trio.run(lambda: Repository.init(LocalStore(str(tmp_path / "repo")), PASSPHRASE,
                                                     config=RepoConfig(block_size=BLOCK), kdf=fast_kdf(),
                                                     use_cache=False))
        self.changes = ChangeSet()
        self.fd = -1

    def start(self) -> None:
        """The first snapshot, and the manifest that describes it."""
        self.previous = trio.run(lambda: snapshot_directory(self.repo, self.root))
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self.manifest = Manifest.of_listings(self.state / MANIFEST_NAME, walk(self.fd),
                                             Checkpoint(self.previous.name))

    def ino(self, relative: str) -> int:
        return os.lstat(self.root / relative).st_ino

    def dir_of(self, relative: str) -> int:
        return self.ino(os.path.dirname(relative) or ".")

    # the handlers' records ------------------------------------------------------------

    def write(self, relative: str, offset: int, data: bytes) -> None:
        with open(self.root / relative, "r+b") as handle:
            handle.seek(offset)
            handle.write(data)
        self.changes.add_range(self.ino(relative), offset, offset + len(data))

    def create(self, relative: str, data: bytes | None = None) -> None:
        path = self.root / relative
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
        self.changes.mark_dir(self.dir_of(relative))
        self.changes.mark_whole(self.ino(relative))

    def rename(self, old: str, new: str) -> None:
        self.changes.mark_dir(self.dir_of(old))
        os.rename(self.root / old, self.root / new)
        self.changes.mark_dir(self.dir_of(new))
        self.changes.mark_meta(self.ino(new))

    def link(self, existing: str, new: str) -> None:
        os.link(self.root / existing, self.root / new)
        self.changes.mark_dir(self.dir_of(new))
        self.changes.mark_meta(self.ino(new))

    def remove(self, relative: str) -> None:
        self.changes.mark_dir(self.dir_of(relative))
        path = self.root / relative
        path.rmdir() if path.is_dir() else path.unlink()

    # sealing and building -----------------------------------------------------------------

    def capture(self, full: bool = False, on_disk: bool = False):
        walker = CaptureWalker(self.fd, self.manifest, block_size=BLOCK, has_previous=True, trusted=True,
                               exclude=None, time_ns=1, state_dir=self.state if on_disk else None)
        return walker.full() if full else walker.incremental(self.changes)

    def build(self, capture, tmp_path: Path):
        frozen = FrozenState(capture, Spool(tmp_path, 1 << 20), Graveyard(self.fd), InodeTable(self.fd), self.fd)
        return trio.run(lambda: commit_snapshot(self.repo, frozen.source(), source_path=str(self.root),
                                                previous=self.previous, changes=capture.changes))

    def assert_snapshot_is_the_tree(self, snapshot) -> None:
        expected = capture_directory(self.root, with_identity=True)
        actual = capture_snapshot(TreeReader(self.repo), snapshot.tree, with_identity=True)
        assert not diff(expected, actual), diff(expected, actual)

    def assert_manifest_is_a_fresh_scan(self, capture) -> None:
        self.manifest.apply(manifest_delta(self.manifest, capture), Checkpoint("after"))
        fresh = Manifest.of_listings(self.state / "fresh.db", walk(self.fd))
        assert dict(self.manifest.packed_items()) == dict(fresh.packed_items())
        assert len(self.manifest) == len(fresh)


@pytest.fixture
def scenario(tmp_path):
    made = Scenario(tmp_path)
    (made.root / "a" / "x" / "deep").mkdir(parents=True)
    (made.root / "a" / "x" / "deep" / "f").write_bytes(b"deep" * 1000)
    (made.root / "b").mkdir()
    (made.root / "c").mkdir()
    (made.root / "c" / "big").write_bytes(os.urandom(BLOCK * 300 + 17))
    (made.root / "c" / "shared").write_bytes(b"linked")
    (made.root / "old").mkdir()
    (made.root / "old" / "inner").write_bytes(b"inner")
    (made.root / "gone").write_bytes(b"to be removed")
    yield made
    if made.fd >= 0:
        os.close(made.fd)


def test_renames_links_new_and_replaced_directories_are_found_by_path(scenario, tmp_path):
    scenario.start()
    scenario.write("c/big", BLOCK * 100 + 5, b"X" * 10)       # in a directory whose names did not change
    scenario.rename("a/x", "b/x")                              # a directory moves, subtree and all
    scenario.create("n")
    scenario.create("n/file", b"new")
    scenario.create("n/sub")
    scenario.link("c/shared", "b/shared-again")                # another name, in a changed directory
    scenario.rename("old/inner", "inner-moved")
    scenario.remove("old")
    scenario.create("old")                                     # another directory where one was
    scenario.remove("gone")

    capture = scenario.capture()
    changes = capture.changes
    assert {b"", b"a", b"b", b"n", b"old", b"n/sub", b"b/x"} <= changes.listings
    assert changes.data[b"c/big"] == [(BLOCK * 100 + 5, BLOCK * 100 + 15)]
    assert capture.reads[b"c/big"].total() == BLOCK                 # one block of 301 is read
    assert b"c" not in capture.listings                             # not relisted: unchanged names
    snapshot = scenario.build(capture, tmp_path)
    scenario.assert_snapshot_is_the_tree(snapshot)
    scenario.assert_manifest_is_a_fresh_scan(capture)


def test_a_directory_replaced_by_another_is_captured_as_the_builder_rebuilds_it(scenario, tmp_path):
    """The builder builds a directory whose inode changed afresh, even where an entry
    below it is the same inode as before (moved out and back in)."""
    scenario.start()
    scenario.rename("old/inner", "inner-for-a-while")
    scenario.create("new-old")                  # made while "old" exists: another inode number
    scenario.rename("new-old", "old")           # over the empty "old"
    scenario.rename("inner-for-a-while", "old/inner")
    assert scenario.ino("old") != scenario.manifest.get(b"old").ino
    capture = scenario.capture()
    assert capture.reads[b"old/inner"].total() == len(b"inner")     # read again, in full
    snapshot = scenario.build(capture, tmp_path)
    scenario.assert_snapshot_is_the_tree(snapshot)
    scenario.assert_manifest_is_a_fresh_scan(capture)


@pytest.mark.parametrize("on_disk", [False, True], ids=["in-memory", "on-disk"])
def test_a_change_behind_the_journals_back_is_inconsistent_and_a_full_capture_still_works(
        scenario, tmp_path, on_disk):
    """A full capture, in memory or (as the daemon makes it) in the state directory."""
    scenario.start()
    os.rename(scenario.root / "c" / "shared", scenario.root / "c" / "renamed")  # journal not told
    scenario.changes.mark_meta(scenario.ino("c/renamed"))
    scenario.write("c/big", 3, b"changed")
    with pytest.raises(Inconsistent):
        scenario.capture()
    capture = scenario.capture(full=True, on_disk=on_disk)
    assert capture.changes is None and (capture.store is not None) == on_disk
    assert b"c/big" in capture.reads and b"a/x/deep/f" not in capture.reads  # unchanged by stat: not read
    assert capture.obligations().get(scenario.ino("c/big")) is not None
    snapshot = scenario.build(capture, tmp_path)
    scenario.assert_snapshot_is_the_tree(snapshot)
    scenario.assert_manifest_is_a_fresh_scan(capture)
    capture.close()
    assert not (scenario.state / "capture.db").exists()


def test_blocks_to_read_are_the_dirty_blocks_and_the_old_partial_last_one():
    # 3 blocks and a bit, grown by a write past the end: the old last block is read too
    needed = blocks_to_read([(20_000, 20_010)], size=20_010, old_size=3 * BLOCK + 100, block_size=BLOCK)
    assert list(needed) == [(3 * BLOCK, 20_010)]
    needed = blocks_to_read([(5, 6), (BLOCK * 2, 1 << 62)], size=BLOCK * 3, old_size=BLOCK * 3,
                            block_size=BLOCK)
    assert list(needed) == [(0, BLOCK), (BLOCK * 2, BLOCK * 3)]
    assert not blocks_to_read([(BLOCK * 9, BLOCK * 10)], size=BLOCK, old_size=BLOCK, block_size=BLOCK)
