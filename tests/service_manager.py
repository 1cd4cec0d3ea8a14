"""The part of systemd a Type=notify service talks to, played by a test: it owns
$NOTIFY_SOCKET and starts the unit's ExecStart line as systemd would."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path

from cloudfs.system import units

INSTALLED = Path(sys.executable).parent / "cloudfs"


class ServiceManager:
    """The part of systemd a Type=notify service talks to: $NOTIFY_SOCKET."""

    def __init__(self, directory: Path):
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))

    def next_message(self, timeout: float) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def start(self, setup, name: str, log: Path, cloudfs: Path = INSTALLED) -> subprocess.Popen:
        """Run the unit's ExecStart for instance `name`, as systemd would, with the
        `cloudfs` command installed at `cloudfs`."""
        settings = units.UnitSettings(cloudfs=str(cloudfs), config=str(setup.path))
        exec_start = next(line for line in units.templates(settings)[units.MOUNT].splitlines()
                          if line.startswith("ExecStart="))
        command = shlex.split(exec_start.removeprefix("ExecStart=").replace("%i", name))
        process = subprocess.Popen(command, env=dict(setup.env, NOTIFY_SOCKET=str(self.path)),
                                   cwd=log.parent, stdin=subprocess.DEVNULL, stdout=log.open("w"),
                                   stderr=subprocess.STDOUT)
        setup.processes.append(process)
        return process
