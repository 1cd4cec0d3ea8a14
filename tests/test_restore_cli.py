"""`cloudfs restore` from the command line: what it restores, where it puts it,
what it refuses, how it resumes, and one clear line for every bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys

import pytest

from cloudfs.browse.names import Catalog, gmt_name
from cloudfs.system.readahead import module_files
from tests.browse_fixtures import BrowseMount, new_repo
from tests.cli_helpers import one_line_error
from tests.tree_helpers import capture_directory, diff, make_rich_tree

pytestmark = pytest.mark.timeout(120)
BLOCK = 4096


@pytest.fixture
def two_snapshots(s3_env, tmp_path):
    repo = new_repo(s3_env, tmp_path, block_size=BLOCK)
    source = tmp_path / "source"
    source.mkdir()
    make_rich_tree(source, BLOCK)
    repo.take_snapshot(source)
    (source / "small.txt").write_text("changed\n")
    (source / "docs" / "added.txt").write_text("added\n")
    repo.take_snapshot(source)
    return repo


def restored_equals(reference, target) -> None:
    differences = diff(reference, capture_directory(target))
    assert not differences, "\n".join(differences[:10])


def test_a_whole_snapshot_is_restored_exactly_with_holes_owners_and_links(two_snapshots, tmp_path):
    repo = two_snapshots
    result = repo.cloudfs("restore", "latest", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    restored_equals(repo.references[1], tmp_path / "out")
    assert os.stat(tmp_path / "out" / "sparse.img").st_blocks * 512 <= 3 * BLOCK      # the hole stayed one
    assert os.stat(tmp_path / "out" / "docs" / "exact-block").st_uid == 1234           # restored as root
    assert os.stat(tmp_path / "out" / "small.txt").st_ino == os.stat(tmp_path / "out" / "docs" / "hardlink.txt").st_ino
    assert "restored" in result.stdout and "hard links" in result.stdout


def test_snapshots_are_picked_by_time_id_gmt_name_or_a_unique_prefix(two_snapshots, tmp_path):
    repo = two_snapshots
    first = repo.snapshots[0]
    catalog = Catalog(repo.snapshots)
    for index, name in enumerate([first.name, first.name.removeprefix("snapshots/"), catalog.time_name(first),
                                  first.name.rsplit("-", 1)[1][:6]]):
        target = tmp_path / f"out-{index}"
        result = repo.cloudfs("restore", name, target)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert (target / "small.txt").read_text() == "hello\n"
    result = repo.cloudfs("restore", gmt_name(repo.snapshots[1]), tmp_path / "by-gmt")
    assert result.returncode == 0 and (tmp_path / "by-gmt" / "small.txt").read_text() == "changed\n"
    assert "ambiguous" in one_line_error(repo.cloudfs("restore", catalog.time_name(first)[:4], tmp_path / "x"))
    assert "no snapshot '1999'" in one_line_error(repo.cloudfs("restore", "1999", tmp_path / "x"))


def test_a_path_goes_into_an_existing_directory_or_becomes_the_target(two_snapshots, tmp_path):
    repo = two_snapshots
    (tmp_path / "existing").mkdir()
    assert repo.cloudfs("restore", "latest:docs/deep/text.py", tmp_path / "existing").returncode == 0
    assert (tmp_path / "existing" / "text.py").read_bytes() == b"def f(x):\n    return x * 2\n" * 5000
    assert repo.cloudfs("restore", "latest:/docs/deep/text.py", tmp_path / "renamed.py").returncode == 0
    assert (tmp_path / "renamed.py").read_bytes() == (tmp_path / "existing" / "text.py").read_bytes()
    assert repo.cloudfs("restore", "latest:docs/", tmp_path / "existing").returncode == 0
    assert sorted(os.listdir(tmp_path / "existing" / "docs")) == \
        sorted(["added.txt", "block-plus-one", "deep", "exact-block", "hardlink.txt"])
    assert stat.S_IMODE(os.stat(tmp_path / "existing" / "docs").st_mode) == 0o750
    assert os.getxattr(tmp_path / "existing" / "docs", "user.dir") == b"on a directory"
    assert "is not in snapshot" in one_line_error(repo.cloudfs("restore", "latest:nope/x", tmp_path / "y"))


def test_existing_files_are_refused_unless_overwrite(two_snapshots, tmp_path):
    repo = two_snapshots
    target = tmp_path / "out"
    target.mkdir()
    (target / "small.txt").write_text("mine\n")
    (target / "unrelated.txt").write_text("keep\n")
    line = one_line_error(repo.cloudfs("restore", "latest", target))
    assert "already exist" in line and "small.txt" in line and "--overwrite" in line
    assert sorted(os.listdir(target)) == ["small.txt", "unrelated.txt"]          # nothing written
    assert (target / "small.txt").read_text() == "mine\n"
    result = repo.cloudfs("restore", "latest", target, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (target / "small.txt").read_text() == "changed\n"
    assert (target / "unrelated.txt").read_text() == "keep\n"


def test_resume_keeps_what_is_identical_and_rewrites_the_rest(two_snapshots, tmp_path):
    repo = two_snapshots
    target = tmp_path / "out"
    assert repo.cloudfs("restore", "latest", target).returncode == 0
    # an interrupted restore: a file cut short, one with a wrong block, one missing, one never finished
    os.truncate(target / "big.bin", 100 * BLOCK)
    os.truncate(target / "big.bin", os.path.getsize(tmp_path / "source" / "big.bin"))
    with open(target / "docs" / "block-plus-one", "r+b") as handle:
        handle.write(b"XXXX")
    os.unlink(target / "docs" / "deep" / "text.py")
    with open(target / "sparse.img", "r+b") as handle:
        handle.seek(10 * BLOCK)
        handle.write(b"not a hole")
    result = repo.cloudfs("restore", "latest", target, "--resume", "--verify")
    assert result.returncode == 0, result.stderr
    restored_equals(repo.references[1], target)
    written = float(result.stdout.split(" MiB written")[0].rsplit(" ", 1)[1])
    assert written < 2.2, result.stdout        # big.bin's 500 missing blocks and a few more, not 2.5 MiB
    assert "already there" in result.stdout


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, grown by calling the returned function."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", disk], check=True)
    try:
        yield disk, lambda size: subprocess.run(["mount", "-o", f"remount,size={size}", disk], check=True)
    finally:
        subprocess.run(["umount", "-l", disk], check=False)


def test_a_full_disk_stops_with_one_line_and_resume_finishes(two_snapshots, small_disk):
    repo = two_snapshots
    disk, grow = small_disk
    line = one_line_error(repo.cloudfs("restore", "latest", disk / "out"))
    assert "No space left on device" in line and "--resume" in line
    grow("64m")
    result = repo.cloudfs("restore", "latest", disk / "out", "--resume")
    assert result.returncode == 0, result.stderr
    restored_equals(repo.references[1], disk / "out")
    assert "already there" in result.stdout


def test_dry_run_says_what_a_restore_would_do_and_writes_nothing(two_snapshots, tmp_path):
    repo = two_snapshots
    plan = repo.cloudfs("restore", "latest", tmp_path / "out", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert not (tmp_path / "out").exists()
    # A loaded machine may fetch a single small span within the sample's second: its
    # size is shown as it is ("0.0 MiB" used to say it had measured nothing).
    estimate = re.search(r"takes about ([0-9.]+) s at ([0-9.]+) (B|KiB|MiB|GiB)/s "
                         r"\(measured on ([0-9.]+) (B|KiB|MiB|GiB) just now\)", plan.stdout)
    assert estimate and float(estimate[4]) > 0, plan.stdout
    result = repo.cloudfs("restore", "latest", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    counts = result.stdout.split(": ", 1)[1].split(", ")[:4]        # files, directories, symlinks, links
    assert plan.stdout.startswith("would restore") and plan.stdout.split(": ", 1)[1].split(", ")[:4] == counts
    assert "already exist" in one_line_error(repo.cloudfs("restore", "latest", tmp_path / "out", "--dry-run"))
    with open(tmp_path / "out" / "sparse.img", "r+b") as handle:     # a hole that is no longer one
        handle.seek(10 * BLOCK)
        handle.write(b"not a hole")
    before = (tmp_path / "out" / "sparse.img").read_bytes()
    assert repo.cloudfs("restore", "latest", tmp_path / "out", "--dry-run", "--resume").returncode == 0
    assert (tmp_path / "out" / "sparse.img").read_bytes() == before, "a dry run wrote to TARGET"


def test_latest_is_chosen_per_directory_where_a_repository_holds_several(s3_env, tmp_path):
    repo = new_repo(s3_env, tmp_path / "repo")
    docs, photos = tmp_path / "docs", tmp_path / "photos"
    for directory, text in ((docs, "a document"), (photos, "a photo")):
        directory.mkdir()
        (directory / "file").write_text(text)
        repo.take_snapshot(directory)
    line = one_line_error(repo.cloudfs("restore", "latest", tmp_path / "x"))
    assert "`latest` is ambiguous" in line and "--source" in line and not (tmp_path / "x").exists()
    result = repo.cloudfs("restore", "latest", tmp_path / "out", "--source", docs)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "file").read_text() == "a document"
    listed = json.loads(repo.cloudfs("snapshots", "--json", "--source", photos).stdout)
    assert [row["source"] for row in listed] == [str(photos)]
    assert json.loads(repo.cloudfs("snapshots", "--json", "--host", "elsewhere").stdout) == []
    line = one_line_error(repo.cloudfs("restore", "latest", tmp_path / "x", "--source", tmp_path / "nope"))
    assert "no snapshot matches" in line and str(docs) in line
    with BrowseMount(repo, None, "--source", str(photos)) as mounted:
        shown = sorted(name for name in os.listdir(mounted.path) if name[0].isdigit())
        assert len(shown) == 1 and (mounted.path / "latest" / "file").read_text() == "a photo"


def test_verify_reads_everything_back(two_snapshots, tmp_path):
    repo = two_snapshots
    result = repo.cloudfs("restore", "latest", tmp_path / "out", "--verify")
    assert result.returncode == 0, result.stderr
    restored_equals(repo.references[1], tmp_path / "out")


def test_bad_inputs_get_one_line(two_snapshots, s3_env, tmp_path):
    repo = two_snapshots
    assert "wrong passphrase" in one_line_error(
        repo.cloudfs("restore", "latest", tmp_path / "x", CLOUDFS_PASSWORD="not it"))
    assert "no snapshot given" in one_line_error(repo.cloudfs("restore", ":docs", tmp_path / "x"))
    assert "--jobs" in one_line_error(repo.cloudfs("restore", "latest", tmp_path / "x", "--jobs", "0"))
    (tmp_path / "a-file").write_text("x")
    assert "not a directory" in one_line_error(repo.cloudfs("restore", "latest", tmp_path / "a-file"))
    empty = new_repo(s3_env, tmp_path / "empty")
    assert "no snapshots yet" in one_line_error(empty.cloudfs("restore", "latest", tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_what_a_restore_imports_was_read_ahead(two_snapshots, tmp_path):
    """From a cold disk a restore's ~550 modules are asked for at once
    (cloudfs.system.readahead); one it imports that is not among them is read
    from disk only when imported, as every module was before."""
    result = two_snapshots.cloudfs("restore", "latest", tmp_path / "out", PYTHONPROFILEIMPORTTIME="1")
    assert result.returncode == 0, result.stderr[-2000:]
    interpreter = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True,
                                 text=True, timeout=60)
    imported = _imported(result.stderr) - _imported(interpreter.stderr)
    assert {"cloudfs.system.readahead", "cloudfs.restore.restorer", "botocore.client"} <= imported
    read_ahead = set(module_files())
    missed = sorted(name for name in imported if (path := _compiled_file(name)) and path not in read_ahead)
    assert missed == []


def _imported(importtime_log: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in importtime_log.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def _compiled_file(name: str) -> str | None:
    """The file the interpreter reads to import `name` (None: built in, not compiled,
    or an optional import that failed)."""
    origin = getattr(sys.modules.get(name), "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    if not origin or not os.path.isfile(origin):
        return None
    path = importlib.util.cache_from_source(origin) if origin.endswith(".py") else origin
    return path if os.path.isfile(path) else None
