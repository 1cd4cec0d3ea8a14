"""The service: unit templates, `cloudfs service install`, and a mount run the way the
unit runs it — Type=notify readiness over $NOTIFY_SOCKET, SIGTERM that seals,
flushes within `snapshot_timeout`, and unmounts.

systemd itself does not run here: the units are written to a temporary unit
directory (and checked with `systemd-analyze verify` where it exists), and the
test plays the service manager: it owns the notification socket and sends
the signals.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cloudfs.snapshot.reader import TreeReader
from cloudfs.system import units
from tests.config_fixtures import configured  # noqa: F401 - fixture
from tests.service_manager import INSTALLED, ServiceManager
from tests.tree_helpers import capture_snapshot

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).parent.parent


def test_the_templates_in_tools_are_the_ones_cloudfs_writes():
    expected = units.templates(units.UnitSettings(cloudfs="/usr/local/bin/cloudfs",
                                                  config="/etc/cloudfs/config.toml"))
    for name, text in expected.items():
        assert (ROOT / "tools" / "systemd" / name).read_text() == text, \
            f"tools/systemd/{name} is stale: write it again from cloudfs.system.units.templates"


def test_service_install_writes_and_enables_the_units(configured, tmp_path):
    configured.add("documents")
    unit_dir = tmp_path / "units"
    result = configured.cloudfs("service", "install", "documents", "--unit-dir", unit_dir,
                                "--before", "smbd.service")
    assert f"wrote {unit_dir}/cloudfs@.service" in result.stdout
    mount_unit = (unit_dir / "cloudfs@.service").read_text()
    assert "Type=notify" in mount_unit
    assert f"ExecStart={INSTALLED} mount %i --config {configured.path}\n" in mount_unit
    drop_in = (unit_dir / "cloudfs@documents.service.d" / "cloudfs.conf").read_text()
    assert f"RequiresMountsFor={configured.base}\n" in drop_in and "Before=smbd.service\n" in drop_in
    wanted = unit_dir / "multi-user.target.wants" / "cloudfs@documents.service"
    assert wanted.is_symlink() and wanted.resolve() == unit_dir / "cloudfs@.service"
    timer = unit_dir / "timers.target.wants" / "cloudfs-maintenance@documents.timer"
    assert timer.resolve() == unit_dir / "cloudfs-maintenance@.timer"
    assert "ExecStart=" in (unit_dir / "cloudfs-maintenance@.service").read_text()
    drill = unit_dir / "timers.target.wants" / "cloudfs-drill@documents.timer"
    assert drill.resolve() == unit_dir / "cloudfs-drill@.timer"
    assert f"ExecStart={INSTALLED} drill %i --config" in (unit_dir / "cloudfs-drill@.service").read_text()
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", "cloudfs@documents.service",
             "cloudfs-maintenance@documents.service", "cloudfs-maintenance@documents.timer",
             "cloudfs-drill@documents.service", "cloudfs-drill@documents.timer"],
            cwd=unit_dir, env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_dir}:"),
            capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0 and verified.stderr == "", verified.stderr
    unknown = configured.cloudfs("service", "install", "nothing", "--unit-dir", unit_dir, check=False)
    assert "no [directories.nothing]" in unknown.stderr and unknown.returncode == 2


def test_maintenance_checks_the_entry_s_repository(configured, monkeypatch):
    configured.add("documents", password_env="DOCS_PASS")
    monkeypatch.setenv("DOCS_PASS", "correct horse battery staple")
    assert "no errors found" in configured.cloudfs("maintenance", "documents").stdout
    drilled = configured.cloudfs("drill", "documents", check=False)        # the entry's repository, opened
    assert "no snapshot to drill yet" in drilled.stderr and drilled.returncode == 2


def test_the_unit_s_command_notifies_ready_and_sigterm_snapshots_then_unmounts(configured, tmp_path):
    configured.add("documents", password_command=["printf", "correct horse battery staple"])
    manager = ServiceManager(tmp_path)
    process = manager.start(configured, "documents", tmp_path / "service.log")
    ready = manager.next_message(timeout=60)
    assert ready["READY"] == "1" and ready["MAINPID"] == str(process.pid)
    assert configured.is_mounted("documents")
    configured.cloudfs("status", configured.mountpoint("documents"))      # answers at once
    (configured.mountpoint("documents") / "written-before-stop").write_text("kept")

    process.send_signal(signal.SIGTERM)
    assert manager.next_message(timeout=30)["STOPPING"] == "1"
    assert process.wait(timeout=60) == 0, (tmp_path / "service.log").read_text()
    assert not configured.is_mounted("documents")
    repo = configured.repository("documents")
    latest = configured.snapshots("documents")[-1]
    assert b"written-before-stop" in capture_snapshot(TreeReader(repo), latest.tree)["entries"]


def test_sigterm_gives_the_final_snapshot_snapshot_timeout_and_no_more(configured, tmp_path):
    configured.add("documents", password_command=["printf", "correct horse battery staple"],
                   bandwidth_limit="32K", snapshot_timeout="2s", interval="1h")
    manager = ServiceManager(tmp_path)
    process = manager.start(configured, "documents", tmp_path / "service.log")
    assert manager.next_message(timeout=60)["READY"] == "1"
    configured.cloudfs("flush", configured.mountpoint("documents"))
    (configured.mountpoint("documents") / "large").write_bytes(os.urandom(1 << 20))   # ~32 s at 32K/s

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert time.monotonic() - started < 10, "the stop waited past snapshot_timeout"
    assert not configured.is_mounted("documents")
    pending = configured.cloudfs("changes", "--journal-only", "--json", "--state-dir",
                                 configured.state_dir("documents"), configured.entries["documents"]["source"])
    assert '"large"' in pending.stdout        # kept in the journal for the next mount
