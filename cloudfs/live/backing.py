"""Syscall-level helpers for the FUSE handlers: open flags, ownership of new entries,
and the path-based operations that need care with symlinks."""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

_STRIPPED_OPEN_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND | os.O_DIRECT


def open_flags(flags: int) -> int:
    """Open flags for the backing file of a FUSE open with `flags`.

    With the writeback cache the kernel may read a write-only file to fill pages,
    so write-only becomes read-write; the kernel computes O_APPEND offsets itself
    (a backing O_APPEND would make pwrite ignore them); O_DIRECT would demand
    aligned buffers we do not have; O_CREAT and O_EXCL are the kernel's business.
    O_TRUNC stays: libfuse asks for atomic O_TRUNC, so the kernel passes it to open.
    """
    flags &= ~_STRIPPED_OPEN_FLAGS
    if flags & os.O_ACCMODE == os.O_WRONLY:
        flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
    return flags | os.O_CLOEXEC | os.O_NOFOLLOW


def open_file(path: bytes, flags: int, dir_fd: int | None) -> int:
    """Open the backing file for a FUSE open with `flags` (see `open_flags`).

    Only a daemon that is not root can be refused the read half of a write-only
    open; it then opens write-only, and a partial-page write the kernel would have
    to read first fails with EIO instead of working (root never gets here).
    """
    try:
        return os.open(path, open_flags(flags), dir_fd=dir_fd)
    except PermissionError:
        if flags & os.O_ACCMODE != os.O_WRONLY:
            raise
        return os.open(path, open_flags(flags) & ~os.O_ACCMODE | os.O_WRONLY, dir_fd=dir_fd)


def give_to_caller(parent_fd: int, name: bytes, st: os.stat_result, ctx, mode: int,
                   fd: int | None = None) -> os.stat_result:
    """Make a new entry (created by this root daemon) belong to the caller, as the
    kernel would have: owner ctx.uid, group ctx.gid or the setgid directory's; the
    set-id bits a chown clears are put back where the kernel would have kept them.
    Returns the entry's stat afterwards."""
    if st.st_uid == ctx.uid and st.st_gid == ctx.gid:
        return st  # root creating as root: nothing to give
    parent_st = os.fstat(parent_fd)
    gid = parent_st.st_gid if parent_st.st_mode & stat.S_ISGID else ctx.gid
    if (st.st_uid, st.st_gid) == (ctx.uid, gid):
        return st
    if fd is not None:
        os.fchown(fd, ctx.uid, gid)
    else:
        os.chown(name, ctx.uid, gid, dir_fd=parent_fd, follow_symlinks=False)
    if mode & (stat.S_ISUID | stat.S_ISGID) and stat.S_ISREG(st.st_mode):
        if (mode & stat.S_ISGID and mode & stat.S_IXGRP and ctx.uid != 0 and gid != ctx.gid
                and gid not in pyfuse3.get_sup_groups(ctx.pid)):
            mode &= ~stat.S_ISGID  # not a member of the setgid directory's group
        if fd is not None:
            os.fchmod(fd, stat.S_IMODE(mode))
        else:
            os.chmod(name, stat.S_IMODE(mode), dir_fd=parent_fd)
    if fd is not None:
        return os.fstat(fd)
    return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)


def chmod(path: bytes, mode: int, follow: bool) -> None:
    """chmod by path; a symlink itself cannot be chmodded on Linux (EOPNOTSUPP)."""
    try:
        os.chmod(path, mode, follow_symlinks=follow)
    except (NotImplementedError, ValueError):
        raise OSError(errno.EOPNOTSUPP, "cannot chmod a symbolic link") from None


def truncate(path: bytes, follow: bool, fh: int | None, size: int) -> None:
    """Truncate through the open handle if the caller has one, else by path."""
    if fh is not None:
        os.ftruncate(fh, size)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def remove_quietly(parent_fd: int, name: bytes, st: os.stat_result | None) -> None:
    """Undo a creation that could not be completed."""
    try:
        if st is not None and stat.S_ISDIR(st.st_mode):
            os.rmdir(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
    except OSError:
        pass
