"""Logs: one line per event, as JSON with --log-format json, and never a secret.

A whole run — init, mount, writes, snapshots, restore, unmount — at the most
verbose level, and every line it logged (the mount's log file and every
command's output) is searched for the passphrase, the store's secret key and
the repository's keys, in every form they could be printed in.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.live_fixtures import run_cloudfs
from tests.repo_helpers import PASSPHRASE
from tests.snapshot_fixtures import protected  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)

LOUD = ["-vv", "--log-format", "json"]


def forms(secret: bytes) -> list[str]:
    """The ways a secret could appear in text."""
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode().rstrip("="), repr(secret)[2:-1],
            *([secret.decode()] if secret.isascii() else [])]


def test_a_whole_run_logs_json_lines_and_no_secret(protected, tmp_path):
    outputs = []

    def cloudfs(*args):
        result = run_cloudfs(*LOUD, *args, env=protected.env, timeout=120)
        outputs.append(result.stdout + result.stderr)
        return result

    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_bytes(PASSPHRASE)
    repository = ["--password-file", str(passphrase_file)]
    cloudfs("mount", "--daemon", "--state-dir", protected.state_dir, *repository, protected.source)
    protected.mounted_at.append(protected.source)
    (protected.source / "document.txt").write_text("the content of a document\n")
    (protected.source / "big.bin").write_bytes(bytes(range(256)) * 4096)
    cloudfs("snapshot", "--wait", protected.source)
    (protected.source / "document.txt").write_text("a second version\n")
    cloudfs("snapshot", "--wait", protected.source)
    cloudfs("restore", *repository, "latest", tmp_path / "restored")
    assert (tmp_path / "restored" / "document.txt").read_text() == "a second version\n"
    cloudfs("umount", protected.source)

    mount_log = protected.log()
    events = [json.loads(line) for line in mount_log.splitlines() if line.strip()]
    assert events, "the mount logged nothing at -vv"
    assert all({"time", "level", "logger", "message"} <= event.keys() for event in events)
    assert any(event["level"] == "debug" for event in events)

    master = protected.repository().master
    secrets = [PASSPHRASE, protected.env["AWS_SECRET_ACCESS_KEY"].encode(), master.secret,
               master.blob_id_key, master.config_key, master.index_key, master.snapshot_key]
    everything = "\n".join([mount_log, *outputs])
    for secret in secrets:
        for form in forms(secret):
            assert form not in everything, f"a secret was logged ({form[:6]}…)"
