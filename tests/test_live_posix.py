"""The live mount behaves like the directory it covers, one POSIX behaviour per test.

Each test mounts a real FUSE filesystem (over SOURCE unless it says otherwise) and,
through the `live` fixture, ends by checking that the journal's view of what
changed matches what did.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import stat
import time

import pytest

from cloudfs.system import syscalls
from cloudfs.live.journal import read_journal
from tests.live_fixtures import live, public_live  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def test_files_written_through_the_mount_land_in_source_at_the_same_paths(live):
    (live.source / "old.txt").write_text("before mounting\n")
    root = live.mount()
    assert (root / "old.txt").read_text() == "before mounting\n"
    (root / "dir").mkdir()
    (root / "dir" / "new.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    data = (root / "dir" / "new.bin").read_bytes()
    live.umount()
    assert (live.source / "dir" / "new.bin").read_bytes() == data


def test_a_separate_mountpoint_shows_source_and_inode_numbers_match(live, tmp_path):
    (live.source / "f").write_text("x")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    live.mount(mountpoint)
    assert os.stat(mountpoint / "f").st_ino == os.stat(live.source / "f").st_ino
    assert os.stat(mountpoint).st_ino == os.stat(live.source).st_ino
    (mountpoint / "g").write_text("y")
    live.umount(mountpoint)
    assert (live.source / "g").read_text() == "y"


def test_hard_links_share_one_inode_and_count_links(live):
    root = live.mount()
    (root / "a").write_text("shared")
    os.link(root / "a", root / "b")
    os.mkdir(root / "d")
    os.link(root / "a", root / "d" / "c")
    assert os.stat(root / "a").st_nlink == 3
    assert len({os.stat(root / name).st_ino for name in ("a", "b", "d/c")}) == 1
    with open(root / "b", "a") as appended:
        appended.write(" more")
    assert (root / "d" / "c").read_text() == "shared more"
    os.unlink(root / "a")
    assert os.stat(root / "b").st_nlink == 2
    with pytest.raises(PermissionError):
        os.link(root / "d", root / "d2")  # no hard links to directories


def test_rename_replaces_refuses_with_noreplace_and_swaps_with_exchange(live):
    root = live.mount()
    (root / "a").write_text("A")
    (root / "b").write_text("B")
    os.mkdir(root / "d")
    root_b = os.fsencode(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            syscalls.renameat2(fd, b"a", fd, b"b", RENAME_NOREPLACE)
        syscalls.renameat2(fd, b"a", fd, b"b", RENAME_EXCHANGE)
        assert (root / "a").read_text() == "B" and (root / "b").read_text() == "A"
        syscalls.renameat2(fd, b"a", fd, b"d", RENAME_EXCHANGE)  # a file and a directory
        assert (root / "a").is_dir() and (root / "d").read_text() == "B"
        with pytest.raises(FileNotFoundError):
            syscalls.renameat2(fd, b"missing", fd, b"b", RENAME_EXCHANGE)
        syscalls.renameat2(fd, b"b", fd, b"c", RENAME_NOREPLACE)
    finally:
        os.close(fd)
    os.rename(root / "c", root / "d")  # replaces d
    assert sorted(os.listdir(root_b)) == [b"a", b"d"]
    assert (root / "d").read_text() == "A"
    with pytest.raises(OSError) as raised:
        os.rename(root / "a", root / "a" / "inside")
    assert raised.value.errno == errno.EINVAL


def test_an_unlinked_or_renamed_open_file_keeps_working(live):
    root = live.mount()
    path = root / "open.txt"
    path.write_text("0123456789")
    with open(path, "r+b") as handle:
        os.unlink(path)
        handle.seek(0, os.SEEK_END)
        handle.write(b"abc")
        handle.flush()
        os.fsync(handle.fileno())
        handle.seek(0)
        assert handle.read() == b"0123456789abc"
        assert os.fstat(handle.fileno()).st_nlink == 0
        os.fchmod(handle.fileno(), 0o600)
        assert stat.S_IMODE(os.fstat(handle.fileno()).st_mode) == 0o600
    (root / "moving").write_text("m")
    with open(root / "moving", "r+") as handle:
        os.rename(root / "moving", root / "moved")
        handle.write("M")
    assert (root / "moved").read_text() == "M"
    assert not (root / "open.txt").exists()


def test_utimens_sets_times_and_honours_now_and_omit(live):
    root = live.mount()
    path = root / "t"
    path.write_text("t")
    os.utime(path, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    syscalls.set_times(os.fsencode(path), None, 3_000_000_789, True)  # atime: UTIME_OMIT
    st = os.stat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 3_000_000_789)
    before = time.time_ns()
    os.utime(path)  # both UTIME_NOW
    st = os.stat(path)
    assert st.st_mtime_ns >= before - 10_000_000 and st.st_atime_ns >= before - 10_000_000
    os.symlink("t", root / "link")
    os.utime(root / "link", ns=(5, 6), follow_symlinks=False)
    assert os.lstat(root / "link").st_mtime_ns == 6
    assert os.stat(path).st_mtime_ns != 6
    live.umount()
    assert os.lstat(live.source / "link").st_mtime_ns == 6


def test_extended_attributes_are_stored_listed_and_removed(live):
    root = live.mount()
    path = root / "x"
    path.write_text("x")
    os.setxattr(path, "user.colour", b"blue")
    os.setxattr(path, "user.empty", b"")
    assert os.getxattr(path, "user.colour") == b"blue"
    assert sorted(os.listxattr(path)) == ["user.colour", "user.empty"]
    with pytest.raises(OSError) as raised:
        os.getxattr(path, "user.missing")
    assert raised.value.errno == errno.ENODATA
    with pytest.raises(FileExistsError):
        os.setxattr(path, "user.colour", b"red", os.XATTR_CREATE)
    os.removexattr(path, "user.colour")
    assert os.listxattr(path) == ["user.empty"]
    os.mkdir(root / "d")
    os.setxattr(root / "d", "user.on-a-dir", b"1")
    os.symlink("x", root / "l")
    with pytest.raises(PermissionError):  # user.* is not allowed on symlinks
        os.setxattr(root / "l", "user.a", b"1", follow_symlinks=False)
    live.umount()
    assert os.getxattr(live.source / "d", "user.on-a-dir") == b"1"


def test_sparse_file_beyond_4_gib_keeps_its_holes(live):
    root = live.mount()
    path = root / "sparse"
    with open(path, "wb") as handle:
        handle.seek(5 << 30)
        handle.write(b"far")
        handle.seek(1 << 20)
        handle.write(b"near")
    st = os.stat(path)
    assert st.st_size == (5 << 30) + 3
    assert st.st_blocks * 512 < 1 << 20
    with open(path, "rb") as handle:
        handle.seek(5 << 30)
        assert handle.read() == b"far"
        handle.seek((1 << 20) - 2)
        assert handle.read(8) == b"\0\0near\0\0"
    live.umount()
    assert os.stat(live.source / "sparse").st_blocks * 512 < 1 << 20


def test_mmap_writes_reach_the_file_and_the_journal(live):
    root = live.mount()
    path = root / "mapped"
    path.write_bytes(b"\0" * 65536)
    with open(path, "r+b") as handle:
        with mmap.mmap(handle.fileno(), 65536) as mapping:
            mapping[40000:40005] = b"mmap!"
            mapping.flush()
    live.umount()
    assert (live.source / "mapped").read_bytes()[40000:40005] == b"mmap!"


def test_fifos_sockets_and_device_nodes_are_created(live):
    root = live.mount()
    os.mkfifo(root / "fifo", 0o640)
    assert stat.S_ISFIFO(os.stat(root / "fifo").st_mode)
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert os.stat(root / "null").st_rdev == os.makedev(1, 3)
    with open(root / "null", "wb") as null:
        null.write(b"into the void")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(os.fsdecode(root / "sock"))
        assert stat.S_ISSOCK(os.stat(root / "sock").st_mode)
    finally:
        server.close()


def test_open_flags_append_truncate_and_exclusive(live):
    root = live.mount()
    path = root / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"hello")
    os.close(fd)
    with pytest.raises(FileExistsError):
        os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b" world")  # O_APPEND: at the end whatever the offset
    os.close(fd)
    assert path.read_bytes() == b"hello world"
    fd = os.open(path, os.O_RDWR | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.write(fd, b"new")
    os.close(fd)
    assert path.read_bytes() == b"new"
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(OSError) as raised:
        os.write(fd, b"x")
    assert raised.value.errno == errno.EBADF
    os.close(fd)
    os.chmod(path, 0o200)
    fd = os.open(path, os.O_WRONLY)  # write-only file opened write-only: works
    os.write(fd, b"N")
    os.close(fd)
    os.chmod(path, 0o644)
    assert path.read_bytes() == b"New"


def test_truncate_shrinks_and_extends_with_zeros(live):
    root = live.mount()
    path = root / "t"
    path.write_bytes(b"x" * 10000)
    os.truncate(path, 100)
    os.truncate(path, 5000)
    data = path.read_bytes()
    assert data == b"x" * 100 + b"\0" * 4900
    with open(path, "r+b") as handle:
        handle.truncate(0)
        handle.write(b"abc")
    assert path.read_bytes() == b"abc"


def test_statfs_reports_the_backing_filesystem(live):
    root = live.mount()
    mounted, backing = os.statvfs(root), os.statvfs(live.base)
    assert mounted.f_bsize == backing.f_bsize
    assert mounted.f_blocks == backing.f_blocks
    assert mounted.f_namemax == backing.f_namemax


def test_a_large_directory_is_listed_completely_while_it_changes(live):
    root = live.mount()
    directory = root / "many"
    directory.mkdir()
    names = {f"file-{index:05}" for index in range(5000)}
    for name in names:
        (directory / name).touch()
    assert set(os.listdir(directory)) == names
    seen = []
    with os.scandir(directory) as listing:
        for index, entry in enumerate(listing):
            seen.append(entry.name)
            if index == 100:
                for extra in range(50):  # changes during the listing may show or not,
                    (directory / f"late-{extra}").touch()  # but nothing is skipped or repeated
                for victim in sorted(names)[-20:]:
                    os.unlink(directory / victim)
    assert len(seen) == len(set(seen))
    survivors = names - set(sorted(names)[-20:])
    assert survivors <= set(seen)


def test_fsync_returns_only_after_the_journal_has_the_write(live):
    root = live.mount()
    for attempt in range(5):
        path = root / f"synced-{attempt}"
        with open(path, "wb") as handle:
            handle.write(b"s" * 10000)
            handle.flush()
            os.fsync(handle.fileno())
            ino = os.fstat(handle.fileno()).st_ino
            pending = read_journal(live.state_dir).pending()
            assert ino in pending.whole or (ino in pending.data and pending.data[ino].covers(0, 10000))


def test_symlinks_read_and_change_as_themselves(live):
    root = live.mount()
    os.symlink("target/of/link", root / "l")
    assert os.readlink(root / "l") == "target/of/link"
    assert os.lstat(root / "l").st_size == len("target/of/link")
    os.chown(root / "l", 1234, 5678, follow_symlinks=False)
    assert (os.lstat(root / "l").st_uid, os.lstat(root / "l").st_gid) == (1234, 5678)
    with pytest.raises(FileNotFoundError):
        open(root / "l")
    os.link(root / "l", root / "l2", follow_symlinks=False)
    assert os.readlink(root / "l2") == "target/of/link"


def test_posix_fallocate_works_through_the_fallback(live):
    root = live.mount()
    path = root / "allocated"
    with open(path, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, 1 << 20)
    assert os.stat(path).st_size == 1 << 20
    assert path.read_bytes() == b"\0" * (1 << 20)


def test_many_files_and_directories_do_not_exhaust_descriptors(live):
    """The daemon holds no descriptor per inode (RLIMIT_NOFILE is 20,000 here)."""
    root = live.mount()
    for top in range(30):
        directory = root / f"d{top}"
        directory.mkdir()
        for index in range(800):
            (directory / f"f{index}").write_bytes(b"z")
    count = sum(len(files) for _, _, files in os.walk(root))
    assert count == 24000
    pid = live.daemon_pid()
    assert len(os.listdir(f"/proc/{pid}/fd")) < 2000


def test_names_that_are_not_utf8_work_through_the_mount(live):
    root = os.fsencode(live.mount())
    odd = os.path.join(root, b"caf\xe9 \n tab\t")
    with open(odd, "wb") as handle:
        handle.write(b"latin-1 name")
    assert b"caf\xe9 \n tab\t" in os.listdir(root)
    os.rename(odd, odd + b"\xff")
    assert open(odd + b"\xff", "rb").read() == b"latin-1 name"


def _as_user(uid: int, gid: int, code: str, *args: str) -> None:
    import subprocess
    import sys

    script = f"import os, sys\nos.setgroups([])\nos.setgid({gid})\nos.setuid({uid})\nos.umask(0o022)\n{code}"
    subprocess.run([sys.executable, "-c", script, *args], check=True, timeout=30)


def test_new_entries_belong_to_the_caller_and_follow_setgid_directories(public_live):
    """Created by uid 1000 (group 1000) in a setgid directory of group 2000: the same
    owners and modes as on the plain directory, set-gid bits included."""
    root = public_live.mount()
    plain = public_live.base / "plain"
    plain.mkdir()
    create = ("top = sys.argv[1]\n"
              "fd = os.open(top + '/file', os.O_CREAT | os.O_WRONLY, 0o2775); os.close(fd)\n"
              "os.mkdir(top + '/dir', 0o775)\n"
              "os.mkfifo(top + '/fifo')\n"
              "os.symlink('file', top + '/link')\n"
              "fd = os.open(top + '/dir/nested', os.O_CREAT | os.O_WRONLY, 0o644); os.close(fd)\n")
    for top in (root, plain):
        shared = top / "shared"
        shared.mkdir()
        os.chown(shared, 0, 2000)
        os.chmod(shared, 0o2777)
        _as_user(1000, 1000, create, str(shared))
        (top / "own").mkdir()
        os.chown(top / "own", 1000, 1000)
        _as_user(1000, 1000, create, str(top / "own"))

    def owners(top):
        return {os.path.relpath(os.path.join(directory, name), top): (st.st_uid, st.st_gid, st.st_mode)
                for directory, dirs, files in os.walk(top)
                for name in dirs + files
                for st in [os.lstat(os.path.join(directory, name))]}

    mounted, expected = owners(root), owners(plain)
    assert mounted == expected
    assert mounted["shared/dir"][1] == 2000 and mounted["shared/dir"][2] & stat.S_ISGID
    assert mounted["own/file"] == (1000, 1000, stat.S_IFREG | 0o2755)


CONCURRENT_WRITER = """
import hashlib, os, sys
root, worker = sys.argv[1], int(sys.argv[2])
mine = os.path.join(root, f"w{worker}")
os.mkdir(mine)
for index in range(150):
    data = hashlib.sha256(f"{worker}-{index}".encode()).digest() * (index % 40 + 1)
    temp = os.path.join(mine, f".tmp{index}")
    with open(temp, "wb") as handle:
        handle.write(data)
        if index % 10 == 0:
            handle.flush()
            os.fsync(handle.fileno())
    os.rename(temp, os.path.join(mine, f"f{index % 20}"))
    with open(os.path.join(root, "shared.log"), "ab") as log:
        log.write(f"{worker} {index}\\n".encode())
"""


def test_concurrent_writers_with_fsync_and_renames_lose_nothing(live):
    import hashlib
    import subprocess
    import sys

    root = live.mount()
    workers = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(root), str(worker)])
               for worker in range(4)]
    assert [worker.wait(timeout=100) for worker in workers] == [0, 0, 0, 0]
    live.umount()
    for worker in range(4):
        for slot in range(20):
            index = 140 + slot if 140 + slot < 150 else 120 + slot
            expected = hashlib.sha256(f"{worker}-{index}".encode()).digest() * (index % 40 + 1)
            assert (live.source / f"w{worker}" / f"f{slot}").read_bytes() == expected
    lines = (live.source / "shared.log").read_text().splitlines()
    assert sorted(lines) == sorted(f"{worker} {index}" for worker in range(4) for index in range(150))
