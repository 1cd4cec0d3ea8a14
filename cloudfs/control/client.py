"""The control socket's client: one request, one answer (see `cloudfs.control`)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from cloudfs.errors import CloudfsError, UsageError

CONTROL_NAME = "control.sock"


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / CONTROL_NAME


# A Unix socket's path must fit in 108 bytes; a longer one is reached through a
# descriptor of its directory: /proc/self/fd/N/control.sock.
_SUN_PATH_MAX = 100


class ReachablePath:
    """A path to `path` that fits a socket address, for the length of a `with`."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = -1

    def __enter__(self) -> str:
        if len(os.fsencode(self.path)) < _SUN_PATH_MAX:
            return str(self.path)
        self._fd = os.open(self.path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self._fd}/{self.path.name}"

    def __exit__(self, *exc) -> None:
        if self._fd >= 0:
            os.close(self._fd)


class DaemonUnreachable(CloudfsError):
    """No daemon answers on the control socket."""


def request(state_dir: Path, op: str, timeout: float | None = 30.0, **arguments) -> dict:
    """Send one request and wait for its answer; raise CloudfsError if it failed."""
    path = socket_path(state_dir)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        try:
            with ReachablePath(path) as address:
                client.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonUnreachable(f"no cloudfs daemon answers at {path}") from None
        except OSError as error:
            raise DaemonUnreachable(f"cannot reach the daemon at {path}: {error.strerror}") from None
        client.sendall(json.dumps({"op": op, **arguments}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            part = client.recv(65536)
            if not part:
                raise DaemonUnreachable("the daemon closed the connection without answering")
            data += part
    except socket.timeout:
        raise DaemonUnreachable(f"the daemon did not answer {op!r} within {timeout:.0f}s") from None
    finally:
        client.close()
    reply = json.loads(data)
    if not reply.pop("ok", False):
        raise CloudfsError(reply.get("error", "the daemon refused the request"))
    return reply


def find_state_dir(target: str | None) -> Path:
    """The state directory of the running mount `target` names (its mount point or
    protected directory), or, without a target, of the mount containing the current
    directory, or of the only one running."""
    from cloudfs.system import mounttable

    running = [entry for entry in mounttable.mounts() if entry.fstype == mounttable.FSTYPE]
    if target is not None:
        wanted = os.path.realpath(target)
        for entry in running:
            if wanted in (entry.mountpoint, _protected_directory(entry)):
                return Path(entry.source)
        raise UsageError(f"no cloudfs mount at {target}")
    here = os.path.realpath(os.getcwd())
    inside = [e for e in running if here == e.mountpoint or here.startswith(e.mountpoint.rstrip("/") + "/")]
    if inside:
        return Path(max(inside, key=lambda e: len(e.mountpoint)).source)
    if len(running) == 1:
        return Path(running[0].source)
    if not running:
        raise UsageError("no cloudfs mount is running")
    raise UsageError("several cloudfs mounts are running; name one: "
                     + ", ".join(e.mountpoint for e in running))


def _protected_directory(entry) -> str:
    from cloudfs.system.statedir import SOURCE_NAME

    try:
        return (Path(entry.source) / SOURCE_NAME).read_text().strip()
    except OSError:
        return ""
