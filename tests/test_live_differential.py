"""Differential tests: random operation sequences on the mount and on a plain directory
must observe the same results and errnos and leave the same trees (contents, modes,
owners, link counts, hard links, xattrs). The `live` fixture then checks the journal's
view of what changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.live_fixtures import live, public_live  # noqa: F401 - fixtures
from tests.live_ops import Runner, random_op, random_ops, snapshot


def assert_same_trees(mount_root: str, plain_root: str, when: str) -> None:
    mounted, plain = snapshot(mount_root), snapshot(plain_root)
    if mounted == plain:
        return
    differences = [f"{path}: mount {mounted['entries'].get(path)} plain {plain['entries'].get(path)}"
                   for path in sorted(mounted["entries"].keys() | plain["entries"].keys())
                   if mounted["entries"].get(path) != plain["entries"].get(path)]
    if mounted["links"] != plain["links"]:
        differences.append(f"hard links: mount {mounted['links']} plain {plain['links']}")
    raise AssertionError(f"trees differ {when}:\n  " + "\n  ".join(differences))


def run_side_by_side(mount_root: str, plain_root: str, ops: list, check_every: int = 50) -> None:
    on_mount, on_plain = Runner(mount_root), Runner(plain_root)
    try:
        for index, op in enumerate(ops):
            got, want = on_mount.apply(op), on_plain.apply(op)
            assert got == want, f"operation {index} {op}: mount gave {got}, plain directory {want}"
            if index % check_every == check_every - 1:
                assert_same_trees(mount_root, plain_root, f"after operation {index}")
    finally:
        on_mount.close_all()
        on_plain.close_all()
    assert_same_trees(mount_root, plain_root, "at the end")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_operation_sequences_match_a_plain_directory(live, tmp_path, seed):
    root = live.mount()
    plain = tmp_path / "plain"
    plain.mkdir()
    run_side_by_side(str(root), str(plain), random_ops(seed, 700))


@pytest.mark.timeout(280)
def test_shrinkable_operation_sequences_match_a_plain_directory(live, tmp_path):
    """The same property with hypothesis, which shrinks a failure to a minimal sequence."""
    root = live.mount()
    plain = tmp_path / "plain"
    plain.mkdir()
    runs = iter(range(10**6))
    operation = st.randoms(use_true_random=False).map(random_op)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(operation, max_size=40))
    def sequences_agree(ops):
        name = f"run{next(runs)}"
        os.mkdir(root / name)
        os.mkdir(plain / name)
        run_side_by_side(str(root / name), str(plain / name), ops, check_every=10)

    sequences_agree()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [11, 12])
def test_operations_as_an_ordinary_user_get_the_same_permission_errors(public_live, seed):
    """Permission checks as the kernel makes them (default_permissions), for uid 1000."""
    root = public_live.mount()
    plain = public_live.base / "plain"
    for top in (root, plain):
        os.makedirs(top / "shared", exist_ok=True)
        os.chmod(top / "shared", 0o1777)
        (top / "shared" / "roots-file").write_text("root's")
        os.chmod(top / "shared" / "roots-file", 0o644)
        os.mkdir(top / "shared" / "d")
        os.chown(top / "shared" / "d", 1000, 1000)
    ops = [op for op in random_ops(seed, 500, as_root=False)]
    results = []
    for top in (root, plain):
        completed = subprocess.run(
            [sys.executable, "-m", "tests.live_ops", str(top / "shared"), "1000", "1000"],
            input=json.dumps(ops), capture_output=True, text=True, timeout=120,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert completed.returncode == 0, completed.stderr
        results.append(json.loads(completed.stdout))
    for index, (got, want) in enumerate(zip(*results)):
        assert got == want, f"operation {index} {ops[index]}: mount gave {got}, plain directory {want}"
    assert_same_trees(str(root / "shared"), str(plain / "shared"), "at the end")
