"""The ransomware tripwire's detector: pure logic fed by the live mount's handlers.

Two rules, each counting distinct files within a sliding window:

- **rewrites**: a file that already existed (not created through the mount in
  the last minutes) is written from offset 0 with high-entropy data, as
  encrypting it in place does;
- **renames**: files that already existed are renamed to one new extension
  (`report.pdf` -> `report.pdf.locked`).

The handlers call `created`, `wrote_start` and `renamed`; each is a few
dictionary operations, and only a write at offset 0 into an existing file pays
for judging a sample of at most `SAMPLE` bytes (`looks_encrypted`: ~10 µs for
text, ~40 µs for random bytes), so writes do not slow down. Memory is bounded: by the rate of creates times the time they
are remembered (`CREATED_CAP` at most), and by the thresholds. When a rule
reaches its threshold the tripwire fires once (`on_fire` gets the Burst) and
keeps counting into that burst until `rearm()`.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

SAMPLE = 512                 # bytes of a write whose entropy is estimated
MIN_SAMPLE = 256             # shorter writes are not judged (too few bytes to tell)
CREATED_CAP = 1 << 17        # newly created inodes remembered at most
CREATED_MEMORY = 300.0       # seconds a created inode counts as new (writeback may lag)
EXTENSION_MAX = 16           # longer "extensions" are not extensions

REWRITES, RENAMES = "rewrites", "renames"


@dataclass(frozen=True)
class Thresholds:
    files: int = 100         # distinct files a rule must see within `window`
    window: float = 60.0     # seconds
    entropy: float = 7.5     # bits per byte (8 is random) for a write to look encrypted


@dataclass
class Burst:
    """What made the tripwire fire, and what it has counted since."""

    rule: str                         # REWRITES or RENAMES
    started_ns: int                   # wall clock of the first event counted
    fired_ns: int
    rewrites: int = 0                 # files rewritten with high-entropy data so far
    renames: int = 0                  # files renamed to `extension` so far
    extension: str | None = None      # the one new extension (renames)
    examples: list[str] = field(default_factory=list)   # a few new names

    def as_dict(self) -> dict:
        return {"rule": self.rule, "started_ns": self.started_ns, "fired_ns": self.fired_ns,
                "rewrites": self.rewrites, "renames": self.renames, "extension": self.extension,
                "examples": list(self.examples)}


def entropy(sample: bytes) -> float:
    """Shannon entropy of `sample` in bits per byte, with the Miller-Madow
    correction so that a few hundred random bytes score close to 8."""
    length = len(sample)
    if not length:
        return 0.0
    counts = collections.Counter(sample).values()
    log2 = math.log2
    raw = log2(length) - sum(count * log2(count) for count in counts) / length
    return raw + (len(counts) - 1) / (2 * length * math.log(2))


def looks_encrypted(data: bytes, threshold: float) -> bool:
    """Whether a sample of `data` has at least `threshold` bits per byte. The number
    of distinct byte values bounds the entropy from above and costs a third of the
    estimate: text, the common case, stops there."""
    sample = _sample(data)
    distinct = len(set(sample))
    if distinct < 2 or math.log2(distinct) + (distinct - 1) / (2 * len(sample) * math.log(2)) < threshold:
        return False
    return entropy(sample) >= threshold


def extension_of(name: bytes) -> bytes:
    """`b"locked"` for `b"report.pdf.locked"`; b"" without one (or one too long)."""
    stem, dot, extension = name.rpartition(b".")
    if not dot or not stem or len(extension) > EXTENSION_MAX:
        return b""
    return extension.lower()


class _Window:
    """Distinct keys seen within the last `seconds`, with when each was first seen."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.first_seen: dict[int, float] = {}

    def add(self, key: int, now: float) -> int:
        first = self.first_seen
        if key not in first:
            first[key] = now
            if next(iter(first.values())) < now - self.seconds:
                self._expire(now)
        return len(first)

    def _expire(self, now: float) -> None:
        horizon = now - self.seconds
        self.first_seen = {key: seen for key, seen in self.first_seen.items() if seen >= horizon}

    def earliest(self, now: float) -> float:
        self._expire(now)
        return min(self.first_seen.values(), default=now)


