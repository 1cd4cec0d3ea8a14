"""Test harness for protected directories described by a configuration file.

`Configured` owns a configuration file of a test with its [directories.NAME]
entries, each with its own repository (a prefix of one bucket on the rclone
server of the session), and stops every mount it started, even when the test
fails. Tests drive it as a user or the service manager does: `cloudfs mount
NAME`, `--all`, signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from cloudfs.repo import Repository
from cloudfs.system import mounttable
from cloudfs.system.statedir import StateDir
from tests.live_fixtures import run_cloudfs
from tests.repo_helpers import PASSPHRASE, init_repo, s3_store


def toml_value(value) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


@dataclass
class Configured:
    base: Path
    server: object
    bucket: str
    entries: dict[str, dict] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.base / "config.toml"

    @property
    def env(self) -> dict:
        env = self.server.env()
        env.pop("CLOUDFS_PASSWORD", None)
        env.pop("CLOUDFS_REPO", None)
        env.update(XDG_CACHE_HOME=str(self.base / "cache"), CLOUDFS_CONFIG=str(self.path))
        return env

    def add(self, name: str, *, mountpoint: bool = False, **settings) -> dict:
        """A directory `name` with a new repository; over itself unless `mountpoint`."""
        source = self.base / name
        source.mkdir()
        entry = {"source": str(source), "repository": f"s3://{self.bucket}/{name}",
                 "state_dir": str(self.base / f"state-{name}"), **settings}
        if mountpoint:
            (self.base / f"mnt-{name}").mkdir()
            entry["mountpoint"] = str(self.base / f"mnt-{name}")
        init_repo(s3_store(self.server, self.bucket, name))
        self.entries[name] = entry
        self.write()
        return entry

    def write(self) -> Path:
        lines = []
        for name, entry in self.entries.items():
            lines.append(f"[directories.{name}]")
            lines.extend(f"{key} = {toml_value(value)}" for key, value in entry.items())
            lines.append("")
        self.path.write_text("\n".join(lines))
        return self.path

    def mountpoint(self, name: str) -> Path:
        return Path(self.entries[name].get("mountpoint", self.entries[name]["source"]))

    def state_dir(self, name: str) -> Path:
        return Path(self.entries[name]["state_dir"])

    def holder(self, name: str):
        return StateDir(self.state_dir(name)).holder()

    def cloudfs(self, *args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return run_cloudfs(*args, check=check, timeout=timeout, env=self.env)

    def repository(self, name: str) -> Repository:
        store = s3_store(self.server, self.bucket, name)
        return trio.run(lambda: Repository.open(store, PASSPHRASE, use_cache=False))

    def snapshots(self, name: str) -> list:
        return trio.run(self.repository(name).snapshots)

    def is_mounted(self, name: str) -> bool:
        entry = mounttable.mounted_at(str(self.mountpoint(name)))
        return entry is not None and entry.fstype == mounttable.FSTYPE

    def cleanup(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        for name in self.entries:
            if self.is_mounted(name):
                result = self.cloudfs("umount", self.mountpoint(name), "--timeout", "20",
                                      "--snapshot-timeout", "5", check=False, timeout=60)
                if result.returncode:
                    subprocess.run(["umount", "-l", str(self.mountpoint(name))], capture_output=True)
            holder = self.holder(name)
            if holder is not None and holder.pid:
                try:
                    os.kill(holder.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def configured(tmp_path, s3_env):
    setup = Configured(tmp_path, s3_env, s3_env.new_bucket())
    try:
        yield setup
    finally:
        setup.cleanup()
