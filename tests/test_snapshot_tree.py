"""Trees: a snapshot records a directory exactly, and the next one reads only what changed."""

import os
import threading

import pytest
import trio

from cloudfs.repo import Repository, RepoConfig
from cloudfs.snapshot.builder import SMALL_BYTES_PER_JOB, TreeBuilder
from cloudfs.snapshot.rules import PathChanges
from cloudfs.snapshot.reader import TreeReader
from cloudfs.snapshot.sink import RepositorySink
from cloudfs.snapshot.source import DirectorySource
from cloudfs.store import LocalStore
from tests.repo_helpers import PASSPHRASE, fast_kdf
from tests.tree_helpers import capture_directory, capture_snapshot, diff, make_rich_tree

BLOCK = 4096


class CountingSink(RepositorySink):
    def __init__(self, repo):
        super().__init__(repo)
        self.trees = self.data = 0

    def store_buffers_sync(self, buffers, block_size):
        stored = super().store_buffers_sync(buffers, block_size)
        self.data += sum(1 for ids in stored for i in ids if i is not None)
        return stored

    async def put_tree(self, data):
        self.trees += 1
        return await super().put_tree(data)


@pytest.fixture
def repo(tmp_path):
    config = RepoConfig(block_size=BLOCK, chunk_size=1 << 20)
    return trio.run(lambda: Repository.init(LocalStore(tmp_path / "repo"), PASSPHRASE, config=config,
                                            kdf=fast_kdf(), create_container=True, use_cache=False))


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    make_rich_tree(root, BLOCK)
    return root


def build(repo, directory, previous=None, changes=None, exclude=None):
    source = DirectorySource.at(directory)
    sink = CountingSink(repo)
    builder = TreeBuilder(source, sink, TreeReader(repo), repo.config.block_size, exclude)
    try:
        root = trio.run(builder.build, previous, changes)
    finally:
        source.close()
    trio.run(repo.flush)
    return root, builder.stats, sink


def assert_matches(repo, root, directory):
    differences = diff(capture_directory(directory, with_identity=True),
                       capture_snapshot(TreeReader(repo), root, with_identity=True))
    assert not differences, "\n".join(differences[:20])


def test_a_snapshot_records_every_kind_of_entry_exactly(repo, tree):
    root, stats, _ = build(repo, tree)
    assert_matches(repo, root, tree)
    assert stats.files == 10 and stats.bytes_read > 600 * BLOCK


def test_holes_and_zero_blocks_are_not_stored(repo, tree):
    root, _, _ = build(repo, tree)
    entry = trio.run(TreeReader(repo).lookup, root, b"sparse.img")
    ids = trio.run(TreeReader(repo).block_ids, entry, 0, 41)
    assert ids[0] is not None and ids[40] is not None and ids[1:40] == [None] * 39


def test_an_unchanged_tree_gives_the_same_root_and_stores_nothing_new(repo, tree):
    first, _, _ = build(repo, tree)
    written = repo.written.chunk_bytes
    second, stats, _ = build(repo, tree, first, PathChanges())
    assert second == first and stats.bytes_read == 0
    third, stats, _ = build(repo, tree, first, None)   # a full compare by stat
    assert third == first and stats.bytes_read == 0
    assert repo.written.chunk_bytes == written


def edited_in_sixty_directories(tmp_path):
    """A repository (counting its requests) with a snapshot of 60 directories three
    levels down, a file edited in each since; the changes; a session with nothing cached."""
    from tests.repo_helpers import CountingStore

    store = CountingStore(LocalStore(tmp_path / "repo"))
    config = RepoConfig(block_size=BLOCK, chunk_size=1 << 20)
    repo = trio.run(lambda: Repository.init(store, PASSPHRASE, config=config, kdf=fast_kdf(),
                                            create_container=True, use_cache=False))
    root = tmp_path / "tree"
    leaves = [root / f"a{a}" / f"b{b}" / f"c{c}" for a in range(3) for b in range(4) for c in range(5)]
    for leaf in leaves:
        leaf.mkdir(parents=True)
        for index in range(3):
            (leaf / f"file{index}.txt").write_bytes(os.urandom(300))
    first, _, _ = build(repo, root)
    for leaf in leaves:
        (leaf / "file1.txt").write_bytes(os.urandom(300))
    changes = PathChanges(data={os.fsencode(leaf.relative_to(root) / "file1.txt"): None for leaf in leaves})
    fresh = trio.run(lambda: Repository.open(store, PASSPHRASE, use_cache=False))   # nothing cached
    return store, fresh, root, first, changes


