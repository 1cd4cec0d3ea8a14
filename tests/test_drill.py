"""`cloudfs drill` from the command line: a sample restored, verified and removed,
an RTO projected that a full restore then meets, and one clear line for each bad input."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.browse_fixtures import new_repo
from tests.cli_helpers import one_line_error

pytestmark = pytest.mark.timeout(300)


def mixed_tree(root: Path, small: int = 1500, large: int = 4, seed: int = 7) -> None:
    """Many small files in a few dozen directories, and a few larger ones."""
    rng = random.Random(seed)
    for index in range(small):
        directory = root / f"d{index % 37}" / f"e{index % 5}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{index}.txt").write_bytes(rng.randbytes(rng.randint(100, 8000)))
    for index in range(large):
        (root / f"large-{index}.bin").write_bytes(os.urandom(6 << 20))


@pytest.fixture
def mixed_repo(s3_env, tmp_path):
    repo = new_repo(s3_env, tmp_path, block_size=64 << 10, chunk_size=4 << 20)
    source = tmp_path / "source"
    mixed_tree(source)
    repo.take_snapshot(source)
    return repo


def drill(repo, *options, timeout: float = 240) -> subprocess.CompletedProcess:
    return repo.cloudfs("drill", "--json", *options, timeout=timeout)


def test_the_projected_rto_is_within_30_percent_of_a_full_restore(mixed_repo, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = drill(mixed_repo, "--sample", "10%", "--scratch", scratch)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [target] = report["targets"]
    assert target["ok"] and not target["whole"]
    assert 150 <= target["files"] < 1500 and target["snapshot_files"] == 1504
    assert os.listdir(scratch) == []                              # the sample is gone
    started = time.monotonic()
    restored = mixed_repo.cloudfs("restore", "--no-cache", "latest", tmp_path / "full")
    measured = time.monotonic() - started
    assert restored.returncode == 0, restored.stderr
    print(f"projected {target['rto_seconds']:.2f} s, measured {measured:.2f} s, model {target['model']}")
    assert abs(target["rto_seconds"] - measured) <= 0.3 * measured
