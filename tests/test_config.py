"""The configuration file: what it may say, and every mistake named by file, line and key.

Checked through `cloudfs.settings.load` (fast, no mount) and `cloudfs config
check` as a user runs it; the mounts it drives are in tests/test_config_mounts.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cloudfs import settings
from cloudfs.errors import UsageError
from tests.cli_helpers import cloudfs, one_line_error

pytestmark = pytest.mark.timeout(60)

GOOD = """\
# defaults for every directory
interval = "15min"
repository = "s3://bucket/shared"
password_file = "/etc/cloudfs/pass"

[directories.documents]
source = "{base}/documents"
repository = "s3://bucket/documents"
exclude = ["*.tmp", ".cache"]
bandwidth_limit = "20M"
password_command = "secret-tool lookup cloudfs documents"
metrics = "127.0.0.1:9477"

[directories.documents.retention]
keep_daily = 7
keep_weekly = "unlimited"
keep_within = "2w"

[directories.data]
source = "{base}/data"
mountpoint = "{base}/mnt/data"
rescan_interval = "off"
spool_size = 4294967296
snapshot_timeout = 90
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(UsageError) as raised:
        settings.load(write(tmp_path, text))
    return str(raised.value)


def test_every_setting_is_parsed_and_the_defaults_fill_each_entry(tmp_path):
    config = settings.load(write(tmp_path, GOOD.format(base=tmp_path)))
    documents, data = config.directories["documents"], config.directories["data"]
    assert documents.source == f"{tmp_path}/documents" and documents.mountpoint == documents.source
    assert documents.settings["interval"] == 900 and documents.settings["bandwidth_limit"] == 20 << 20
    assert documents.settings["repository"] == "s3://bucket/documents"
    assert documents.settings["password_command"] == ["secret-tool", "lookup", "cloudfs", "documents"]
    assert "password_file" not in documents.settings      # its own passphrase source replaces the default
    assert documents.retention == {"keep_daily": 7, "keep_weekly": "unlimited", "keep_within": "2w"}
    assert data.mountpoint == f"{tmp_path}/mnt/data" and data.settings["repository"] == "s3://bucket/shared"
    assert data.settings["rescan_interval"] == "off" and data.settings["spool_size"] == 4 << 30
    assert data.settings["snapshot_timeout"] == 90 and data.settings["password_file"] == "/etc/cloudfs/pass"
    assert config.protecting(f"{tmp_path}/data/") is data


@pytest.mark.parametrize("text, line, expected", [
    ('interval = "5m"\nintervall = 5\n', 2, "unknown setting 'intervall'"),
    ('[directories.a]\nsource = "/srv/a"\n\ncompresion = "zstd"\n', 4, "[directories.a] unknown setting 'compresion'"),
    ('[directories.a]\nsource = "/srv/a"\ninterval = [1]\n', 3, "[directories.a] interval: must be a number or a string"),
    ('[directories.a]\nsource = "/srv/a"\nspool_size = "lots"\n', 3, "spool_size: not a size: 'lots'"),
    ('[directories.a]\nsource = "relative/path"\n', 2, "source: must be an absolute path"),
    ('[directories.a]\n"source" = "/srv/a"\nallow_other = "yes"\n', 3, "allow_other: must be true or false"),
    ('[directories.a]\nsource = "/srv/a"\ncompression = "lz4"\n', 3, "compression: not a compression: 'lz4'"),
    ('[directories.a]\nsource = "/srv/a"\nmetrics = "everywhere"\n', 3, "metrics: not an address"),
    ('[directories.a]\nsource = "/srv/a"\n[directories.a.retention]\nkeep_daily = 0\n', 4,
     "[directories.a.retention] keep_daily: must be a count of at least 1"),
    ('[directories.a]\nsource = "/srv/a"\nretention = { keep_dayly = 3 }\n', 3,
     "[directories.a.retention] unknown rule 'keep_dayly'"),
    ('[directories.a]\nsource = "/srv/a"\n[directories.a.retention]\nkeep_within = "a while"\n', 4,
     "keep_within: not a duration"),
    ('[directories.a]\nmountpoint = "/mnt/a"\n', 1, "[directories.a] needs source"),
    ('source = "/srv/a"\n', 1, "unknown setting 'source'"),
    ('[directories.a]\nsource = "/srv/a"\npassword_file = "/p"\npassword_env = "PASS"\n', 4,
     "give one of password_file, password_env, password_command, not password_file and password_env"),
    ('[directories.a]\nsource = "/srv/a"\npassword_env = "NOT A NAME"\n', 3,
     "password_env: must be the name of an environment variable"),
])
def test_each_mistake_is_named_by_file_line_and_key(tmp_path, text, line, expected):
    message = refusal(tmp_path, text)
    assert message.startswith(f"{tmp_path}/config.toml:{line}: "), message
    assert expected in message


