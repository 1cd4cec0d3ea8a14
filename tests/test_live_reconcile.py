"""Reconcile and the change view, on plain directories (no FUSE): the rules that find
changes made behind the journal's back, and how inodes become paths."""

from __future__ import annotations

import itertools
import os
import time

import pytest

from cloudfs.live.changes import ChangeSet
from cloudfs.live.manifest import MANIFEST_NAME, Manifest
from cloudfs.live.reconcile import reconcile, reconcile_mounted
from cloudfs.live.records import FinalStat
from cloudfs.live.scan import walk_path
from cloudfs.live.view import resolve

pytestmark = pytest.mark.timeout(60)

_numbers = itertools.count()


def ino(path) -> int:
    return os.lstat(path).st_ino


def found(source, baseline, pending=None, clean_stop=True, finals=None) -> ChangeSet:
    return reconcile(walk_path(source), baseline, pending or ChangeSet(),
                     clean_stop=clean_stop, finals=finals or {}).changes


def mounted_news(source, baseline, pending, **times) -> ChangeSet:
    return reconcile_mounted(walk_path(source), baseline, pending, **times).changes


def scan_path(source) -> Manifest:
    """The tree as it is now, as a manifest (beside it, one file per call)."""
    return Manifest.of_listings(source.parent / f"scan-{next(_numbers)}.db", walk_path(source))


@pytest.fixture
def tree(tmp_path):
    source = tmp_path / "source"
    (source / "dir").mkdir(parents=True)
    for name in ("a", "b", "c", "dir/x"):
        (source / name).write_bytes(b"0123456789" * 100)
    return source


def test_the_manifest_round_trips_and_skips_nothing(tree, tmp_path):
    odd = b"odd \n name \xff"  # not UTF-8: names are bytes all the way
    os.close(os.open(os.path.join(os.fsencode(tree), odd), os.O_CREAT | os.O_WRONLY))
    os.symlink("a", tree / "link")
    saved = Manifest.of_listings(tmp_path / MANIFEST_NAME, walk_path(tree))
    loaded = Manifest.open(tmp_path)
    assert dict(loaded.items()) == dict(saved.items())
    assert set(dict(loaded.items())) == {b"", b"a", b"b", b"c", b"dir", b"dir/x", b"link", odd}
    assert len(loaded) == 8
    assert loaded.paths_of(ino(tree / "dir" / "x")) == [b"dir/x"]
    assert sorted(loaded.subtree(b"dir")) == [b"dir", b"dir/x"]


def test_an_unchanged_tree_reconciles_to_nothing(tree):
    assert not found(tree, scan_path(tree))


def test_offline_edits_are_classified(tree):
    baseline = scan_path(tree)
    with open(tree / "a", "ab") as handle:
        handle.write(b"more")  # size and mtime: re-read
    os.chmod(tree / "b", 0o600)  # attributes only: meta
    os.setxattr(tree / "c", "user.k", b"v")  # only ctime moved: cannot tell, re-read
    (tree / "dir" / "new").write_text("n")  # a new name: its directory
    os.unlink(tree / "dir" / "x")
    result = found(tree, baseline)
    assert result.whole == {ino(tree / "a"), ino(tree / "c")}
    assert result.meta == {ino(tree / "b"), ino(tree / "dir")}
    assert result.dirs == {ino(tree / "dir")}