class Tripwire:
    """Fed by the handlers (synchronous, on the FUSE loop); fires `on_fire(burst)` once."""

    def __init__(self, thresholds: Thresholds, on_fire: Callable[[Burst], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], int] = time.time_ns):
        self.thresholds = thresholds
        self.on_fire = on_fire
        self._clock, self._wall = clock, wall_clock
        self._created: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._rewrites = _Window(thresholds.window)
        self._renames: dict[bytes, _Window] = {}
        self.burst: Burst | None = None

    # -- events ------------------------------------------------------------------------

    def created(self, ino: int) -> None:
        """A new inode: its first writes and renames are not a rewrite of old data."""
        created = self._created
        now = self._clock()
        created[ino] = now
        created.move_to_end(ino)
        if len(created) > CREATED_CAP or next(iter(created.values())) < now - CREATED_MEMORY:
            created.popitem(last=False)

    def wrote_start(self, ino: int, data: bytes) -> None:
        """A write at offset 0 of `ino` (the handler checks the offset)."""
        if len(data) < MIN_SAMPLE or self._is_new(ino):
            return
        if self.burst is not None:
            self._count_into_burst(ino, data)
            return
        if ino in self._rewrites.first_seen or not looks_encrypted(data, self.thresholds.entropy):
            return
        now = self._clock()
        if self._rewrites.add(ino, now) >= self.thresholds.files:
            self._fire(REWRITES, self._rewrites, now)

    def renamed(self, ino: int, old_name: bytes, new_name: bytes) -> None:
        extension = extension_of(new_name)
        if not extension or extension == extension_of(old_name) or self._is_new(ino):
            return
        if self.burst is not None:
            if extension.decode(errors="replace") == self.burst.extension:
                self.burst.renames += 1
                self._example(new_name)
            return
        window = self._renames.get(extension)
        if window is None:
            if len(self._renames) > 4 * self.thresholds.files:
                self._renames.clear()      # bounded: many extensions, few files each
            window = self._renames[extension] = _Window(self.thresholds.window)
        now = self._clock()
        if window.add(ino, now) >= self.thresholds.files:
            self._fire(RENAMES, window, now, extension.decode(errors="replace"))
            self._example(new_name)

    def _is_new(self, ino: int) -> bool:
        """Created through the mount less than CREATED_MEMORY seconds ago (the map is
        trimmed only as creates come, so its age is checked too)."""
        created_at = self._created.get(ino)
        return created_at is not None and self._clock() - created_at < CREATED_MEMORY

    # -- firing ------------------------------------------------------------------------

    def _fire(self, rule: str, window: _Window, now: float, extension: str | None = None) -> None:
        wall = self._wall()
        started = wall - int((now - window.earliest(now)) * 1e9)
        count = len(window.first_seen)
        self.burst = Burst(rule, started, wall, rewrites=count if rule == REWRITES else 0,
                           renames=count if rule == RENAMES else 0, extension=extension)
        if rule == RENAMES:     # the rewrites window counts the burst's files from here
            self._rewrites = _Window(self.thresholds.window)
        self._renames.clear()
        if self.on_fire is not None:
            self.on_fire(self.burst)

    def _count_into_burst(self, ino: int, data: bytes) -> None:
        counted = self._rewrites
        if ino not in counted.first_seen and looks_encrypted(data, self.thresholds.entropy):
            if len(counted.first_seen) < CREATED_CAP:
                counted.first_seen[ino] = 0.0
            self.burst.rewrites += 1

    def _example(self, name: bytes) -> None:
        if len(self.burst.examples) < 5:
            self.burst.examples.append(name.decode(errors="replace"))

    def rearm(self) -> None:
        """After the alert was acknowledged: the next burst fires again."""
        self.burst = None
        self._rewrites = _Window(self.thresholds.window)


def _sample(data: bytes) -> bytes:
    """At most SAMPLE bytes from the middle of `data` (headers are often plain)."""
    if len(data) <= SAMPLE:
        return data
    start = (len(data) - SAMPLE) // 2
    return data[start:start + SAMPLE]