@pytest.mark.parametrize("whole", [True, False], ids=["small tree chunk", "large tree chunk"])
def test_an_incremental_build_reads_the_previous_nodes_in_few_gets(tmp_path, monkeypatch, whole):
    """Edits in 60 directories three levels down: the walk needs their 60 previous
    nodes and their parents'. Fetched one by one that was a GET per node (76). A
    small tree chunk is read whole by the first node read; from a larger one the
    nodes come a level at a time as spans, ahead of the walk (and the walk's own
    first way down before the prefetch is ahead of it)."""
    from cloudfs.snapshot import reader

    if not whole:
        monkeypatch.setattr(reader, "WHOLE_CHUNK_BYTES", 0)
    store, fresh, root, first, changes = edited_in_sixty_directories(tmp_path)
    store.gets.clear()
    second, stats, _ = build(fresh, root, first, changes)
    node_gets = [get for get in store.gets if get[0].startswith("chunks/")]
    if whole:
        assert len(node_gets) == 1 and node_gets[0][1:3] == (0, None), node_gets
    else:
        assert len(node_gets) <= 12, node_gets
    assert stats.bytes_read == 60 * 300
    assert_matches(fresh, second, root)


def test_a_tree_chunk_that_cannot_be_read_whole_is_read_node_by_node(tmp_path):
    store, fresh, root, first, changes = edited_in_sixty_directories(tmp_path)
    tree_chunk = next((tmp_path / "repo").glob(f"chunks/*/{fresh.index.get(first).chunk_id.hex()}"))
    data = bytearray(tree_chunk.read_bytes())
    data[-40] ^= 1                                    # the footer: it lists the chunk's blobs
    tree_chunk.write_bytes(bytes(data))
    store.gets.clear()
    second, stats, _ = build(fresh, root, first, changes)
    assert len([get for get in store.gets if get[0].startswith("chunks/")]) > 1
    assert_matches(fresh, second, root)


def test_changed_blocks_of_a_big_file_are_the_only_ones_read(repo, tree):
    first, full, _ = build(repo, tree)
    big = tree / "big.bin"
    regions = [(BLOCK * 3 + 100, 50), (BLOCK * 300, BLOCK), (BLOCK * 599, 10)]
    with open(big, "r+b") as handle:
        for offset, length in regions:
            os.pwrite(handle.fileno(), os.urandom(length), offset)
    changes = PathChanges(data={b"big.bin": [(o, o + n) for o, n in regions]})
    second, stats, sink = build(repo, tree, first, changes)
    assert_matches(repo, second, tree)
    assert stats.bytes_read == 3 * BLOCK
    assert (stats.files, stats.bytes) == (full.files, full.bytes), "totals cover the whole tree"
    assert sink.data == 3
    # 3 leaves of 256 blocks touched: each leaf plus the block-list root, and the root directory.
    assert sink.trees == 3 + 1 + 1


def test_growing_and_shrinking_files_keep_content_exact(repo, tree):
    first, _, _ = build(repo, tree)
    with open(tree / "docs" / "block-plus-one", "r+b") as handle:
        handle.truncate(BLOCK * 2 + 500)          # grows: zeros after the old partial block
    with open(tree / "big.bin", "r+b") as handle:
        handle.truncate(BLOCK * 100 + 7)          # shrinks below FANOUT blocks: inline again
    with open(tree / "small.txt", "ab") as handle:
        handle.write(b"more\n")
    changes = PathChanges(data={b"docs/block-plus-one": [(BLOCK * 2 + 500, 2**63)],
                                b"big.bin": [(BLOCK * 100 + 7, 2**63)],
                                b"small.txt": [(6, 11)], b"docs/hardlink.txt": [(6, 11)]})
    second, _, _ = build(repo, tree, first, changes)
    assert_matches(repo, second, tree)


def test_namespace_changes_are_followed(repo, tree):
    first, _, _ = build(repo, tree)
    os.rename(tree / "docs" / "deep", tree / "moved-deep")
    os.unlink(tree / "a-fifo")
    (tree / "new-dir").mkdir()
    (tree / "new-dir" / "new-file").write_bytes(b"new content")
    os.rename(tree / "small.txt", tree / "docs" / "exact-block")  # replaces another file
    os.chmod(tree / "empty", 0o600)
    # The journal reports every path of a changed inode: the rename changed the
    # ctime of small.txt, which docs/hardlink.txt shares.
    changes = PathChanges(listings={b"", b"docs"}, meta={b"empty", b"docs/hardlink.txt"})
    second, _, _ = build(repo, tree, first, changes)
    assert_matches(repo, second, tree)


