"""New entries get the modes their creator asked for, whatever the daemon's own umask.

Every handler that creates (create, mkdir, mknod, symlink, link) is driven through
a real mount by uid 65534 with no supplementary groups, and by root, each under
several umasks; the result must equal the same calls on a plain directory. The
daemon is started with umask 022, as a user's shell would start it, so a daemon
that applied its own umask on top of the caller's would lose group and other
write bits.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live_fixtures import LiveTree, public_live, run_cloudfs  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)

NOBODY = 65534


@pytest.fixture(autouse=True)
def daemon_umask_022():
    """The mount daemon inherits this process's umask: 022, as from a login shell."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)

CREATORS = {
    "create": "fd = os.open(top + '/new', os.O_CREAT | os.O_WRONLY, 0o6777); os.close(fd)\n"
              "fd = os.open(top + '/shared', os.O_CREAT | os.O_WRONLY, 0o620); os.close(fd)\n",
    "mkdir": "os.mkdir(top + '/new', 0o777)\nos.mkdir(top + '/sticky', 0o1777)\n",
    "mknod": "os.mkfifo(top + '/new', 0o666)\nos.mknod(top + '/sock', stat.S_IFSOCK | 0o672)\n",
    "symlink": "os.symlink('target', top + '/new')\n",
    "link": "fd = os.open(top + '/orig', os.O_CREAT | os.O_WRONLY, 0o664); os.close(fd)\n"
            "os.link(top + '/orig', top + '/new')\n",
}


def as_user(uid: int, umask: int, code: str, *args: str) -> None:
    """Run `code` as `uid` (its own gid, no supplementary groups) with `umask`."""
    become = "" if uid == 0 else f"os.setgroups([])\nos.setgid({uid})\nos.setuid({uid})\n"
    script = f"import os, stat, sys\n{become}os.umask({umask:#o})\ntop = sys.argv[1]\n{code}"
    subprocess.run([sys.executable, "-c", script, *args], check=True, timeout=30)


def modes(top: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, uid, gid) of everything below `top`, by relative path."""
    found = {}
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            found[os.path.relpath(path, top)] = (st.st_mode, st.st_uid, st.st_gid)
    return found


def owned_directory(top: Path, name: str, uid: int) -> Path:
    directory = top / name
    directory.mkdir()
    directory.chmod(0o755)
    os.chown(directory, uid, uid)
    return directory


@pytest.mark.parametrize("handler", sorted(CREATORS))
def test_each_creating_handler_keeps_the_mode_asked_for(public_live, handler):
    root = public_live.mount()
    plain = public_live.base / "plain"
    plain.mkdir()
    for top in (root, plain):
        for uid in (NOBODY, 0):
            for umask in (0, 0o002, 0o027):
                where = owned_directory(top, f"{uid}-{umask:03o}", uid)
                as_user(uid, umask, CREATORS[handler], str(where))
    mounted, expected = modes(root), modes(plain)
    assert mounted == expected
    if handler in ("create", "mkdir"):
        wanted = {"create": stat.S_IFREG | 0o6777, "mkdir": stat.S_IFDIR | 0o777}[handler]
        assert mounted["65534-000/new"] == (wanted, NOBODY, NOBODY)


def test_another_user_writes_to_a_file_created_world_writable_and_set_id_bits_clear(public_live):
    root = public_live.mount()
    plain = public_live.base / "plain"
    plain.mkdir()
    create = "".join(f"fd = os.open(top + '/f{mode:o}', os.O_CREAT | os.O_WRONLY, {mode:#o}); os.close(fd)\n"
                     for mode in (0o4777, 0o2777, 0o6777, 0o666))
    write = ("for name in sorted(os.listdir(top)):\n"
             "    with open(os.path.join(top, name), 'ab') as handle: handle.write(b'x')\n")
    for top in (root, plain):
        shared = top / "shared"
        shared.mkdir()
        shared.chmod(0o755)
        as_user(0, 0, create, str(shared))
        as_user(NOBODY, 0o022, write, str(shared))
    mounted, expected = modes(root), modes(plain)
    assert mounted == expected
    assert mounted["shared/f4777"][0] == stat.S_IFREG | 0o777
    assert (root / "shared" / "f666").read_bytes() == b"x"


def test_another_user_creates_renames_and_removes_in_a_directory_made_0777(public_live):
    root = public_live.mount()
    as_user(0, 0, "os.mkdir(top + '/open', 0o777)\n", str(root))
    assert stat.S_IMODE(os.stat(root / "open").st_mode) == 0o777
    as_user(NOBODY, 0o022,
            "fd = os.open(top + '/open/mine', os.O_CREAT | os.O_WRONLY, 0o644); os.close(fd)\n"
            "os.rename(top + '/open/mine', top + '/open/moved')\n"
            "os.rename(top + '/open/moved', top + '/open/back')\n"
            "os.mkdir(top + '/open/sub')\nos.rmdir(top + '/open/sub')\n"
            "os.unlink(top + '/open/back')\n", str(root))
    assert os.listdir(root / "open") == []


def test_what_the_daemon_writes_for_itself_stays_private(tmp_path):
    """The daemon serves with umask 0 (the callers' umasks apply): its own state
    directory, cache and local repository must still be written owner-only."""
    env = dict(os.environ, CLOUDFS_PASSWORD="modes", XDG_CACHE_HOME=str(tmp_path / "cache"),
               CLOUDFS_REPO=str(tmp_path / "repository"))
    run_cloudfs("init", "--kdf-time", "0.01", env=env)
    tree = LiveTree(tmp_path)
    tree.env = env
    try:
        root = tree.mount()
        (root / "file").write_bytes(os.urandom(300_000))
        run_cloudfs("snapshot", "--wait", root, env=env)
        tree.umount()
    finally:
        tree.cleanup()
    written = [path for top in ("state", "cache", "repository")
               for path in [tmp_path / top, *(tmp_path / top).rglob("*")]]
    assert len(written) > 10
    loose = [f"{path}: {stat.S_IMODE(path.lstat().st_mode):o}" for path in written
             if path.lstat().st_mode & 0o022]
    assert not loose
