"""`--metrics ADDR`: Prometheus text at /metrics that agrees with `cloudfs status --json`.

A real mount with a repository on the rclone server, scraped over HTTP as
Prometheus would; and the refusal of a port that is taken, before anything is
mounted.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cloudfs.locals3 import free_port
from cloudfs.metrics import families
from cloudfs.system import mounttable
from tests.cli_helpers import one_line_error
from tests.live_fixtures import run_cloudfs
from tests.snapshot_fixtures import protected, wait_until  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)


def scrape(port: int) -> dict[str, float]:
    """name -> value of every sample without labels, plus the info labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = sample.labels if sample.labels else sample.value
    return samples


def status_json(protected) -> dict:
    return json.loads(run_cloudfs("status", "--json", protected.source, env=protected.env).stdout)


def test_the_metrics_agree_with_status(protected):
    port = free_port()
    root = protected.mount(None, "--metrics", f"127.0.0.1:{port}", "--interval", "1h")
    (root / "committed.txt").write_text("in a snapshot")
    protected.request("snapshot", wait=True)
    (root / "pending.bin").write_bytes(b"x" * 300_000)
    time.sleep(0.2)

    metrics, status = scrape(port), status_json(protected)
    now = time.time()
    upload = status["upload"]
    assert metrics["cloudfs_mount_ready"] == 1
    assert metrics["cloudfs_mount_info"]["source"] == str(protected.source)
    assert metrics["cloudfs_mount_info"]["repository"] == protected.location
    assert metrics["cloudfs_backlog_files"] == status["pending_files"] == 1
    assert metrics["cloudfs_backlog_bytes"] == status["pending_bytes"] == 300_000
    assert metrics["cloudfs_rpo_seconds"] == pytest.approx(now - status["oldest_change_ns"] / 1e9, abs=2)
    assert metrics["cloudfs_rpo_seconds"] > 0
    assert metrics["cloudfs_sealed_epochs"] == len(status["sealed_epochs"])
    assert metrics["cloudfs_snapshots_committed_total"] == upload["snapshots_committed"] >= 2
    assert metrics["cloudfs_last_snapshot_timestamp_seconds"] == upload["last_snapshot_time_ns"] / 1e9
    assert metrics["cloudfs_last_snapshot_age_seconds"] == pytest.approx(
        now - upload["last_snapshot_time_ns"] / 1e9, abs=2)
    assert metrics["cloudfs_stored_bytes_total"] == upload["bytes_stored"] > 0
    assert metrics["cloudfs_upload_rate_bytes_per_second"] == upload["upload_rate"] > 0
    assert metrics["cloudfs_snapshot_failures_total"] == status["failures"] == 0
    assert metrics["cloudfs_store_up"] == (1 if upload["store_ok"] else 0) == 1
    assert metrics["cloudfs_spool_bytes"] == status["spool_bytes"]
    assert metrics["cloudfs_spool_limit_bytes"] == status["spool_limit"]
    assert metrics["cloudfs_snapshot_interval_seconds"] == status["interval"] == 3600
    assert metrics["cloudfs_next_snapshot_timestamp_seconds"] == status["next_snapshot_ns"] / 1e9

    protected.request("snapshot", wait=True)
    metrics, status = scrape(port), status_json(protected)
    assert metrics["cloudfs_backlog_files"] == status["pending_files"] == 0
    assert metrics["cloudfs_rpo_seconds"] == 0 and status["oldest_change_ns"] is None
    assert metrics["cloudfs_snapshots_committed_total"] == status["upload"]["snapshots_committed"]
    stored = len(protected.snapshots())
    wait_until(lambda: status_json(protected)["upload"]["repository_snapshots"] == stored,
               what="the snapshot count to follow the commit")
    assert scrape(port)["cloudfs_repository_snapshots"] == stored


def test_a_metrics_port_in_use_is_one_line_and_nothing_is_mounted(protected):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cloudfs("mount", "--daemon", "--state-dir", protected.state_dir, "--metrics",
                             f":{port}", protected.source, check=False, env=protected.env)
    assert one_line_error(result) == (f"cloudfs: error: cannot serve metrics on 127.0.0.1:{port}: "
                                      "Address already in use")
    assert result.returncode == 2
    entry = mounttable.mounted_at(str(protected.source))
    assert entry is None or entry.fstype != mounttable.FSTYPE
    assert protected.daemon_pid_or_none() is None


def test_the_sample_alert_rules_use_only_series_that_exist():
    status = {"source": "/s", "mountpoint": "/s", "repository": "s3://b/r", "pending_files": 1,
              "pending_bytes": 2, "oldest_change_ns": 1, "sealed_epochs": [], "failures": 0,
              "spool_bytes": 0, "spool_limit": 1, "interval": 300, "next_snapshot_ns": 2,
              "upload": {"last_snapshot_time_ns": 1, "store_ok": True},
              "last_drill": {"time_ns": 1, "ok": True, "targets": [
                  {"target": None, "ok": True, "rto_seconds": 12.5, "throughput_bytes_per_second": 9}]}}
    exported = set()
    for family in families(status, now_ns=10):
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    rules = yaml.safe_load((Path(__file__).parent.parent / "tools" / "prometheus" / "cloudfs-alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expression in expressions for name in re.findall(r"\bcloudfs_\w+", expression)}
    assert used and used <= exported, used - exported


def test_each_target_has_its_series():
    targets = [{"name": "primary", "error": None, "backlog_objects": 0, "backlog_bytes": 0, "lag_seconds": 0.0},
               {"name": "eu", "error": "cannot reach", "backlog_objects": 3, "backlog_bytes": 900,
                "lag_seconds": 42.0}]
    status = {"source": "/s", "mountpoint": "/s", "repository": "s3://b/r", "upload": {}, "targets": targets}
    samples = {(sample.name, sample.labels.get("target")): sample.value
               for family in families(status, 0) for sample in family.samples}
    assert samples[("cloudfs_target_up", "primary")] == 1 and samples[("cloudfs_target_up", "eu")] == 0
    assert samples[("cloudfs_target_backlog_bytes", "eu")] == 900
    assert samples[("cloudfs_target_lag_seconds", "eu")] == 42.0