def test_a_full_compare_finds_edits_nothing_reported(repo, tree):
    first, _, _ = build(repo, tree)
    (tree / "docs" / "deep" / "text.py").write_bytes(b"rewritten while unmounted")
    (tree / "docs" / "deep" / "deeper" / "added").write_bytes(b"x")
    second, stats, _ = build(repo, tree, first, None)
    assert_matches(repo, second, tree)
    assert stats.bytes_read == len(b"rewritten while unmounted") + 1


def test_excluded_paths_are_left_out(repo, tree):
    from cloudfs.snapshot.source import exclusion_matcher

    (tree / "docs" / "build").mkdir()
    (tree / "docs" / "build" / "out.o").write_bytes(b"object")
    (tree / "scratch.tmp").write_bytes(b"temporary")
    root, _, _ = build(repo, tree, exclude=exclusion_matcher(["*.tmp", "docs/build", "docs/deep/*.py"]))
    paths = {path for path, _ in trio.run(_walk, TreeReader(repo), root)}
    assert b"scratch.tmp" not in paths and b"docs/build" not in paths
    assert b"docs/build/out.o" not in paths and b"docs/deep/text.py" not in paths
    assert b"docs/deep/deeper/zeros" in paths and b"small.txt" in paths


async def _walk(reader, root):
    return [item async for item in reader.walk(root)]


class _WaitingSource(DirectorySource):
    """Reading `first` waits (in its worker thread) until `second` is opened: a builder
    that waits for one directory's files before walking the next never gets there."""

    def __init__(self, root_fd, first: bytes, second: bytes):
        super().__init__(root_fd)
        self.first, self.second = first, second
        self.second_opened = threading.Event()
        self.waited_in_vain = False

    def listdir(self, path):
        return sorted(super().listdir(path))   # `first`'s directory before `second`'s

    def open(self, path):
        reader = super().open(path)
        if path == self.second:
            self.second_opened.set()
        if path != self.first:
            return reader
        source = self

        class Waiting:
            def pread(self, length, offset):
                if not source.second_opened.wait(timeout=5):
                    source.waited_in_vain = True
                return reader.pread(length, offset)

            def prefetch(self, length, offset):
                reader.prefetch(length, offset)

            def close(self):
                reader.close()

        return Waiting()


def test_the_walk_goes_on_while_a_directory_s_files_are_read(repo, tmp_path):
    root = tmp_path / "walked"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "big.bin").write_bytes(os.urandom(SMALL_BYTES_PER_JOB + BLOCK))   # a task each
    source = _WaitingSource(os.open(root, os.O_RDONLY | os.O_DIRECTORY), b"a/big.bin", b"b/big.bin")
    builder = TreeBuilder(source, RepositorySink(repo), TreeReader(repo), repo.config.block_size)
    try:
        snapshot_root = trio.run(builder.build, None, None)
    finally:
        source.close()
    trio.run(repo.flush)
    assert not source.waited_in_vain
    assert_matches(repo, snapshot_root, root)


class _BatchSink(RepositorySink):
    """Records how many files each worker-thread job stored."""

    def __init__(self, repo):
        super().__init__(repo)
        self.jobs = []

    def store_buffers_sync(self, buffers, block_size):
        self.jobs.append(len(buffers))
        return super().store_buffers_sync(buffers, block_size)


def test_files_of_a_few_blocks_are_read_in_one_job_and_a_larger_one_alone(repo, tmp_path):
    root = tmp_path / "few-blocks"
    root.mkdir()
    for index in range(20):
        (root / f"three-blocks-{index}").write_bytes(os.urandom(3 * BLOCK - index))
    (root / "past-a-group").write_bytes(os.urandom(SMALL_BYTES_PER_JOB + 1))
    source = DirectorySource.at(root)
    sink = _BatchSink(repo)
    try:
        snapshot_root = trio.run(TreeBuilder(source, sink, TreeReader(repo), BLOCK).build, None, None)
    finally:
        source.close()
    trio.run(repo.flush)
    assert sorted(sink.jobs) == [1, 20]
    assert_matches(repo, snapshot_root, root)
