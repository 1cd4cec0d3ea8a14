"""The snapshot mount as a user sees it: one folder per snapshot, `latest`, the
Samba view, the per-file history, new snapshots without remounting, EROFS for
every kind of write, and one clear line for every bad start."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cloudfs.browse.names import Catalog, gmt_name
from cloudfs.system import mounttable
from cloudfs.system.statedir import StateDir
from tests.browse_fixtures import BrowseMount, new_repo
from tests.cli_helpers import one_line_error
from tests.tree_helpers import capture_directory, diff, make_rich_tree

pytestmark = pytest.mark.timeout(120)
BLOCK = 4096


@pytest.fixture
def five_snapshots(s3_env, tmp_path):
    """Five snapshots of a directory: report.odt changed, changed, unchanged,
    changed, unchanged; notes.txt only chmod-ed once; gone.txt deleted after
    the second and brought back identical in the fifth."""
    repo = new_repo(s3_env, tmp_path, block_size=BLOCK)
    source = tmp_path / "source"
    source.mkdir()
    make_rich_tree(source, BLOCK)
    report, notes, gone = source / "report.odt", source / "docs" / "notes.txt", source / "gone.txt"
    notes.write_text("notes\n")
    gone.write_bytes(b"here, then not, then here\n")
    os.utime(gone, ns=(1_700_000_000_000_000_000,) * 2)
    steps = [
        lambda: report.write_bytes(b"version one\n"),
        lambda: report.write_bytes(b"version two, longer\n"),
        lambda: notes.chmod(0o600),
        lambda: (report.write_bytes(b"version three\n" * 2000), gone.unlink()),
        lambda: (gone.write_bytes(b"here, then not, then here\n"),
                 os.utime(gone, ns=(1_700_000_000_000_000_000,) * 2)),
    ]
    contents = []
    for step in steps:
        step()
        repo.take_snapshot(source)
        contents.append(report.read_bytes())
    return repo, source, contents


def test_each_snapshot_is_a_folder_named_by_its_time_and_latest_points_at_the_newest(five_snapshots):
    repo, _, _ = five_snapshots
    catalog = Catalog(repo.snapshots)
    with BrowseMount(repo) as mount:
        names = sorted(os.listdir(mount.path))
        expected = sorted([catalog.time_name(s) for s in repo.snapshots] + ["latest", "history", "@GMT"])
        assert names == expected
        assert all(":" not in name for name in names)
        assert os.readlink(mount / "latest") == catalog.time_name(repo.snapshots[-1])
        for snapshot, reference in zip(repo.snapshots, repo.references):
            shown = capture_directory(mount / catalog.time_name(snapshot))
            assert not diff(reference, shown), diff(reference, shown)[:5]
        assert not diff(repo.references[-1], capture_directory(mount / "latest"))


def test_the_samba_view_names_snapshots_the_way_vfs_shadow_copy2_expects(five_snapshots):
    repo, _, _ = five_snapshots
    with BrowseMount(repo) as mount:
        names = os.listdir(mount / "@GMT")
        # Five snapshots taken within a second or two share @GMT names: the newest of a second wins.
        assert sorted(names) == sorted({gmt_name(s) for s in repo.snapshots})
        newest = mount / "@GMT" / gmt_name(repo.snapshots[-1])
        assert not diff(repo.references[-1], capture_directory(newest))
        assert os.stat(newest / "small.txt").st_ino != os.stat(mount / "latest" / "small.txt").st_ino


def test_history_lists_exactly_the_versions_in_which_a_file_changed(five_snapshots):
    repo, _, contents = five_snapshots
    catalog = Catalog(repo.snapshots)
    name = lambda index, ext: catalog.time_name(repo.snapshots[index]) + ext  # noqa: E731
    with BrowseMount(repo) as mount:
        versions = sorted(os.listdir(mount / "history" / "report.odt"))
        assert versions == sorted([name(0, ".odt"), name(1, ".odt"), name(3, ".odt")])
        for index in (0, 1, 3):
            assert (mount / "history" / "report.odt" / name(index, ".odt")).read_bytes() == contents[index]
        # a change of mode alone is a version; an unchanged file has one
        assert sorted(os.listdir(mount / "history" / "docs" / "notes.txt")) == \
            sorted([name(0, ".txt"), name(2, ".txt")])
        assert stat.S_IMODE(os.stat(mount / "history" / "docs" / "notes.txt" / name(2, ".txt")).st_mode) == 0o600
        assert os.listdir(mount / "history" / "small.txt") == [name(0, ".txt")]
        # deleted and brought back identical: still one version
        assert os.listdir(mount / "history" / "gone.txt") == [name(0, ".txt")]
        # folders list the union of their children over all snapshots
        assert {"report.odt", "docs", "gone.txt", "big.bin"} <= set(os.listdir(mount / "history"))
        assert "deep" in os.listdir(mount / "history" / "docs")


def test_new_snapshots_appear_without_remounting(five_snapshots):
    repo, source, _ = five_snapshots
    with BrowseMount(repo) as mount:
        assert len(os.listdir(mount.path)) == 5 + 3
        (source / "report.odt").write_bytes(b"the newest version\n")
        newest = repo.take_snapshot(source)
        name = Catalog(repo.snapshots).time_name(newest)
        # looking up the new name finds it at once; the listing and `latest` follow
        assert (mount / name / "report.odt").read_bytes() == b"the newest version\n"
        assert name in os.listdir(mount.path)
        deadline = time.monotonic() + 5
        while os.readlink(mount / "latest") != name and time.monotonic() < deadline:
            time.sleep(0.2)
        assert os.readlink(mount / "latest") == name
        assert (mount / "latest" / "report.odt").read_bytes() == b"the newest version\n"
        assert len(os.listdir(mount / "history" / "report.odt")) == 4


def test_every_kind_of_write_fails_with_erofs(five_snapshots, tmp_path):
    repo, _, _ = five_snapshots
    outside = tmp_path / "outside"
    outside.write_text("x")
    with BrowseMount(repo) as mount:
        inside = mount / "latest"
        file, folder = inside / "small.txt", inside / "docs"
        attempts = {
            "create": lambda: open(inside / "new", "w"),
            "open for writing": lambda: open(file, "r+b"),
            "append": lambda: open(file, "ab"),
            "truncate": lambda: os.truncate(file, 0),
            "mkdir": lambda: os.mkdir(inside / "new-dir"),
            "rmdir": lambda: os.rmdir(inside / "empty-dir"),
            "unlink": lambda: os.unlink(file),
            "rename": lambda: os.rename(file, inside / "renamed"),
            "hard link": lambda: os.link(file, inside / "linked"),
            "symlink": lambda: os.symlink("x", inside / "symlinked"),
            "mkfifo": lambda: os.mkfifo(inside / "fifo"),
            "chmod": lambda: os.chmod(file, 0o777),
            "chown": lambda: os.chown(file, 1, 1),
            "utime": lambda: os.utime(file, (0, 0)),
            "setxattr": lambda: os.setxattr(file, "user.x", b"y"),
            "removexattr": lambda: os.removexattr(file, "user.comment"),
            "write into a folder's xattrs": lambda: os.setxattr(folder, "user.x", b"y"),
            "top level": lambda: os.mkdir(mount / "2099-01-01T000000Z"),
            "history": lambda: open(mount / "history" / "new", "w"),
            "rename into": lambda: os.rename(outside, inside / "moved-in"),
        }
        for what, attempt in attempts.items():
            with pytest.raises(OSError) as caught:
                attempt()
            assert caught.value.errno in (errno.EROFS, errno.EXDEV), f"{what}: {caught.value}"
            assert caught.value.errno == errno.EROFS or what == "rename into", what
        assert capture_directory(inside) == repo.references[-1]


def test_umount_and_signals_stop_the_mount_and_a_dead_one_is_cleared(five_snapshots):
    repo, _, _ = five_snapshots
    mount = BrowseMount(repo)
    with mount:
        state = StateDir(next((repo.state_home / "cloudfs").glob("browse-*")))
        holder = state.holder()
        assert holder is not None and holder.mountpoint == str(mount.path)
        os.kill(holder.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while mounttable.mounted_at(str(mount.path)) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mounttable.mounted_at(str(mount.path)) is None
    with mount:
        pid = state.holder().pid
        os.kill(pid, signal.SIGKILL)
        while state.holder() is not None:
            time.sleep(0.05)
        assert mounttable.mounted_at(str(mount.path)) is not None   # left behind, dead
    with mount:                                                     # cleared and mounted again
        assert os.path.isdir(mount / "latest")


def test_a_wrong_passphrase_is_one_line_and_nothing_is_mounted(five_snapshots):
    repo, _, _ = five_snapshots
    (repo.base / "mnt").mkdir()
    result = repo.cloudfs("browse", repo.base / "mnt", "--daemon", CLOUDFS_PASSWORD="not it")
    assert "wrong passphrase" in one_line_error(result)
    assert mounttable.mounted_at(str(repo.base / "mnt")) is None


def test_no_repository_and_bad_mount_points_are_one_line(s3_env, tmp_path):
    repo = new_repo(s3_env, tmp_path)
    (tmp_path / "mnt").mkdir()
    result = repo.cloudfs("browse", tmp_path / "mnt", CLOUDFS_REPO=f"s3://{repo.bucket}/nothing-here")
    assert "no cloudfs repository" in one_line_error(result)
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in one_line_error(repo.cloudfs("browse", tmp_path / "file"))
    assert "does not exist" in one_line_error(repo.cloudfs("browse", tmp_path / "missing"))
    (tmp_path / "mnt" / "something").write_text("x")
    assert "is not empty" in one_line_error(repo.cloudfs("browse", tmp_path / "mnt"))


def test_an_empty_repository_mounts_empty_and_fills_when_snapshots_come(s3_env, tmp_path):
    repo = new_repo(s3_env, tmp_path)
    source = tmp_path / "source"
    source.mkdir()
    (source / "first.txt").write_text("first\n")
    with BrowseMount(repo, None, "--refresh", "0.5") as mount:
        assert sorted(os.listdir(mount.path)) == ["@GMT", "history"]
        assert os.listdir(mount / "history") == []
        assert not os.path.lexists(mount / "latest")
        repo.take_snapshot(source)
        deadline = time.monotonic() + 10
        while not os.path.lexists(mount / "latest") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (mount / "latest" / "first.txt").read_text() == "first\n"


def test_the_mount_is_owner_only_unless_allow_other(five_snapshots):
    repo, _, _ = five_snapshots
    with BrowseMount(repo):
        assert "allow_other" not in _options(repo.base / "mnt")
    with BrowseMount(repo, None, "--allow-other"):
        assert "allow_other" in _options(repo.base / "mnt")


def _options(path) -> str:
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            if fields[4] == str(path):
                return line
    raise AssertionError(f"{path} is not mounted")


def test_hard_links_inside_a_snapshot_are_one_inode(five_snapshots):
    repo, _, _ = five_snapshots
    with BrowseMount(repo) as mount:
        first = os.stat(mount / "latest" / "small.txt")
        second = os.stat(mount / "latest" / "docs" / "hardlink.txt")
        assert first.st_ino == second.st_ino and first.st_nlink == 2
        Path("/proc/sys/vm/drop_caches").write_text("2")   # dentries and inodes: both names forgotten
        time.sleep(0.5)
        again = os.stat(mount / "latest" / "docs" / "hardlink.txt")
        assert again.st_ino == first.st_ino         # a copy meeting a name later still sees one file
        result = subprocess.run(["du", "-k", "--apparent-size", "-s", str(mount / "latest" / "sparse.img")],
                                capture_output=True, text=True)
        assert result.returncode == 0
        assert os.stat(mount / "latest" / "sparse.img").st_blocks * 512 < 3 * BLOCK   # a hole is a hole


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_ls_l_asks_for_labels_and_acls_once_per_mount_not_per_entry(five_snapshots, tmp_path):
    repo, _, _ = five_snapshots
    trace = tmp_path / "ls.trace"
    with BrowseMount(repo) as mount:
        inside = mount / "latest"
        entries = len(os.listdir(inside))
        result = subprocess.run(["strace", "-f", "-e", "trace=getxattr,lgetxattr", "-o", str(trace),
                                 "ls", "-l", f"{inside}/"], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        asked = [line for line in trace.read_bytes().splitlines() if b"getxattr(" in line]
        assert entries >= 8 and len(asked) <= 3, asked
        with pytest.raises(OSError) as caught:
            os.getxattr(inside / "small.txt", "security.selinux")
        assert caught.value.errno == errno.ENOTSUP
        with pytest.raises(OSError) as caught:
            os.getxattr(inside / "small.txt", "user.not-there")
        assert caught.value.errno == errno.ENODATA
        assert capture_directory(inside) == repo.references[-1]    # recorded xattrs read as they were


@pytest.mark.skipif(shutil.which("testparm") is None, reason="Samba's testparm is not installed")
def test_the_samba_example_in_the_docs_parses_as_written(tmp_path):
    """smb.conf has no inline comments: the example's values must be exactly the
    paths and words meant, as Samba's own parser reads them."""
    document = (Path(__file__).parent.parent / "docs" / "browse.md").read_text()
    example = re.search(r"```ini\n(.*?)```", document, re.S).group(1)
    conf = tmp_path / "smb.conf"
    conf.write_text("[global]\n" + example)
    result = subprocess.run(["testparm", "-s", str(conf)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    share = result.stdout[result.stdout.index("[data]"):]
    parsed = dict(line.strip().split(" = ", 1) for line in share.splitlines()[1:] if " = " in line)
    assert parsed == {
        "path": "/srv/data",
        "vfs objects": "shadow_copy2",
        "shadow:mountpoint": "/srv/data",
        "shadow:basedir": "/srv/data",
        "shadow:snapdir": "/mnt/cloudfs-history/@GMT",
        "shadow:format": "@GMT-%Y.%m.%d-%H.%M.%S",
        "shadow:localtime": "no",
        "shadow:sort": "desc",
    }
    snapshot = SimpleNamespace(time_ns=1_764_000_000_123_456_789)
    assert gmt_name(snapshot) == time.strftime(parsed["shadow:format"], time.gmtime(1_764_000_000))
