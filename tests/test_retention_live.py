"""Tags and forget with a real live mount: `cloudfs snapshot --tag` goes over the control
socket to the daemon, which writes the tags into the snapshot object; forget beside the
running mount removes what the rules do not keep, and the mount goes on committing."""

from __future__ import annotations

import json

import pytest

from tests.live_fixtures import run_cloudfs
from tests.snapshot_fixtures import protected  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)


def snapshot(protected, *options) -> str:
    result = run_cloudfs("snapshot", "--wait", *options, protected.source, env=protected.env)
    return result.stdout.strip().removeprefix("committed ")


def test_tags_reach_the_snapshot_through_the_daemon_and_forget_keeps_tagged_ones(protected):
    root = protected.mount(None, "--interval", "3600")
    first = protected.flush()["snapshot"]
    (root / "report.txt").write_text("draft")
    tagged = snapshot(protected, "--tag", "release-1", "--tag", "before-upgrade", "--tag", "release-1")
    (root / "report.txt").write_text("second draft")
    middle = snapshot(protected)
    (root / "report.txt").write_text("final")
    latest = snapshot(protected)

    by_name = {s.name: s for s in protected.snapshots()}
    assert by_name[tagged].tags == ("release-1", "before-upgrade") and by_name[latest].tags == ()
    refused = run_cloudfs("snapshot", "--tag", "two words", protected.source, check=False, env=protected.env)
    assert refused.returncode != 0 and "is not a tag" in refused.stderr
    listing = json.loads(run_cloudfs("snapshots", "--json", env=protected.env).stdout)
    assert {row["name"]: row["tags"] for row in listing}[tagged] == ["release-1", "before-upgrade"]

    report = json.loads(run_cloudfs("forget", "--json", "--keep-last", "1", "--keep-tag", "release-1",
                                    "--source", protected.source, env=protected.env).stdout)
    assert set(report["removed"]) == {first, middle}
    assert [s.name for s in protected.snapshots()] == [tagged, latest]

    (root / "report.txt").write_text("after forget")          # the mount goes on as before
    assert snapshot(protected) not in (tagged, latest)
    protected.assert_latest_matches()
    assert protected.check().returncode == 0
