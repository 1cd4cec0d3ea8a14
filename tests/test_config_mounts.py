"""Mounting what the configuration file describes: `cloudfs mount NAME`, `--all`, a
protected directory named by its path, and each passphrase source.

Real mounts against the rclone S3 server, stopped by the fixture whatever happens.
"""

from __future__ import annotations

import urllib.request

import pytest

from cloudfs.locals3 import free_port
from cloudfs.snapshot.reader import TreeReader
from tests.cli_helpers import one_line_error
from tests.config_fixtures import configured  # noqa: F401 - fixture
from tests.repo_helpers import PASSPHRASE
from tests.tree_helpers import capture_snapshot

pytestmark = pytest.mark.timeout(180)


def latest_names(setup, name: str) -> set[bytes]:
    repo = setup.repository(name)
    latest = setup.snapshots(name)[-1]
    return set(capture_snapshot(TreeReader(repo), latest.tree)["entries"])


def test_mount_all_protects_every_directory_with_its_own_passphrase_source(configured, monkeypatch):
    secret = configured.base / "documents.pass"
    secret.write_bytes(PASSPHRASE + b"\n")
    configured.add("documents", password_command=["cat", str(secret)], interval="1h")
    configured.add("data", mountpoint=True, password_env="DATA_PASSPHRASE", interval="1h")
    monkeypatch.setenv("DATA_PASSPHRASE", PASSPHRASE.decode())

    result = configured.cloudfs("mount", "--all")
    assert result.stdout.splitlines() == [
        f"documents: {configured.base}/documents mounted on {configured.base}/documents",
        f"data: {configured.base}/data mounted on {configured.base}/mnt-data",
    ]
    for name in ("documents", "data"):
        (configured.mountpoint(name) / f"written-into-{name}").write_text(name)
        configured.cloudfs("snapshot", "--wait", configured.mountpoint(name))
        assert f"written-into-{name}".encode() in latest_names(configured, name)
        assert configured.snapshots(name)[-1].source == configured.entries[name]["source"]

    again = configured.cloudfs("mount", "--all", check=False)
    assert again.returncode == 1
    lines = again.stderr.splitlines()
    assert [line.split(" ", 3)[:3] for line in lines] == [["cloudfs:", "documents:", "error:"],
                                                         ["cloudfs:", "data:", "error:"]]
    assert all("is already mounted" in line for line in lines), lines
    for name in ("documents", "data"):
        configured.cloudfs("umount", configured.mountpoint(name))
        assert not configured.is_mounted(name)


def test_a_failing_passphrase_command_is_one_line_then_a_working_one_mounts(configured):
    configured.add("documents", password_command=["sh", "-c", "echo the keyring is locked >&2; exit 3"])
    result = configured.cloudfs("mount", "documents", "--daemon", check=False)
    assert result.returncode == 2
    assert one_line_error(result) == ("cloudfs: error: password command sh failed (exit status 3): "
                                      "the keyring is locked")
    assert not configured.is_mounted("documents")

    port = free_port()
    configured.entries["documents"].update(password_command=["printf", "%s", PASSPHRASE.decode()],
                                           metrics=f"127.0.0.1:{port}")
    configured.write()
    source = configured.entries["documents"]["source"]
    configured.cloudfs("mount", source, "--daemon")          # by its path: the entry's settings
    assert configured.holder("documents") is not None          # its state_dir, from the entry
    status = configured.cloudfs("status", "--json", source).stdout
    assert f's3://{configured.bucket}/documents' in status
    by_name = configured.cloudfs("status", "--json", "documents").stdout
    assert f's3://{configured.bucket}/documents' in by_name      # NAME: the entry's mount
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert "cloudfs_mount_ready 1.0" in response.read().decode()
