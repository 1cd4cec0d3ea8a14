"""The retention policy against a plain reference, on synthetic histories.

`reference_kept` restates each rule as a definition over sets (group by
period, take the newest of the first N periods) instead of the single walk
with counters that retention.py does, as restic does; hypothesis looks for
histories where the two disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from cloudfs.snapshot.retention import (
    LADDER,
    NS,
    PERIODS,
    UNLIMITED,
    Duration,
    Policy,
    apply_policy,
)

pytestmark = pytest.mark.timeout(120)

BASE = int(datetime(2024, 6, 15, 12, tzinfo=timezone.utc).timestamp()) * NS
HOUR, DAY = 3600 * NS, 86400 * NS


@dataclass(frozen=True)
class Fake:
    name: str
    time_ns: int
    tags: tuple[str, ...] = field(default=())


# -- the reference -----------------------------------------------------------------------------

PERIOD_FORMATS = {"hourly": "%Y-%m-%d %H", "daily": "%Y-%m-%d", "weekly": "%G-W%V", "monthly": "%Y-%m",
                  "yearly": "%Y"}


def utc(time_ns: int) -> datetime:
    return datetime.fromtimestamp(time_ns // NS, timezone.utc)


def reference_start(duration: Duration, reference_ns: int) -> int:
    """Years and months off the month, days off the day (overflowing into the next
    month as Go's AddDate does), then hours."""
    moment = utc(reference_ns)
    month_index = moment.year * 12 + (moment.month - 1) - duration.years * 12 - duration.months
    day = date(month_index // 12, month_index % 12 + 1, 1) + timedelta(days=moment.day - 1 - duration.days)
    start = datetime(day.year, day.month, day.day, moment.hour, moment.minute, moment.second,
                     tzinfo=timezone.utc) - timedelta(hours=duration.hours)
    return int(start.timestamp()) * NS + reference_ns % NS


def newest_per_period(ordered: list[Fake], rule: str) -> dict[str, Fake]:
    """Period label -> its newest snapshot, periods newest first (dicts keep order)."""
    newest: dict[str, Fake] = {}
    for snapshot in ordered:
        label = snapshot.name if rule == "last" else utc(snapshot.time_ns).strftime(PERIOD_FORMATS[rule])
        newest.setdefault(label, snapshot)
    return newest


def reference_kept(policy: Policy, snapshots: list[Fake], now_ns: int, pinned: set[str]) -> set[str]:
    ordered = sorted(snapshots, key=lambda s: (s.time_ns, s.name), reverse=True)
    oldest = ordered[-1]
    not_future = [s.time_ns for s in ordered if s.time_ns <= now_ns]
    reference = max(not_future) if not_future else ordered[0].time_ns
    kept = {s.name for s in ordered if s.name in pinned or set(s.tags) & policy.tags}
    for rule, count in policy.counts.items():
        periods = list(newest_per_period(ordered, rule).values())
        kept |= {s.name for s in (periods if count == UNLIMITED else periods[:count])}
        if count == UNLIMITED or len(periods) < count:
            kept.add(oldest.name)
    for rule, window in policy.windows.items():
        start = reference_start(window, reference)
        inside = [s for s in ordered if s.time_ns > start]
        chosen = inside if rule == "all" else newest_per_period(inside, rule).values()
        kept |= {s.name for s in chosen}
        if oldest in inside:
            kept.add(oldest.name)
    return kept


# -- synthetic histories -----------------------------------------------------------------------

TAGS = ("daily-job", "before-upgrade", "keep")
offsets = st.one_of(
    st.integers(-3 * 365 * DAY // NS, DAY // NS),         # anywhere in three years (a few ahead)
    st.integers(-3 * DAY // NS, 0),                       # dense in the last days
    st.integers(-3 * 365 * 24, 24).map(lambda hours: hours * 3600),   # on the hour: window edges
).map(lambda seconds: seconds * NS)
nanoseconds = st.sampled_from([0, 0, 1, NS // 2, NS - 1])


@st.composite
def histories(draw):
    times = draw(st.lists(offsets, min_size=1, max_size=60))
    times += draw(st.lists(st.sampled_from(times), max_size=5))   # exact ties
    snapshots = [Fake(f"snapshots/{i:04x}", BASE + offset + draw(nanoseconds),
                      tuple(draw(st.sets(st.sampled_from(TAGS), max_size=2))))
                 for i, offset in enumerate(times)]
    return snapshots


counts = st.one_of(st.integers(1, 12), st.just(UNLIMITED))
durations = st.builds(Duration, st.integers(0, 2), st.integers(0, 14), st.integers(0, 40),
                      st.integers(0, 72)).filter(lambda d: not d.is_zero())
policies = st.one_of(
    st.just(LADDER),
    st.builds(Policy,
              st.dictionaries(st.sampled_from(("last", *PERIODS)), counts, max_size=4),
              st.dictionaries(st.sampled_from(("all", *PERIODS)), durations, max_size=3),
              st.frozensets(st.sampled_from(TAGS), max_size=2)),
)


@settings(max_examples=400, deadline=None)
@given(histories(), policies, st.integers(-2 * DAY, 400 * DAY), st.data())
def test_the_policy_keeps_exactly_what_the_reference_keeps(history, policy, now_offset, data):
    now_ns = BASE + now_offset
    pinned = data.draw(st.sets(st.sampled_from([s.name for s in history]), max_size=3))
    decisions = apply_policy(policy, history, now_ns, frozenset(pinned))
    assert sorted(d.snapshot.name for d in decisions) == sorted(s.name for s in history)
    assert [d.snapshot.time_ns for d in decisions] == sorted((s.time_ns for s in history), reverse=True)
    assert {d.snapshot.name for d in decisions if d.keep} == reference_kept(policy, history, now_ns, pinned)
    assert all("pinned" in d.reasons for d in decisions if d.snapshot.name in pinned)


# -- the rules by example ----------------------------------------------------------------------


def hourly_history(hours: int, every_minutes: int = 20) -> list[Fake]:
    step = every_minutes * 60 * NS
    return [Fake(f"snapshots/{i:05d}", BASE - i * step) for i in range(hours * 60 // every_minutes)]


def kept(policy: Policy, history, now_ns: int = BASE) -> list[Fake]:
    return [d.snapshot for d in apply_policy(policy, history, now_ns) if d.keep]


def test_keep_daily_keeps_the_newest_of_each_of_the_latest_days():
    history = hourly_history(hours=24 * 5)            # 12:00 back to 12:20 five days before
    days = kept(Policy(counts={"daily": 3}), history)
    assert [utc(s.time_ns) for s in days] == [datetime(2024, 6, d, h, m, tzinfo=timezone.utc)
                                              for d, h, m in ((15, 12, 0), (14, 23, 40), (13, 23, 40))]


def test_a_rule_with_room_left_keeps_the_oldest_snapshot_too():
    history = hourly_history(hours=30)                # two days have snapshots
    decisions = apply_policy(Policy(counts={"daily": 7}), history, BASE)
    kept_ones = [d for d in decisions if d.keep]
    assert len(kept_ones) == 3 and kept_ones[-1].snapshot == history[-1]
    assert kept_ones[-1].reasons == ("oldest daily",)


def test_weeks_are_iso_weeks_across_the_new_year():
    days = [datetime(2020, 12, 27, tzinfo=timezone.utc) + timedelta(days=n) for n in range(8)]
    history = [Fake(f"snapshots/{n}", int(day.timestamp()) * NS) for n, day in enumerate(days)]
    weeks = kept(Policy(counts={"weekly": 2}), history, history[-1].time_ns)
    assert [utc(s.time_ns).date() for s in weeks] == [date(2021, 1, 3), date(2020, 12, 27)]


def test_windows_are_measured_from_the_newest_snapshot_not_from_now():
    history = hourly_history(hours=48)
    a_year_later = BASE + 365 * DAY
    assert len(kept(Policy(windows={"all": Duration(days=1)}), history, a_year_later)) == 24 * 3


def test_a_snapshot_from_the_future_does_not_move_the_windows():
    history = [*hourly_history(hours=48), Fake("snapshots/future", BASE + 400 * DAY)]
    survivors = kept(Policy(windows={"all": Duration(days=1)}), history)
    assert len(survivors) == 24 * 3 + 1


def test_reasons_name_every_rule_that_keeps_a_snapshot():
    history = [Fake("snapshots/b", BASE, ("keep",)), Fake("snapshots/a", BASE - DAY)]
    policy = Policy(counts={"last": 1, "daily": 1}, windows={"hourly": Duration(hours=2)},
                    tags=frozenset({"keep"}))
    newest, older = apply_policy(policy, history, BASE, frozenset({"snapshots/a"}))
    assert newest.reasons == ("tag keep", "hourly within 2h", "last", "daily")
    assert older.reasons == ("pinned",)


def test_the_ladder_keeps_all_then_hourly_daily_weekly_and_monthly_for_ever():
    every = 15 * 60 * NS
    history = [Fake(f"snapshots/{i:06d}", BASE - i * every) for i in range(int(800 * DAY // every))]
    survivors = kept(LADDER, history)

    def per(label: str, low_days: float, high_days: float) -> dict[str, int]:
        tally: dict[str, int] = {}
        for s in survivors:
            if low_days * DAY < BASE - s.time_ns <= high_days * DAY:
                key = utc(s.time_ns).strftime(PERIOD_FORMATS[label])
                tally[key] = tally.get(key, 0) + 1
        return tally

    assert sum(1 for s in survivors if BASE - s.time_ns < DAY) == 96          # all of the last day
    assert set(per("hourly", 1, 2).values()) == {1}                            # then one an hour
    assert set(per("daily", 2.1, 29).values()) == {1}                          # one a day
    assert set(per("weekly", 32, 364).values()) <= {1, 2}                      # a week's, and a month's last
    assert len(per("weekly", 32, 364)) >= 47
    assert set(per("monthly", 367, 790).values()) == {1}                       # one a month, for ever
    assert len(per("monthly", 367, 790)) >= 13


# -- durations and stored rules ----------------------------------------------------------------


def test_durations_parse_as_restic_writes_them_plus_weeks():
    assert Duration.parse("1y6m") == Duration(years=1, months=6)
    assert Duration.parse("2w") == Duration(days=14)
    assert Duration.parse("3d12h") == Duration(days=3, hours=12)
    assert str(Duration.parse("1y2m3d4h")) == "1y2m3d4h"
    for wrong in ("", "3", "d", "3x", "1.5d", "0d", "-1d", "3d 4h"):
        with pytest.raises(ValueError):
            Duration.parse(wrong)


def test_a_month_back_from_the_31st_runs_over_as_go_does():
    march_31 = int(datetime(2023, 3, 31, 12, tzinfo=timezone.utc).timestamp()) * NS
    assert utc(Duration(months=1).start_before(march_31)) == datetime(2023, 3, 3, 12, tzinfo=timezone.utc)
    assert Duration(years=5000).start_before(march_31) < 0


def test_stored_rules_round_trip_and_an_unknown_rule_is_refused():
    policy = Policy(counts={"last": 3, "monthly": UNLIMITED}, windows={"daily": Duration(months=1)},
                    tags=frozenset({"keep"}))
    assert Policy.from_record(policy.to_record()) == policy
    assert Policy.from_record(LADDER.to_record()) == LADDER
    for record in ({"keep_unique": True}, {"daily": "7"}, {"within": [0, 0, 1]}, {"last": 0}):
        with pytest.raises(ValueError):
            Policy.from_record(record)
