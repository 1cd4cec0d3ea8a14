"""The issue's acceptance test: every snapshot of a long random workload, copied
out of the browse mount with `cp -a` and restored with `cloudfs restore`,
equals the reference copy taken when it was made, byte for byte and in
metadata (types, modes, owners, sizes, mtimes, symlinks, xattrs, devices and
hard links)."""

from __future__ import annotations

import os
import random
import stat
import subprocess

import pytest

from cloudfs.browse.names import Catalog
from tests.browse_fixtures import BrowseMount, new_repo
from tests.tree_helpers import capture_directory, diff, make_rich_tree

BLOCK = 4096
SNAPSHOTS = 10
STEPS_PER_SNAPSHOT = 40


class Workload:
    """Random changes of every kind a protected tree sees, reproducible by seed."""

    def __init__(self, root, seed: int):
        self.root = root
        self.rng = random.Random(seed)

    def files(self) -> list[str]:
        return [os.path.join(d, f) for d, _, fs in os.walk(self.root) for f in fs
                if stat.S_ISREG(os.lstat(os.path.join(d, f)).st_mode)]

    def directories(self) -> list[str]:
        return [d for d, _, _ in os.walk(self.root)]

    def data(self) -> bytes:
        size = self.rng.choice([0, 1, 100, BLOCK - 1, BLOCK, 3 * BLOCK + 7, 20_000, 300 * BLOCK + 11])
        if self.rng.random() < 0.3:
            return bytes([self.rng.randrange(256)]) * size      # compressible, dedup across files
        return self.rng.randbytes(size)

    def step(self) -> None:
        getattr(self, self.rng.choice([
            "create", "create", "overwrite", "overwrite", "append", "truncate", "remove", "rename",
            "mkdir", "chmod", "xattr", "hardlink", "symlink", "touch", "chown", "sparse"]))()

    def _pick_file(self):
        files = self.files()
        return self.rng.choice(files) if files else None

    def create(self):
        path = os.path.join(self.rng.choice(self.directories()), f"f{self.rng.randrange(10**6)}")
        with open(path, "wb") as handle:
            handle.write(self.data())

    def overwrite(self):
        if path := self._pick_file():
            size = os.path.getsize(path)
            with open(path, "r+b") as handle:
                handle.seek(self.rng.randrange(size + 1))
                handle.write(self.rng.randbytes(self.rng.randrange(1, 3 * BLOCK)))

    def append(self):
        if path := self._pick_file():
            with open(path, "ab") as handle:
                handle.write(self.data())

    def truncate(self):
        if path := self._pick_file():
            os.truncate(path, self.rng.randrange(2 * os.path.getsize(path) + BLOCK))

    def sparse(self):
        path = os.path.join(self.rng.choice(self.directories()), f"s{self.rng.randrange(10**6)}")
        with open(path, "wb") as handle:
            handle.write(b"head")
            handle.seek(self.rng.randrange(BLOCK, 50 * BLOCK))
            handle.write(b"tail")

    def remove(self):
        if path := self._pick_file():
            os.unlink(path)

    def rename(self):
        if path := self._pick_file():
            os.rename(path, os.path.join(self.rng.choice(self.directories()), f"r{self.rng.randrange(10**6)}"))

    def mkdir(self):
        os.mkdir(os.path.join(self.rng.choice(self.directories()), f"d{self.rng.randrange(10**6)}"))

    def chmod(self):
        target = self._pick_file() if self.rng.random() < 0.7 else self.rng.choice(self.directories()[1:] or [None])
        if target:
            os.chmod(target, self.rng.choice([0o600, 0o640, 0o644, 0o755, 0o700, 0o444, 0o4755]))

    def xattr(self):
        if path := self._pick_file():
            name = f"user.k{self.rng.randrange(3)}"
            if self.rng.random() < 0.3 and name in os.listxattr(path):
                os.removexattr(path, name)
            else:
                os.setxattr(path, name, self.rng.randbytes(self.rng.randrange(1, 40)))

    def hardlink(self):
        if path := self._pick_file():
            os.link(path, os.path.join(self.rng.choice(self.directories()), f"h{self.rng.randrange(10**6)}"))

    def symlink(self):
        target = self.rng.choice(["../x", "f1", "/etc/hostname", "a" * 200])
        os.symlink(target, os.path.join(self.rng.choice(self.directories()), f"l{self.rng.randrange(10**6)}"))

    def touch(self):
        if path := self._pick_file():
            moment = self.rng.randrange(10**9, 2 * 10**9) * 10**9 + self.rng.randrange(10**9)
            os.utime(path, ns=(moment, moment))

    def chown(self):
        if (path := self._pick_file()) and os.geteuid() == 0:
            os.chown(path, self.rng.randrange(2000), self.rng.randrange(2000))


@pytest.mark.timeout(300)
def test_every_snapshot_copied_out_or_restored_equals_its_reference(s3_env, tmp_path):
    repo = new_repo(s3_env, tmp_path, block_size=BLOCK, chunk_size=256 << 10)
    source = tmp_path / "source"
    source.mkdir()
    make_rich_tree(source, BLOCK)
    workload = Workload(source, seed=20261126)
    for _ in range(SNAPSHOTS):
        repo.take_snapshot(source)
        for _ in range(STEPS_PER_SNAPSHOT):
            workload.step()
    catalog = Catalog(repo.snapshots)
    out = tmp_path / "out"
    out.mkdir()
    with BrowseMount(repo) as mount:
        for index, (snapshot, reference) in enumerate(zip(repo.snapshots, repo.references)):
            copy = out / f"copy-{index}"
            result = subprocess.run(["cp", "-a", str(mount / catalog.time_name(snapshot)), str(copy)],
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            differences = diff(reference, capture_directory(copy))
            assert not differences, f"cp -a of snapshot {index}:\n" + "\n".join(differences[:10])
    for index, (snapshot, reference) in enumerate(zip(repo.snapshots, repo.references)):
        restored = out / f"restored-{index}"
        result = repo.cloudfs("restore", snapshot.name, restored)
        assert result.returncode == 0, result.stdout + result.stderr
        differences = diff(reference, capture_directory(restored))
        assert not differences, f"restore of snapshot {index}:\n" + "\n".join(differences[:10])
    assert len({str(r["entries"]) for r in repo.references}) == SNAPSHOTS   # every snapshot differed
