"""Memory stays flat in the number of files (I8) when snapshots are read back:
the browse mount listing every entry, and `cloudfs restore` writing every file.

One repository holding a snapshot of a tree of 20,000 small files and one of
a tree of 100,000 (directories of 1,000, as in test_scale_memory.py); each is
browsed by a fresh mount that shows only it (`--source`) and restored by a
fresh process, in one run. The peak resident memory (VmHWM of the browse
daemon, the restore's maximum RSS) may differ by at most 15 MB between the
two sizes: anything kept per file in memory — 100 bytes each is 8 MB here —
shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from cloudfs.repo import Repository
from cloudfs.system.statedir import StateDir, browse_state_dir
from cloudfs.uploader import snapshot_directory
from tests.conftest import point_boto3_at
from tests.browse_fixtures import CLOUDFS, BrowseMount, new_repo
from tests.repo_helpers import PASSPHRASE
from tests.test_scale_memory import COUNTS, LIMIT_MB, make_small_files, peak_rss_mb

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


@pytest.fixture(scope="module")
def stored(s3_server, tmp_path_factory):
    """A repository with a snapshot of n20000/ and one of n100000/."""
    base = tmp_path_factory.mktemp("reading")
    source = base / "source"
    for count in COUNTS:
        (source / f"n{count}").mkdir(parents=True)
        make_small_files(source / f"n{count}", count)
    with pytest.MonkeyPatch.context() as patch:
        point_boto3_at(s3_server, patch)
        repo = new_repo(s3_server, base, block_size=64 << 10, chunk_size=16 << 20)
        trio.run(take_snapshots, repo, [source / f"n{count}" for count in COUNTS])
    return repo


async def take_snapshots(repo, sources: list) -> None:
    opened = await Repository.open(repo.store(), PASSPHRASE, use_cache=False)
    try:
        for source in sources:
            await snapshot_directory(opened, source)
    finally:
        await opened.close()


def tree(repo, count: int) -> str:
    return str(repo.base / "source" / f"n{count}")


def browse_peak_mb(repo, count: int) -> float:
    """A fresh mount lists every entry of the tree (`find -ls`: readdirplus and
    every attribute); the daemon's peak RSS."""
    with BrowseMount(repo, repo.base / f"mnt{count}", "--source", tree(repo, count)) as mount:
        listed = subprocess.run(["find", "-H", str(mount / "latest"), "-ls"], capture_output=True, text=True,
                                check=True)
        assert listed.stdout.count("\n") == count + count // 1000 + 1
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("XDG_STATE_HOME", str(repo.state_home))
            state = StateDir(browse_state_dir(mount.path))
        return peak_rss_mb(state.holder().pid)


def restore_peak_mb(repo, count: int) -> float:
    """`cloudfs restore latest` of the tree into a new directory; the process's maximum RSS."""
    target = repo.base / f"restored{count}"
    peak = peak_rss_of_command([*CLOUDFS, "restore", "latest", str(target), "--source", tree(repo, count),
                                "--no-progress"], repo.env(), repo.base / "maxrss")
    assert sum(len(files) for _, _, files in os.walk(target)) == count
    subprocess.run(["rm", "-rf", str(target)])
    return peak


# A small process forks and execs the command and reports its maximum RSS. The
# figure wait4 gives this (large) test process for its own child would include
# this process's memory: a forked child counts it until exec.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_of_command(command: list, env: dict, result: Path) -> float:
    launched = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(result), *command], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert launched.returncode == 0, launched.stderr
    return int(result.read_text()) / 1024


def flat(what: str, peaks: dict[int, float]) -> None:
    small, large = peaks[COUNTS[0]], peaks[COUNTS[1]]
    print(f"{what} peak RSS: {small:.1f} MB at {COUNTS[0]} files, {large:.1f} MB at {COUNTS[1]}")
    assert large - small < LIMIT_MB, peaks


def test_the_browse_mount_is_flat_in_the_file_count(stored):
    flat("browse daemon", {count: browse_peak_mb(stored, count) for count in COUNTS})


def test_restore_is_flat_in_the_file_count(stored):
    flat("restore", {count: restore_peak_mb(stored, count) for count in COUNTS})
