"""Real programs on the live mount: their own consistency checks must pass, and the
journal's view must match what they changed (checked by the `live` fixture)."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.live_fixtures import live  # noqa: F401 - the fixture

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(*args, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True,
                          capture_output=True, text=True).stdout


def make_repository(path: Path) -> None:
    path.mkdir()
    git("init", "-q", "-b", "main", cwd=path)
    rng = random.Random(7)
    for commit in range(5):
        for index in range(40):
            sub = path / f"pkg{index % 4}"
            sub.mkdir(exist_ok=True)
            lines = [f"line {rng.random()}" for _ in range(rng.randrange(5, 200))]
            (sub / f"module{index}.py").write_text("\n".join(lines))
        (path / "blob.bin").write_bytes(rng.randbytes(300_000))
        git("add", "-A", cwd=path)
        git("commit", "-q", "-m", f"commit {commit}", cwd=path)


@pytest.mark.timeout(180)
def test_git_clone_commit_and_fsck_on_the_mount(live, tmp_path):
    origin = tmp_path / "origin"
    make_repository(origin)
    root = live.mount()
    git("clone", "-q", str(origin), str(root / "clone"), cwd=tmp_path)
    clone = root / "clone"
    (clone / "pkg0" / "module0.py").write_text("changed on the mount\n")
    git("commit", "-q", "-am", "edit through the mount", cwd=clone)
    git("gc", "-q", "--aggressive", cwd=clone)
    git("fsck", "--full", "--strict", cwd=clone)
    assert git("status", "--porcelain", cwd=clone) == ""
    assert len(git("log", "--oneline", cwd=clone).splitlines()) == 6
    live.umount()
    git("fsck", "--full", cwd=live.source / "clone")


@pytest.mark.timeout(180)
def test_tar_extracts_and_compares_equal_on_the_mount(live, tmp_path):
    tree = tmp_path / "tree"
    rng = random.Random(3)
    for index in range(300):
        path = tree / f"d{index % 7}" / f"e{index % 3}" / f"f{index}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.choice([0, 10, 4096, 70_000])))
        os.chmod(path, rng.choice([0o644, 0o600, 0o755]))
    os.symlink("d0/e0/f0", tree / "link")
    os.link(tree / "d1" / "e1" / "f1", tree / "hardlink")
    with open(tree / "sparse", "wb") as sparse:
        sparse.seek(50 << 20)
        sparse.write(b"end")
    os.setxattr(tree / "d2", "user.note", b"kept")
    archive = tmp_path / "tree.tar"
    subprocess.run(["tar", "--xattrs", "-S", "-cf", str(archive), "-C", str(tree), "."], check=True)
    root = live.mount()
    (root / "x").mkdir()
    subprocess.run(["tar", "--xattrs", "-xf", str(archive), "-C", str(root / "x")], check=True)
    diff = subprocess.run(["tar", "--xattrs", "-df", str(archive), "-C", str(root / "x")],
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert os.getxattr(root / "x" / "d2", "user.note") == b"kept"
    # extract again over the existing tree: tar unlinks and recreates every file
    subprocess.run(["tar", "-xf", str(archive), "-C", str(root / "x")], check=True)
    diff = subprocess.run(["tar", "-df", str(archive), "-C", str(root / "x")],
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr


@pytest.mark.timeout(180)
@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_sqlite_transactions_keep_the_database_intact(live, journal_mode):
    root = live.mount()
    database = root / "data.db"
    connection = sqlite3.connect(database)
    connection.execute(f"PRAGMA journal_mode={journal_mode}")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
    rng = random.Random(5)
    for batch in range(60):
        with connection:
            for _ in range(50):
                connection.execute("INSERT INTO items (name, payload) VALUES (?, ?)",
                                   (f"item-{rng.random()}", rng.randbytes(rng.randrange(10, 3000))))
            connection.execute("DELETE FROM items WHERE id % 7 = ?", (batch % 7,))
        if batch % 10 == 9:
            try:
                with connection:
                    connection.execute("UPDATE items SET name = 'rolled back'")
                    raise RuntimeError("abort the transaction")
            except RuntimeError:
                pass
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = connection.execute("SELECT count(*) FROM items").fetchone()[0]
    assert connection.execute("SELECT count(*) FROM items WHERE name = 'rolled back'").fetchone() == (0,)
    connection.execute("VACUUM")
    connection.close()
    live.umount()
    reopened = sqlite3.connect(live.source / "data.db")
    assert reopened.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert reopened.execute("SELECT count(*) FROM items").fetchone()[0] == rows
    reopened.close()
