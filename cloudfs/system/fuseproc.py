"""Running one FUSE mount as a process: in the background, stopped by a signal.

pyfuse3 keeps one FUSE session per process, so every mount (the live mount,
the snapshot mount) is a process of its own. What such a process does apart
from serving is the same for all of them, and lives here:

- `run_detached(log_path, serve)`: fork a detached process that runs
  `serve(ready)`; the command's process ends with 0 once `ready()` was called
  there, or raises the one-line error the process reported before it got that far.
- `unmount_on_signal(mountpoint, before)`: a task that turns SIGTERM, SIGINT
  and SIGHUP into an unmount (after `before()`, e.g. a final snapshot), after
  which pyfuse3.main() returns.
- `detach`, `detach_now`: unmount (lazily if busy).
- `checked_directory`, `resolve_parent`, `clear_stale_mount`,
  `check_fuse_device`: the checks before mounting, each failure a one-line
  MountError.
- `tune_read_ahead`, `raise_descriptor_limit`: small per-mount settings.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import resource
import signal
import stat
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import trio

from cloudfs.errors import CloudfsError, MountError
from cloudfs.system import mounttable, syscalls
from cloudfs.system.statedir import StateDir

log = logging.getLogger(__name__)

Serve = Callable[[Callable[[], None]], None]


def run_detached(log_path: Path, serve: Serve) -> NoReturn:
    """Run `serve(ready)` in a detached process logging to `log_path`; end this
    process with 0 once it is ready, or raise what it reported (with its exit code)."""
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        os.waitpid(child, 0)          # the intermediate process exits at once
        reply = _read_until_closed(read_end).decode(errors="replace")
        if reply.startswith("ready"):
            _end_foreground()
        if reply.startswith("error "):
            _, code, message = reply.split(" ", 2)
            error = MountError(message)
            error.exit_code = int(code)
            raise error
        raise MountError(f"the mount process ended without a word; see {log_path}")
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os._exit(_detached_main(log_path, serve, write_end))


def _end_foreground() -> NoReturn:
    """The mount serves from its own process now, and this one has nothing left to
    do: run the exit handlers and flush, then end without freeing every object one
    by one (with the repository's code and boto3's models loaded, that teardown
    took ~0.5 s here, a quarter of `cloudfs mount --daemon`)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _detached_main(log_path: Path, serve: Serve, report_fd: int) -> int:
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)
    reported = False

    def ready():
        nonlocal reported
        os.write(report_fd, b"ready\n")
        os.close(report_fd)
        reported = True

    try:
        serve(ready)
        return 0
    except CloudfsError as error:
        log.error("%s", error)
        if not reported:
            os.write(report_fd, f"error {error.exit_code} {error}".encode())
        return error.exit_code
    except BaseException as error:  # noqa: BLE001 - the parent must hear about anything
        traceback.print_exc()
        if not reported:
            os.write(report_fd, f"error 1 unexpected failure: {error!r}".encode())
        return 1


def _read_until_closed(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


async def unmount_on_signal(mountpoint: str, before: Callable[[], Awaitable[None]] | None = None,
                            *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Unmount on SIGTERM, SIGINT or SIGHUP (lazily if files are open there), so
    that pyfuse3.main() returns and the process stops cleanly. Start it with
    `nursery.start` before saying the mount is ready: until the receiver is open
    a SIGTERM kills the process and leaves a dead mount behind."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            log.warning("%s: unmounting %s", signal.Signals(signum).name, mountpoint)
            if before is not None:
                await before()
            await detach_now(mountpoint)


async def detach_now(mountpoint: str) -> None:
    """Unmount from inside the mount's process; if busy, detach lazily (the open
    files are served until they are closed)."""
    try:
        await trio.to_thread.run_sync(detach, mountpoint, False)
    except OSError as error:
        if error.errno != errno.EBUSY:
            log.error("cannot unmount %s: %s", mountpoint, error)
            return
        log.warning("%s is busy: detached; stopping once the last open file is closed", mountpoint)
        await trio.to_thread.run_sync(detach, mountpoint, True)


def detach(mountpoint: str, lazy: bool = False) -> None:
    """Unmount a FUSE mount (umount2 as root, fusermount3 otherwise); OSError(EBUSY) if busy."""
    if os.geteuid() == 0:
        syscalls.umount(mountpoint, lazy)
        return
    command = ["fusermount3", "-u", *(["-z"] if lazy else []), mountpoint]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        busy = "busy" in result.stderr
        raise OSError(errno.EBUSY if busy else errno.EINVAL, result.stderr.strip() or "fusermount3 failed")


def resolve_parent(path: str) -> str:
    """`path` made absolute with its parent resolved; the last component is not touched,
    because it may be a mount whose daemon died (any access fails with ENOTCONN)."""
    absolute = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))


def checked_directory(path: str, role: str) -> Path:
    """The real path of an existing directory (after clearing a dead cloudfs mount
    there); MountError naming `role` otherwise."""
    resolved = resolve_parent(path)
    clear_stale_mount(resolved)
    try:
        st = os.stat(resolved)
    except FileNotFoundError:
        raise MountError(f"{role} {path} does not exist") from None
    except OSError as error:
        raise MountError(f"{role} {path}: {error.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"{role} {path} is not a directory")
    return Path(os.path.realpath(resolved))


def clear_stale_mount(path: str) -> None:
    """A cloudfs mount at `path` whose process died (kill -9) is unmounted; a live one refused."""
    entry = mounttable.mounted_at(path)
    if entry is None or entry.fstype != mounttable.FSTYPE:
        return
    holder = StateDir(Path(entry.source)).holder()
    if holder is not None:
        raise MountError(f"{path} is already mounted by cloudfs (pid {holder.pid})")
    log.warning("%s: removing the mount left behind by a cloudfs process that died", path)
    detach(path, lazy=True)


def check_fuse_device() -> None:
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except FileNotFoundError:
        raise MountError("/dev/fuse does not exist: load the fuse module (modprobe fuse), "
                         "or give the container the device") from None
    except OSError as error:  # libfuse opens it itself, even for fusermount3 mounts
        raise MountError(f"cannot open /dev/fuse: {error.strerror}") from None


def tune_read_ahead(mountpoint: str, kilobytes: int) -> None:
    """Raise the kernel's read-ahead of a FUSE mount (reads then arrive in larger requests)."""
    entry = mounttable.mounted_at(mountpoint)
    if entry is None:
        return
    try:
        Path(f"/sys/class/bdi/{entry.device}/read_ahead_kb").write_text(f"{kilobytes}\n")
    except OSError as error:
        log.info("cannot raise read-ahead for %s: %s", mountpoint, error)


def raise_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