def test_two_entries_protecting_the_same_directory_are_refused(tmp_path):
    same = ('[directories.a]\nsource = "/srv/data"\n\n[directories.b]\nsource = "/srv/data/"\n')
    message = refusal(tmp_path, same)
    assert message.startswith(f"{tmp_path}/config.toml:5: ")
    assert "[directories.b] source /srv/data overlaps source /srv/data of [directories.a]" in message
    inside = ('[directories.a]\nsource = "/srv/data"\n[directories.b]\nsource = "/srv/other"\n'
              'mountpoint = "/srv/data/view"\n')
    assert "[directories.b] mountpoint /srv/data/view overlaps source /srv/data" in refusal(tmp_path, inside)
    ports = ('[directories.a]\nsource = "/a"\nmetrics = ":9477"\n[directories.b]\nsource = "/b"\n'
             'metrics = ":9477"\n')
    assert "metrics 127.0.0.1:9477 is already [directories.a]'s" in refusal(tmp_path, ports.replace(
        'metrics = ":9477"\n[directories.b]', 'metrics = "127.0.0.1:9477"\n[directories.b]'))


def test_a_file_that_is_not_toml_or_not_there(tmp_path):
    assert "is not valid TOML" in refusal(tmp_path, "interval = [")
    with pytest.raises(UsageError, match="no configuration file at"):
        settings.load(tmp_path / "missing.toml")


def test_the_default_file_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDFS_CONFIG", str(tmp_path / "chosen.toml"))
    assert settings.default_path() == tmp_path / "chosen.toml"
    monkeypatch.delenv("CLOUDFS_CONFIG")
    assert settings.default_path() == (Path("/etc/cloudfs/config.toml") if os.geteuid() == 0 else
                                       Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
                                       / "cloudfs" / "config.toml")


def test_config_check_reports_the_directories_or_one_line(tmp_path):
    path = write(tmp_path, GOOD.format(base=tmp_path))
    result = cloudfs("config", "check", "--config", str(path), env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{path}: ok, 2 directories",
        f"  documents: {tmp_path}/documents over itself -> s3://bucket/documents",
        f"  data: {tmp_path}/data on {tmp_path}/mnt/data -> s3://bucket/shared",
    ]
    listed = json.loads(cloudfs("config", "check", "--json", env=dict(os.environ, CLOUDFS_CONFIG=str(path))).stdout)
    assert listed["directories"]["documents"]["retention"]["keep_daily"] == 7
    assert listed["defaults"]["interval"] == 900
    path.write_text(GOOD.format(base=tmp_path).replace("keep_daily = 7", "keep_daily = 7.5"))
    result = cloudfs("config", "check", "--config", str(path), env=dict(os.environ))
    assert result.returncode == 2
    assert one_line_error(result) == (f"cloudfs: error: {path}:15: [directories.documents.retention] "
                                      "keep_daily: must be a count of at least 1, or \"unlimited\"")
