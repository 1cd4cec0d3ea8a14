"""Whole commands as a user types them: cloudfs and restic side by side.

What `tools/bench backup` and `tools/bench restore` share: the data sets (a
random file, Python's standard library), running a command whole (interpreter
start, imports, key derivation and all) for its seconds and peak RSS, dropping
the page cache, a user of each tool with a repository of their own on one S3
server, and checking that what comes back equals what went in, byte for byte.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

PASSWORD = "benchmark passphrase"
CLOUDFS = str(Path(sys.executable).parent / "cloudfs")   # the installed command, as users run it
TIME = "/usr/bin/time"   # GNU time: the peak RSS of the command itself, not of a forking parent


# -- data ---------------------------------------------------------------------------------------


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        for _ in range(size // (64 << 20)):
            handle.write(os.urandom(64 << 20))
        handle.write(os.urandom(size % (64 << 20)))


def copy_stdlib(target: Path) -> int:
    """Python's standard library without site-packages; the number of files."""
    source = Path(sysconfig.get_paths()["stdlib"])
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("site-packages"))
    return sum(len(files) for _, _, files in os.walk(target))


def tree_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def edit_small_files(root: Path, edited: int, new: int, tag: str) -> None:
    """Append to `edited` existing small files and write `new` small files (named by
    `tag`, which must differ between calls), spread over the tree."""
    files = sorted(path for path in root.rglob("*.py") if path.is_file() and path.stat().st_size < 64 << 10)
    for path in files[::max(1, len(files) // edited)][:edited]:
        with open(path, "a") as handle:
            handle.write(f"# edited {tag}\n")
    directories = sorted({path.parent for path in files})
    for index in range(new):
        directory = directories[index * len(directories) // new]
        (directory / f"new-{tag}-{index}.txt").write_text(f"new file {tag} {index}\n" * 40)


# -- running commands ---------------------------------------------------------------------------


def drop_caches() -> None:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def run_command(command: list, env: dict) -> tuple[float, float]:
    """Run a command whole: its seconds and its peak RSS in MiB (GNU time's; wait4's
    would count this process's memory, which a forked child shares until exec)."""
    started = time.perf_counter()
    result = subprocess.run([TIME, "-f", "%M", *map(str, command)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{result.stdout}{result.stderr}")
    return seconds, int(result.stderr.splitlines()[-1]) / 1024


def peak_rss_mib(pid: int) -> float:
    """The peak resident memory (VmHWM) of a running process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the two tools --------------------------------------------------------------------------------


class CloudfsUser:
    """A user of cloudfs with repositories on one S3 server; each `repository()` is new,
    and each command gets `home` as its cache and state (empty at first, as on a new
    machine)."""

    def __init__(self, server, bucket: str, home: Path):
        self.server, self.bucket, self.home = server, bucket, home
        self.env = dict(server.env(), CLOUDFS_PASSWORD=PASSWORD, XDG_CACHE_HOME=str(home / "cache"),
                        XDG_STATE_HOME=str(home / "state"))

    def repository(self, prefix: str) -> None:
        """Make `prefix` the repository of the commands from now on (created, untimed)."""
        self.env["CLOUDFS_REPO"] = f"s3://{self.bucket}/{prefix}"
        self.run("init")

    def fresh_home(self, home: Path) -> None:
        """Empty local caches and state from now on (a cold start)."""
        self.home = home
        self.env.update(XDG_CACHE_HOME=str(home / "cache"), XDG_STATE_HOME=str(home / "state"))

    def run(self, *args) -> tuple[float, float]:
        return run_command([CLOUDFS, *args], self.env)

    def holder(self, source: Path) -> tuple[Path, int]:
        """The state directory of the mount serving `source`, and its daemon's pid."""
        for lock in (Path(self.env["XDG_STATE_HOME"]) / "cloudfs").glob("*/lock"):
            holder = json.loads(lock.read_text() or "{}")
            if holder.get("source") == str(source.resolve()):
                return lock.parent, holder["pid"]
        raise SystemExit(f"no mount serves {source}")


class Restic:
    """restic 0.14+ with a repository of its own on the same server (`restic init`)."""

    def __init__(self, server, bucket: str, cache: Path, prefix: str = "restic"):
        self.env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, AWS_ACCESS_KEY_ID=server.access_key,
                        AWS_SECRET_ACCESS_KEY=server.secret_key, RESTIC_CACHE_DIR=str(cache),
                        RESTIC_REPOSITORY=f"s3:{server.endpoint}/{bucket}/{prefix}")
        self.run("init")

    def run(self, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(["restic", "--no-lock", *args], env=self.env, capture_output=True, text=True)
        if result.returncode != 0 and args[0] != "init":
            raise RuntimeError(f"restic {' '.join(args)} failed: {result.stderr}")
        return result

    def timed(self, *args) -> tuple[float, float]:
        """A restic command whole: seconds and peak RSS (MiB)."""
        return run_command(["restic", *args], self.env)

    def backup(self, path: Path) -> float:
        start = time.perf_counter()
        self.run("backup", "--quiet", str(path))
        return time.perf_counter() - start


def in_turn(tools: list, run: int) -> list:
    """The tools in the order run `run` uses: the first goes first in even runs (run 0,
    the first), the last in odd ones; what ran just before a command moves its time."""
    return tools if run % 2 == 0 else tools[::-1]


def restic_available() -> bool:
    if shutil.which("restic"):
        return True
    subprocess.run(["apt-get", "install", "-y", "-qq", "restic"], capture_output=True)
    return bool(shutil.which("restic"))


# -- checking -------------------------------------------------------------------------------------


def assert_same_tree(original: Path, copy: Path, ignore: tuple[str, ...] = (), top_mode: bool = True) -> None:
    """Raise unless `copy` has the same names, types, modes, symlink targets and
    bytes as `original` (directories recursively; regular files compared whole);
    names in `ignore` are left out at the top, and so is the top's mode unless
    `top_mode` (a snapshot does not record its root directory's own attributes)."""
    first, second = os.lstat(original), os.lstat(copy)
    if stat.S_IFMT(first.st_mode) != stat.S_IFMT(second.st_mode) or (top_mode and first.st_mode != second.st_mode):
        raise SystemExit(f"{copy}: mode {oct(second.st_mode)}, expected {oct(first.st_mode)}")
    if stat.S_ISLNK(first.st_mode):
        if os.readlink(original) != os.readlink(copy):
            raise SystemExit(f"{copy}: another symlink target")
    elif stat.S_ISREG(first.st_mode):
        if not filecmp.cmp(original, copy, shallow=False):
            raise SystemExit(f"{copy}: content differs from {original}")
    elif stat.S_ISDIR(first.st_mode):
        names = sorted(set(os.listdir(original)) - set(ignore))
        if names != sorted(os.listdir(copy)):
            raise SystemExit(f"{copy}: other names than {original}")
        for name in names:
            assert_same_tree(original / name, copy / name)
