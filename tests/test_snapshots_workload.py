"""I2 under a long random workload: every committed snapshot equals the tree at its seal.

Random operations (live_ops: writes, appends, truncates, renames, exchanges, hard
links, unlinks, mkdir/rmdir, chmod, chown, utimes, xattrs, FIFOs, writes through
handles of unlinked files) plus scattered writes, truncates, unlinks and renames of
two larger files, through a real mount with a repository. Between rounds the
test seals (`snapshot` over the control socket, which answers once the epoch is
sealed) and copies the tree at once, its writers paused; the next round runs
while that snapshot uploads (a bandwidth limit keeps it uploading), so
copy-on-write and the graveyard must keep the sealed state. At the end every
snapshot, read back through the repository API, must equal its copy: content,
types, modes, owners, sizes, times, inode numbers, ctimes, xattrs, link targets,
device numbers and hard links.
"""

from __future__ import annotations

import json
import random
import time

import pytest

from tests.live_fixtures import check_view, run_cloudfs, tree_state
from tests.live_ops import Runner, random_op
from tests.snapshot_fixtures import protected, reference_copy  # noqa: F401 - fixture
from tests.tree_helpers import make_rich_tree

pytestmark = pytest.mark.timeout(300)

BIG = ["big1", "big2", "d/big3"]
ROUNDS = 8
OPS_PER_ROUND = 120


def big_file_op(rng: random.Random) -> tuple:
    """An operation on one of the larger files, which span several blocks."""
    path = rng.choice(BIG)
    pick = rng.random()
    if pick < 0.7:
        return ("write", path, rng.randrange(0, 1_600_000), rng.choice([1, 4096, 65536, 150_000]),
                rng.randrange(1000))
    if pick < 0.8:
        return ("truncate", path, rng.choice([0, 100_000, 700_000, 2_000_000]))
    if pick < 0.87:
        return ("unlink", path)
    if pick < 0.94:
        return ("rename", path, rng.choice(BIG), 0)
    return ("link", path, rng.choice(BIG))


def workload_round(runner: Runner, rng: random.Random) -> None:
    for _ in range(OPS_PER_ROUND):
        op = big_file_op(rng) if rng.random() < 0.3 else random_op(rng)
        runner.apply(op)


def without_graveyard(state: dict) -> dict:
    return {path: entry for path, entry in state.items() if not path.startswith(b".cloudfs-graveyard")}


def test_every_snapshot_equals_the_tree_at_its_seal_while_writes_go_on(protected, tmp_path):
    source = protected.source
    make_rich_tree(source, 4096)
    (source / "d").mkdir()
    for index, name in enumerate(BIG):
        (source / name).write_bytes(random.Random(index).randbytes(1_200_000 + index * 300_000))
    initial = reference_copy(source)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    protected.mount(mountpoint, "--interval", "3600", "--bandwidth-limit", "3M")
    protected.flush()
    protected.references[protected.snapshots()[0].time_ns] = initial

    rng = random.Random(4)
    runner = Runner(str(mountpoint))
    try:
        for _ in range(ROUNDS):
            workload_round(runner, rng)      # runs while the previous snapshot uploads
            protected.seal()
        last_seal_state = without_graveyard(tree_state(source))
        protected.flush()
        status = protected.status()

        # Nothing pending after the last commit; then exactly what changes next.
        time.sleep(0.3)
        assert protected.changes(journal_only=True)["changes"] == []
        workload_round(runner, rng)
        runner.close_all()
        time.sleep(0.3)
        now = without_graveyard(tree_state(source))
        problems = check_view(last_seal_state, now, protected.changes(journal_only=True)["changes"])
        assert not problems, "\n".join(problems)
    finally:
        runner.close_all()

    matched = protected.assert_snapshots_match_references()
    assert len(matched) == ROUNDS + 1
    history = status["history"]
    assert sum(entry["cow_copies"] for entry in history) > 0, "no write met a sealed block"
    assert sum(entry["kept_files"] for entry in history) > 0, "no sealed file lost its last name"
    assert all(not entry["full"] for entry in history[1:])
    assert max(entry["stall_ms"] for entry in history) < 500

    # The final snapshot at unmount has the last round; a remount after changes made
    # behind the mount's back (reconcile against the committed manifest) too.
    before_unmount = reference_copy(source)
    protected.umount(mountpoint)
    protected.assert_latest_matches(before_unmount)
    (source / "behind-the-back").write_bytes(b"written while unmounted")
    with open(source / "big2", "ab") as handle:
        handle.write(b"appended while unmounted")
    protected.mount(mountpoint, "--interval", "3600")
    assert protected.status()["upload"]["last_snapshot"] is not None  # known from the manifest
    protected.flush()
    protected.assert_latest_matches()
    protected.umount(mountpoint)
    result = protected.check("--read-data")
    assert result.returncode == 0, result.stdout + result.stderr
    log = protected.log()
    assert "Traceback" not in log and "ERROR" not in log, log


def test_status_reports_the_live_rpo_and_snapshots_from_the_command_line(protected):
    (protected.source / "file").write_bytes(b"x" * 10_000)
    protected.mount(None, "--interval", "3600")
    protected.flush()
    (protected.source / "file").write_bytes(b"y" * 20_000)
    time.sleep(0.2)
    status = json.loads(run_cloudfs("status", "--json", protected.source, env=protected.env).stdout)
    assert status["repository"] == protected.location
    assert status["pending_files"] >= 1 and status["oldest_change_ns"] <= time.time_ns()
    assert time.time_ns() - status["oldest_change_ns"] < 5e9
    text = run_cloudfs("status", protected.source, env=protected.env).stdout
    assert "(RPO)" in text and "spool" in text
    committed = run_cloudfs("snapshot", "--wait", protected.source, env=protected.env).stdout
    assert committed.startswith("committed snapshots/")
    status = json.loads(run_cloudfs("status", "--json", protected.source, env=protected.env).stdout)
    assert status["oldest_change_ns"] is None and status["pending_files"] == 0
    listed = run_cloudfs("snapshots", env=protected.env).stdout
    assert len(listed.strip().splitlines()) == 2
    protected.assert_latest_matches()
