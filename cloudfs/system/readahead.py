"""Reading ahead, from a cold disk, the modules a command that opens a repository imports.

Such a command imports ~550 modules (botocore, trio, cryptography, zstandard,
half the standard library) and maps ~30 extension libraries. With the page
cache cold, as after a reboot or on a new machine, the interpreter reads them
one after another as each import asks, and waits for every read: 0.58-0.91 s
of imports here against 0.2 s warm. Asking the kernel for all of them at once
(posix_fadvise WILLNEED from a thread: it queues the reads and returns) lets
the disk serve them while the interpreter works: the same imports took
0.42-0.49 s (docs/performance.md). The files are found by package, not listed
one by one, so a module added later is read ahead too; a package named here
that is not installed is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading

PACKAGES = ("cloudfs", "botocore", "urllib3", "trio", "cryptography", "zstandard", "blake3", "argon2",
            "_argon2_cffi_bindings", "_cffi_backend", "msgpack", "dateutil", "jmespath", "attr", "attrs",
            "outcome", "sniffio", "sortedcontainers", "idna", "certifi", "six")
STDLIB_PACKAGES = ("email", "json", "http", "urllib", "concurrent", "importlib", "collections", "re",
                   "logging", "xml", "ctypes", "sqlite3", "encodings", "html")
SKIPPED_DIRECTORIES = {"tests", "_tests", "testing", "data"}   # botocore/data: BOTOCORE_DATA
BOTOCORE_DATA = ("", "s3/2006-03-01")    # the models an S3 client loads (of ~400 services)

_started: threading.Thread | None = None


def read_modules_ahead() -> threading.Thread:
    """Start reading ahead (once per process) in a daemon thread; returns it."""
    global _started
    if _started is None:
        _started = threading.Thread(target=_read_ahead, name="read-modules-ahead", daemon=True)
        _started.start()
    return _started


def _read_ahead() -> None:
    if not hasattr(os, "posix_fadvise"):     # not Linux: nothing to ask for
        return
    for path in module_files():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def module_files():
    """The compiled modules, extension libraries and botocore models of PACKAGES and of
    the standard library's top level and STDLIB_PACKAGES."""
    tag = sys.implementation.cache_tag
    stdlib = os.path.dirname(os.__file__)
    yield from _files_in(os.path.join(stdlib, "__pycache__"), tag, recursive=False)
    yield from _files_in(os.path.join(stdlib, "lib-dynload"), tag, recursive=False)
    for name in STDLIB_PACKAGES:
        yield from _files_in(os.path.join(stdlib, name), tag)
    for name in PACKAGES:
        for location in _locations(name):
            if os.path.isdir(location):
                yield from _files_in(location, tag)
            else:
                yield location
    for location in _locations("botocore"):
        for models in BOTOCORE_DATA:
            yield from _files_in(os.path.join(location, "data", models), tag, recursive=False, data=True)


def _locations(name: str) -> list[str]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)
    if not spec.origin or not os.path.isfile(spec.origin):
        return []
    return [importlib.util.cache_from_source(spec.origin) if spec.origin.endswith(".py") else spec.origin]


def _files_in(directory: str, tag: str, *, recursive: bool = True, data: bool = False):
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if entry.is_dir(follow_symlinks=False):
            if recursive and name not in SKIPPED_DIRECTORIES:
                yield from _files_in(entry.path, tag)
        elif name.endswith((f".{tag}.pyc", ".so")) or (data and name.endswith((".json", ".json.gz"))):
            yield entry.path
