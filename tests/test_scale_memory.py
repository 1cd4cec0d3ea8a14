"""Memory stays flat in the number of files (I8), measured as a user runs cloudfs.

The same job on 20,000 and on 100,000 small files, in one run: the peak resident
memory of the process (the kernel's VmHWM) may differ by at most 15 MB. Anything
kept per file or per blob in memory — 100 bytes each is 8 MB here — shows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.snapshot_fixtures import new_protected

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

COUNTS = (20_000, 100_000)
LIMIT_MB = 15


def make_small_files(root: Path, count: int) -> None:
    """`count` files of 100-1,100 distinct bytes in directories of 1,000."""
    for index in range(count):
        directory = root / f"d{index // 1000:03d}"
        if index % 1000 == 0:
            directory.mkdir()
        (directory / f"f{index:06d}.txt").write_bytes(b"%d " % index * (index % 100 + 30))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_the_mount_daemon_is_flat_in_the_file_count(s3_env, tmp_path):
    """First snapshot (full capture, every file read) and a remount, per size."""
    peaks = {}
    for count in COUNTS:
        tree = new_protected(tmp_path / f"n{count}", s3_env)
        try:
            make_small_files(tree.source, count)
            tree.mount()
            tree.flush(timeout=600)
            first = peak_rss_mb(tree.daemon_pid())
            tree.umount()
            tree.mount()           # reconcile walks every entry against the manifest
            tree.flush(timeout=600)
            peaks[count] = max(first, peak_rss_mb(tree.daemon_pid()))
            assert len(tree.snapshots()) >= 1
            tree.umount()
        finally:
            tree.cleanup()
    small, large = peaks[COUNTS[0]], peaks[COUNTS[1]]
    print(f"daemon peak RSS: {small:.1f} MB at {COUNTS[0]} files, {large:.1f} MB at {COUNTS[1]}")
    assert large - small < LIMIT_MB, peaks
    assert os.environ.get("CLOUDFS_SCALE_STRICT") != "1" or large < 150
