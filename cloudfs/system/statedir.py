"""The state directory of one protected SOURCE: where it is, and who holds it.

It holds the journal, the manifest, `source` (which SOURCE it belongs to), `lock`
and, for `--daemon`, `mount.log`. A running mount holds an exclusive flock on
`lock`, whose content says which process serves it and how to reach the tree it
covers; that is how a second mount of the same SOURCE is refused and how
`cloudfs umount` knows when the daemon has finished stopping.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cloudfs.errors import MountError

LOCK_NAME = "lock"
SOURCE_NAME = "source"
LOG_NAME = "mount.log"


def default_state_dir(source: Path) -> Path:
    """A live mount's: $XDG_STATE_HOME/cloudfs/<first 16 hex digits of sha256(real path of SOURCE)>."""
    return state_home() / _digest(os.path.realpath(source))


def browse_state_dir(mountpoint: Path) -> Path:
    """A snapshot mount's: $XDG_STATE_HOME/cloudfs/browse-<16 hex digits of its mount point's hash>."""
    return state_home() / f"browse-{_digest(mountpoint)}"


def state_home() -> Path:
    """$XDG_STATE_HOME/cloudfs: where this machine keeps cloudfs state."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "cloudfs"


def _digest(path) -> str:
    return hashlib.sha256(os.fsencode(path)).hexdigest()[:16]


@dataclass
class Holder:
    """The mount process holding a state directory."""

    pid: int
    source: str
    mountpoint: str
    source_fd: int

    def tree_path(self) -> str:
        """A path to the backing tree through the daemon's descriptor (even when covered)."""
        return f"/proc/{self.pid}/fd/{self.source_fd}"


class StateDir:
    """A state directory; `acquire()` makes this process its holder until `release()`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_fd = -1

    def exists(self) -> bool:
        return self.path.is_dir()

    def check_source(self, source: Path) -> None:
        """Refuse a state directory that belongs to another SOURCE; claim a fresh one."""
        real = os.path.realpath(source)
        recorded = self.path / SOURCE_NAME
        try:
            owner = recorded.read_text().strip()
        except FileNotFoundError:
            recorded.write_text(real + "\n")
            return
        if owner != real:
            raise MountError(f"state directory {self.path} belongs to {owner}, not {real}")

    def create(self) -> None:
        """Make the directory (owner-only) if it does not exist."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise MountError(f"cannot create the state directory {self.path}: {error.strerror}") from None

    def acquire(self, source: Path) -> None:
        """Create the directory if needed and lock it; refuse if a mount holds it."""
        self.create()
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise MountError(f"cannot use the state directory {self.path}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            where = f" (pid {holder.pid}, on {holder.mountpoint})" if holder else ""
            raise MountError(f"{source} is already mounted{where}") from None
        self._lock_fd = fd
        try:
            self.check_source(source)
        except BaseException:
            self.release()
            raise

    def announce(self, holder: Holder) -> None:
        """Publish who serves the mount (read by `umount` and `changes`)."""
        data = json.dumps(holder.__dict__).encode()
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, data, 0)

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1

    def holder(self) -> Holder | None:
        """The process holding this state directory, or None if no mount does."""
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # held: read who holds it
            else:
                return None
            data = os.pread(fd, 4096, 0)
        finally:
            os.close(fd)
        try:
            return Holder(**json.loads(data))
        except (ValueError, TypeError):
            return Holder(pid=0, source="", mountpoint="?", source_fd=-1)  # starting up

    def log_path(self) -> Path:
        return self.path / LOG_NAME