def test_a_file_rewritten_with_its_mtime_put_back_is_reread(tree):
    baseline = scan_path(tree)
    st = os.stat(tree / "a")
    with open(tree / "a", "r+b") as handle:
        handle.write(b"XXXX")
    os.utime(tree / "a", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert found(tree, baseline).whole == {ino(tree / "a")}


def test_a_file_replaced_under_the_same_name_marks_its_directory(tree):
    baseline = scan_path(tree)
    os.unlink(tree / "a")
    (tree / "a.new").write_text("replacement")
    os.rename(tree / "a.new", tree / "a")
    result = found(tree, baseline)
    assert result.dirs == {ino(tree)}


def test_journaled_inodes_are_compared_with_their_final_stats_after_a_clean_stop(tree):
    baseline = scan_path(tree)
    pending = ChangeSet()
    pending.add_range(ino(tree / "a"), 0, 10)
    pending.add_range(ino(tree / "b"), 0, 10)
    with open(tree / "a", "r+b") as handle:
        handle.write(b"journaled")
    with open(tree / "b", "r+b") as handle:
        handle.write(b"journaled")
    finals = {}
    for name in ("a", "b"):
        st = os.stat(tree / name)
        finals[st.st_ino] = FinalStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with open(tree / "b", "r+b") as handle:  # and then edited while unmounted
        handle.seek(500)
        handle.write(b"offline")
    result = found(tree, baseline, pending, clean_stop=True, finals=finals)
    assert result.whole == {ino(tree / "b")} and not result.data and not result.dirs


def test_after_an_unclean_stop_every_journaled_file_is_reread(tree):
    baseline = scan_path(tree)
    pending = ChangeSet()
    pending.add_range(ino(tree / "a"), 0, 10)
    pending.mark_dir(ino(tree / "dir"))
    with open(tree / "a", "r+b") as handle:
        handle.write(b"journaled")
    result = found(tree, baseline, pending, clean_stop=False)
    assert result.whole == {ino(tree / "a")} and result.dirs == {ino(tree / "dir")}


def test_while_mounted_only_what_bypassed_the_mount_is_news(tree):
    """The periodic rescan: inodes the journal mentions are judged by when the mount
    last changed them, and what the journal already says is not repeated."""
    baseline = scan_path(tree)
    pending, changed_at = ChangeSet(), {}

    def through_the_mount(name, data=b"journaled"):
        with open(tree / name, "r+b") as handle:
            handle.write(data)
        pending.add_range(ino(tree / name), 0, len(data))
        changed_at[ino(tree / name)] = time.time_ns()

    since = time.time_ns()
    through_the_mount("a")
    through_the_mount("b")
    (tree / "dir" / "made-through-the-mount").write_text("new")
    pending.mark_dir(ino(tree / "dir"))
    pending.mark_whole(ino(tree / "dir" / "made-through-the-mount"))
    changed_at[ino(tree / "dir")] = time.time_ns()
    time.sleep(0.05)   # past the coarse clock tick that stamps ctimes
    with open(tree / "b", "r+b") as handle:   # the mount's file, edited behind its back too
        handle.seek(500)
        handle.write(b"bypass")
    with open(tree / "c", "ab") as handle:    # a file only edited behind its back
        handle.write(b"bypass")
    (tree / "new-behind-its-back").write_text("n")
    (tree / "dir" / "also-behind-its-back").write_text("n")   # dir is relisted anyway

    result = mounted_news(tree, baseline, pending, last_change_ns=changed_at.get, since_ns=since)
    assert result.whole == {ino(tree / "b"), ino(tree / "c"), ino(tree / "new-behind-its-back"),
                            ino(tree / "dir" / "also-behind-its-back")}   # new names, as the mount does
    assert result.dirs == {ino(tree)} and not result.data   # "dir" is relisted anyway
    assert result.meta == {ino(tree), ino(tree / "dir")}     # their times moved
    assert not mounted_news(tree, baseline, _union(pending, result),
                            last_change_ns=lambda _: time.time_ns(), since_ns=since)


def test_while_mounted_inodes_journaled_before_this_session_count_from_its_start(tree):
    baseline = scan_path(tree)
    pending = ChangeSet()
    pending.add_range(ino(tree / "a"), 0, 10)     # journaled by an earlier session
    with open(tree / "a", "r+b") as handle:
        handle.write(b"earlier")
    since = time.time_ns()
    assert not mounted_news(tree, baseline, pending, last_change_ns=lambda _: None, since_ns=since)
    time.sleep(0.05)
    with open(tree / "a", "r+b") as handle:
        handle.write(b"bypass")
    result = mounted_news(tree, baseline, pending, last_change_ns=lambda _: None, since_ns=since)
    assert result.whole == {ino(tree / "a")}


def _union(*sets: ChangeSet) -> ChangeSet:
    union = ChangeSet()
    for changes in sets:
        union.update(changes)
    return union


def test_the_view_names_paths_and_expands_added_and_removed_directories(tree):
    baseline = scan_path(tree)
    os.link(tree / "a", tree / "dir" / "a-link")
    with open(tree / "a", "r+b") as handle:
        handle.seek(100)
        handle.write(b"changed")
    os.rename(tree / "dir", tree / "renamed")
    (tree / "renamed" / "sub").mkdir()
    (tree / "renamed" / "sub" / "deep").write_text("d")
    os.truncate(tree / "c", 10)
    changes = ChangeSet()
    changes.add_range(ino(tree / "a"), 100, 107)
    changes.mark_meta(ino(tree / "a"))
    changes.mark_dir(ino(tree))
    changes.mark_dir(ino(tree / "renamed"))
    changes.truncate(ino(tree / "c"), 10)
    view = {(change.path, change.kind, change.ranges) for change in resolve(changes, baseline, scan_path(tree))}
    assert view == {
        (b"", "meta", ()),
        (b"a", "data", ((100, 107),)),
        (b"c", "meta", ()),  # cut to 10 bytes: no range left inside the file
        (b"dir", "removed", ()), (b"dir/x", "removed", ()),
        (b"renamed", "added", ()), (b"renamed/x", "added", ()), (b"renamed/a-link", "added", ()),
        (b"renamed/sub", "added", ()), (b"renamed/sub/deep", "added", ()),
    }


def test_the_view_reports_every_name_of_a_hard_linked_file(tree):
    os.link(tree / "a", tree / "dir" / "second")
    baseline = scan_path(tree)
    changes = ChangeSet()
    changes.mark_whole(ino(tree / "a"))
    view = {(change.path, change.kind) for change in resolve(changes, baseline, scan_path(tree))}
    assert view == {(b"a", "whole"), (b"dir/second", "whole")}


def test_a_path_that_now_names_another_inode_is_removed_and_added(tree):
    baseline = scan_path(tree)
    os.unlink(tree / "b")
    os.mkdir(tree / "b")
    changes = ChangeSet()
    changes.mark_dir(ino(tree))
    view = {(change.path, change.kind) for change in resolve(changes, baseline, scan_path(tree))}
    assert view == {(b"", "meta"), (b"b", "removed"), (b"b", "added")}
