"""Retention: which snapshots of one group a policy keeps, and why. Pure: no I/O.

The rules are restic's (`restic forget`), so that people who know one know the
other:

- `last N` keeps the N newest snapshots.
- `hourly N` (daily, weekly, monthly, yearly) walks the snapshots newest first
  and keeps the first (newest) one of each hour, until N hours are covered; if
  fewer than N hours have snapshots, the oldest snapshot is kept as well, so a
  rule with room left keeps the longest history it can. N may be UNLIMITED.
- `within D` keeps every snapshot newer than D before the reference time.
- `hourly within D` (and daily, weekly, monthly, yearly) keeps the newest of
  each hour among the snapshots newer than D before the reference; and the
  oldest snapshot too, if it is in that window.
- `tag T` keeps every snapshot carrying the tag T; pins keep what they pin.

A snapshot is kept if any rule keeps it; rules do not take turns (a snapshot
kept by a tag still counts as its hour's snapshot for `hourly`). The
reference time is the newest snapshot of the group that is not in the
future, so a group that stopped taking snapshots keeps its last history, and
a snapshot with a clock far ahead cannot push every window past the rest.
Ties of time are broken by name, the later name counting as newer.

Periods are calendar periods in UTC (weeks are ISO weeks, Monday first): the
same repository is forgotten from machines in different time zones, and the
result must not depend on which one runs it. Snapshot names are UTC too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Protocol

UNLIMITED = -1
PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")
COUNTED = ("last", *PERIODS)        # rules with a count
WINDOWED = ("all", *PERIODS)        # rules with a window ("all": plain `within`)
NS = 1_000_000_000
_EARLIEST = -(1 << 63)


class Dated(Protocol):
    """What retention needs of a snapshot."""

    name: str
    time_ns: int
    tags: tuple[str, ...]


# -- durations --------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)([ymwdh])")


@dataclass(frozen=True)
class Duration:
    """A calendar length: years, months, days and hours, as in `1y6m`, `2w`, `36h`."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> "Duration":
        """`3d`, `12h`, `2w` (14 days), `1y6m` (m is months, as in restic)."""
        compact = text.strip().lower()
        parts = _DURATION.findall(compact)
        if not compact or "".join(f"{n}{u}" for n, u in parts) != compact:
            raise ValueError(f"{text!r} is not a duration (e.g. 12h, 3d, 2w, 6m, 1y)")
        totals = dict.fromkeys("ymdh", 0)
        for number, unit in parts:
            totals["d" if unit == "w" else unit] += int(number) * (7 if unit == "w" else 1)
        duration = cls(totals["y"], totals["m"], totals["d"], totals["h"])
        if duration.is_zero():
            raise ValueError(f"{text!r} is no time at all")
        return duration

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def as_list(self) -> list[int]:
        return [self.years, self.months, self.days, self.hours]

    def __str__(self) -> str:
        return "".join(f"{n}{unit}" for n, unit in zip(self.as_list(), "ymdh") if n) or "0h"

    def start_before(self, reference_ns: int) -> int:
        """The instant this long before `reference_ns`: years, months and days on the
        UTC calendar (a day past the end of a month runs into the next, as Go's
        AddDate does), then hours."""
        seconds, rest = divmod(reference_ns, NS)
        moment = datetime.fromtimestamp(seconds, timezone.utc)
        months = moment.year * 12 + moment.month - 1 - self.years * 12 - self.months
        try:
            first = moment.replace(year=months // 12, month=months % 12 + 1, day=1)
            start = first + timedelta(days=moment.day - 1 - self.days, hours=-self.hours)
        except (ValueError, OverflowError):
            return _EARLIEST                    # before year 1: the window holds everything
        return int(start.timestamp()) * NS + rest


# -- the policy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """Keep rules. `counts`: rule ("last" or a period) -> N or UNLIMITED; `windows`:
    rule ("all" or a period) -> Duration; `tags`: keep snapshots with any of these."""

    counts: dict[str, int] = field(default_factory=dict)
    windows: dict[str, Duration] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()

    def __post_init__(self):
        for rule, count in self.counts.items():
            if rule not in COUNTED:
                raise ValueError(f"unknown rule keep-{rule}")
            if count != UNLIMITED and count < 1:
                raise ValueError(f"keep-{rule} must be at least 1, or unlimited")
        for rule, window in self.windows.items():
            if rule not in WINDOWED:
                raise ValueError(f"unknown rule keep-within-{rule}")
            if window.is_zero():
                raise ValueError(f"{_window_name(rule)} needs a duration")
        if any(not tag for tag in self.tags):
            raise ValueError("an empty tag keeps nothing")

    def is_empty(self) -> bool:
        return not (self.counts or self.windows or self.tags)

    def describe(self) -> str:
        """One line a person reads, e.g. `keep-within 1d, keep-within-hourly 2d, keep-monthly unlimited`."""
        parts = [f"{_window_name(rule)} {self.windows[rule]}" for rule in WINDOWED if rule in self.windows]
        parts += [f"keep-{rule} {_count_text(self.counts[rule])}" for rule in COUNTED if rule in self.counts]
        parts += [f"keep-tag {tag}" for tag in sorted(self.tags)]
        return ", ".join(parts) or "no rules"

    def to_record(self) -> dict:
        """The `rules` map of a policy object (docs/format.md)."""
        record: dict = {rule: self.counts[rule] for rule in COUNTED if rule in self.counts}
        record.update({_window_key(rule): self.windows[rule].as_list()
                       for rule in WINDOWED if rule in self.windows})
        if self.tags:
            record["tags"] = sorted(self.tags)
        return record

    @classmethod
    def from_record(cls, record: dict) -> "Policy":
        """The inverse of to_record. A rule it does not know is an error, not ignored:
        ignoring a keep rule would delete what it keeps (ValueError)."""
        counts, windows, tags = {}, {}, frozenset()
        for key, value in record.items():
            if key in COUNTED and type(value) is int:
                counts[key] = value
            elif key in _WINDOW_KEYS and _is_duration_list(value):
                windows[_WINDOW_KEYS[key]] = Duration(*value)
            elif key == "tags" and isinstance(value, list) and all(isinstance(t, str) for t in value):
                tags = frozenset(value)
            else:
                raise ValueError(f"unknown or malformed rule {key!r}")
        return cls(counts, windows, tags)


def _window_key(rule: str) -> str:
    return "within" if rule == "all" else f"within_{rule}"


_WINDOW_KEYS = {_window_key(rule): rule for rule in WINDOWED}


def _window_name(rule: str) -> str:
    return "keep-" + _window_key(rule).replace("_", "-")


def _count_text(count: int) -> str:
    return "unlimited" if count == UNLIMITED else str(count)


def _is_duration_list(value) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(type(n) is int and n >= 0 for n in value)


#: The default: all for a day, hourly for two days, daily for a month, weekly for
#: a year, monthly for ever. Windows, not counts: a burst of new snapshots cannot
#: push old ones out, however many there are.
LADDER = Policy(
    counts={"monthly": UNLIMITED},
    windows={"all": Duration(days=1), "hourly": Duration(days=2), "daily": Duration(months=1),
             "weekly": Duration(years=1)},
)


# -- applying it ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    snapshot: Dated
    reasons: tuple[str, ...]            # why it is kept; empty: it goes

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


def apply_policy(policy: Policy, snapshots: Iterable[Dated], now_ns: int,
                 pinned: frozenset[str] = frozenset()) -> list[Decision]:
    """Decide for every snapshot of one group, newest first. `pinned`: names of
    snapshots that are kept whatever the rules say."""
    ordered = newest_first(snapshots)
    if not ordered:
        return []
    reasons: list[list[str]] = [[] for _ in ordered]
    for index, snapshot in enumerate(ordered):
        if snapshot.name in pinned:
            reasons[index].append("pinned")
        reasons[index].extend(f"tag {tag}" for tag in sorted(policy.tags & set(snapshot.tags)))
    reference = reference_time(ordered, now_ns)
    for rule in (rule for rule in WINDOWED if rule in policy.windows):
        window = policy.windows[rule]
        start = window.start_before(reference)
        for index, why in _windowed(ordered, rule, start):
            reasons[index].append(f"{why} {window}")
    for rule in (rule for rule in COUNTED if rule in policy.counts):
        for index, why in _counted(ordered, rule, policy.counts[rule]):
            reasons[index].append(why)
    return [Decision(snapshot, tuple(why)) for snapshot, why in zip(ordered, reasons)]


def newest_first(snapshots: Iterable[Dated]) -> list[Dated]:
    return sorted(snapshots, key=lambda s: (s.time_ns, s.name), reverse=True)


def reference_time(ordered: list[Dated], now_ns: int) -> int:
    """What windows are measured back from: the newest snapshot not in the future,
    else (every one is) the newest."""
    return next((s.time_ns for s in ordered if s.time_ns <= now_ns), ordered[0].time_ns)


def period_of(rule: str, time_ns: int) -> tuple:
    """The calendar period (UTC) an instant falls in, for a rule of PERIODS."""
    moment = datetime.fromtimestamp(time_ns // NS, timezone.utc)
    if rule == "weekly":
        return tuple(moment.isocalendar())[:2]
    length = {"yearly": 1, "monthly": 2, "daily": 3, "hourly": 4}[rule]
    return (moment.year, moment.month, moment.day, moment.hour)[:length]


def _counted(ordered: list[Dated], rule: str, count: int):
    """(index, reason) of what a counted rule keeps: the newest of each period until
    `count` periods are kept, and the oldest snapshot while room is left."""
    left, previous, oldest = count, None, len(ordered) - 1
    for index, snapshot in enumerate(ordered):
        if left == 0:
            return
        period = index if rule == "last" else period_of(rule, snapshot.time_ns)
        if period != previous:
            yield index, rule
        elif index == oldest:
            yield index, f"oldest {rule}"
        else:
            continue
        previous = period
        if left != UNLIMITED:
            left -= 1


def _windowed(ordered: list[Dated], rule: str, start_ns: int):
    """(index, reason) of what a window rule keeps: everything after `start_ns`
    ("all"), or the newest of each period there, and the oldest snapshot if it is."""
    previous, oldest = None, len(ordered) - 1
    for index, snapshot in enumerate(ordered):
        if snapshot.time_ns <= start_ns:
            continue
        if rule == "all":
            yield index, "within"
            continue
        period = period_of(rule, snapshot.time_ns)
        if period != previous:
            yield index, f"{rule} within"
        elif index == oldest:
            yield index, f"oldest {rule} within"
        previous = period
