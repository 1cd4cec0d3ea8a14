"""Prune beside a real live mount that writes and snapshots throughout.

The mount alternates files between contents that forget and prune make
garbage and bring back (dedup hits on doomed chunks), while another thread
runs `cloudfs forget` and `cloudfs prune --grace 2s` in a loop, with
repacking. Afterwards every snapshot still listed equals the tree at its seal,
`check --read-data` is clean, and the prunes did delete chunks meanwhile.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from tests.live_fixtures import run_cloudfs
from tests.snapshot_fixtures import protected  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(300)

VERSIONS = [os.urandom(150_000) for _ in range(3)]


def prune_loop(protected, stop: threading.Event, reports: list, errors: list) -> None:
    env = protected.env
    while not stop.is_set():
        try:
            run_cloudfs("forget", "--keep-last", "3", env=env)
            result = run_cloudfs("prune", "--grace", "2s", "--max-unused", "0%", "--json", env=env, timeout=120)
            reports.append(json.loads(result.stdout))
        except AssertionError as error:
            errors.append(str(error))
            return
        time.sleep(0.3)


def test_every_committed_snapshot_restores_while_prunes_run_beside_the_mount(protected):
    root = protected.mount(None, "--interval", "3600")
    (root / "stable.bin").write_bytes(os.urandom(400_000))
    protected.seal()
    protected.flush()
    stop, reports, errors = threading.Event(), [], []
    pruner = threading.Thread(target=prune_loop, args=(protected, stop, reports, errors))
    pruner.start()
    try:
        deadline, step = time.monotonic() + 20, 0
        while time.monotonic() < deadline and not errors:
            step += 1
            (root / "cycling.bin").write_bytes(VERSIONS[step % len(VERSIONS)])
            (root / f"note-{step % 4}.txt").write_text(f"step {step}\n" * 200)
            protected.seal()
            time.sleep(0.4)
        protected.flush()
    finally:
        stop.set()
        pruner.join(timeout=180)
    assert not errors, errors[0]
    protected.umount()

    swept = [sweep for report in reports for sweep in report["swept"]]
    assert sum(sweep["chunks"] for sweep in swept) > 0, reports
    matched = protected.assert_snapshots_match_references()
    assert len(matched) >= 3
    checked = protected.check("--read-data")
    assert checked.returncode == 0, checked.stdout
    print(f"\n{step} seals, {len(reports)} prunes, {len(swept)} sweeps deleting "
          f"{sum(s['chunks'] for s in swept)} chunks, {sum(s['rescued'] for s in swept)} rescued")
