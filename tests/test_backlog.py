"""A target's backlog survives a restart, in order, and what was found missing goes first."""

from __future__ import annotations

import pytest

from cloudfs.store.backlog import Backlog

pytestmark = pytest.mark.timeout(30)


def test_the_backlog_survives_a_restart_in_order(tmp_path):
    path = tmp_path / "targets" / "eu.backlog"
    backlog = Backlog(path)
    for name, size in [("chunks/aa/1", 100), ("index/2", 10), ("snapshots/3", 5)]:
        backlog.add(name, size)
    backlog.done("chunks/aa/1")
    backlog.close()
    with open(path, "a") as handle:
        handle.write("+ 12")                                # a line cut by a crash
    again = Backlog(path)
    assert again.names() == ["index/2", "snapshots/3"] and again.bytes == 15
    again.put_first([("chunks/bb/4", 1000), ("index/2", 10)])   # already waiting: keeps its place
    again.close()
    assert Backlog(path).names() == ["chunks/bb/4", "index/2", "snapshots/3"]


def test_an_empty_backlog_leaves_a_small_file(tmp_path, monkeypatch):
    monkeypatch.setattr("cloudfs.store.backlog.COMPACT_BYTES", 100)
    path = tmp_path / "eu.backlog"
    backlog = Backlog(path)
    for index in range(10):
        backlog.add(f"chunks/aa/{index:064d}", 1)
    for index in range(10):
        backlog.done(f"chunks/aa/{index:064d}")
    assert len(backlog) == 0 and path.stat().st_size == 0
