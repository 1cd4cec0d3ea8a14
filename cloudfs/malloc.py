"""glibc malloc tuning for cloudfs's long-running processes.

The mount daemon (`few_arenas`): fewer malloc arenas. Its worker threads
otherwise get arenas of their own, each holding memory of its own; with two,
the daemon's peak while sealing and uploading 1 GiB fell from 149 to 130 MiB
(`tools/bench seal --gib 1`, docs/performance.md), writers' latency unchanged
within this machine's noise.

The snapshot mount and restore (`keep_freed_memory`): keep freed memory in the
process: on this VM fresh pages cost more than the work on them.

Touching fresh memory costs about 0.6 ms per MiB here (faulting and zeroing
pages; docs/performance.md, crypto section), as much as decrypting and hashing
it. Reading snapshots allocates and frees 64 KiB plaintexts and multi-MiB GET
responses all the time, and glibc gives such memory back to the kernel (heap
trimming, or munmap above the mmap threshold) only to fault it in again for
the next one. Raising both thresholds keeps it for reuse: opening a span of
records went from ~70 to ~33 µs per 64 KiB block. The price is that the
resident size stays at its peak instead of shrinking after a burst; the
caches and read-ahead budget bound that peak.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2                      # fewer arenas, less memory held by idle threads
MMAP_THRESHOLD = 32 << 20      # glibc's own ceiling for its dynamic threshold
TRIM_THRESHOLD = 64 << 20


def keep_freed_memory() -> bool:
    """Few arenas, and freed memory kept for reuse; False where that is not possible."""
    return _mallopt((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                    (M_ARENA_MAX, ARENAS))


def few_arenas() -> bool:
    """Few arenas only (call before threads start); False where that is not possible."""
    return _mallopt((M_ARENA_MAX, ARENAS))


def give_back_freed() -> None:
    """Return the heap's free pages to the kernel (glibc's malloc_trim); for the mount
    daemon after a snapshot: a first snapshot's burst otherwise stays resident for
    the mount's life although it is free."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError) as error:     # not glibc
        log.debug("cannot trim the heap: %s", error)


def _mallopt(*settings: tuple[int, int]) -> bool:
    try:
        libc = _libc()
        return all(libc.mallopt(option, value) for option, value in settings)
    except (OSError, AttributeError) as error:     # not glibc
        log.debug("cannot tune malloc: %s", error)
        return False


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library's symbols, as the interpreter already has them loaded (no
    `ctypes.util.find_library`, which runs `ldconfig -p` in a child process)."""
    return ctypes.CDLL(None)
