"""The few Linux syscalls the os module lacks: renameat2, utimensat with UTIME_OMIT, umount2."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_OMIT = (1 << 30) - 2
MNT_DETACH = 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, *names) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), *names)


def renameat2(old_dir_fd: int, old_name: bytes, new_dir_fd: int, new_name: bytes, flags: int) -> None:
    """rename with RENAME_NOREPLACE / RENAME_EXCHANGE flags."""
    _check(_libc.renameat2(old_dir_fd, old_name, new_dir_fd, new_name, flags), old_name, new_name)


def _timespec(ns: int | None) -> _Timespec:
    if ns is None:
        return _Timespec(0, UTIME_OMIT)
    seconds, nanoseconds = divmod(ns, 1_000_000_000)
    return _Timespec(seconds, nanoseconds)


def set_times(path: bytes, atime_ns: int | None, mtime_ns: int | None, follow_symlinks: bool) -> None:
    """Set access and/or modification time; None leaves that time as it is."""
    times = (_Timespec * 2)(_timespec(atime_ns), _timespec(mtime_ns))
    flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
    _check(_libc.utimensat(AT_FDCWD, path, times, flags), path)


def umount(path: str, lazy: bool = False) -> None:
    """umount2(path) (root only); lazy detaches even while files are open."""
    _check(_libc.umount2(os.fsencode(path), MNT_DETACH if lazy else 0), path)
