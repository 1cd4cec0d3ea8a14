"""The tripwire's alerts: kept in the state directory, and the pin that answers each.

When the live mount's tripwire (`cloudfs.live.tripwire`) fires, `Alarm.fired`
logs a loud warning and records an alert in `STATE_DIR/alerts.json` at once
(before any network), so that it survives a crash or a remount. `Alarm.run`
then pins the newest snapshot of this directory sealed before the burst began
(a snapshot's time is its seal, and it holds what was written before it:
I2), retrying while the store is down; with Object Lock it also extends the
locks of what that snapshot needs. The alert shows in `cloudfs status` until
`cloudfs alerts ack`, which clears it here (through the control socket) or in
the file when nothing is mounted (`acknowledge_in`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cloudfs.errors import CloudfsError
from cloudfs.fsutil import replace_durably
from cloudfs.live.tripwire import Burst

log = logging.getLogger(__name__)

ALERTS_FILE = "alerts.json"
RETRY_AFTER_FAILURE = 15.0     # seconds before pinning is tried again after an unexpected error
PENDING, PINNED, NOTHING_TO_PIN, NO_REPOSITORY = "pending", "pinned", "no snapshot before the burst", "no repository"


@dataclass
class Alert:
    id: str
    burst: Burst
    pin_state: str = PENDING          # PENDING, PINNED, NOTHING_TO_PIN or NO_REPOSITORY
    snapshot: str | None = None       # the pinned snapshot
    pin: str | None = None            # its pin object
    locks: str | None = None          # what became of its Object Lock retention
    acknowledged_ns: int | None = None

    def as_dict(self) -> dict:
        record = asdict(self)
        record["burst"] = self.burst.as_dict()
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "Alert":
        return cls(**{**record, "burst": Burst(**record["burst"])})

    def describe(self) -> str:
        burst = self.burst
        what = (f"{burst.rewrites} files rewritten with high-entropy data" if burst.rule == "rewrites"
                else f"{burst.renames} files renamed to .{burst.extension}")
        return f"tripwire alert {self.id}: {what}"


class AlertBook:
    """The alerts of one protected directory, in its state directory."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / ALERTS_FILE
        self.alerts: list[Alert] = _load(self.path)

    def open_alerts(self) -> list[Alert]:
        return [alert for alert in self.alerts if alert.acknowledged_ns is None]

    def add(self, burst: Burst, pin_state: str = PENDING) -> Alert:
        """Record a new alert (saved; if saving fails, it is kept in memory and raised)."""
        alert = Alert(os.urandom(4).hex(), burst, pin_state)
        self.alerts.append(alert)
        self.save()
        return alert

    def acknowledge(self, alert_id: str | None = None) -> list[Alert]:
        """Acknowledge the open alerts (or the one `alert_id` names); those it did (maybe none)."""
        chosen = [alert for alert in self.open_alerts() if alert_id in (None, alert.id)]
        if not chosen:
            return []
        now = time.time_ns()
        for alert in chosen:
            alert.acknowledged_ns = now
        self.save()
        return chosen

    def save(self) -> None:
        data = json.dumps({"alerts": [alert.as_dict() for alert in self.alerts[-100:]]}, indent=1)
        replace_durably(self.path, data.encode())


def _load(path: Path) -> list[Alert]:
    try:
        records = json.loads(path.read_text())["alerts"]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError) as error:
        log.error("cannot read the tripwire alerts in %s (%s); starting a new list", path, error)
        return []
    return [Alert.from_dict(record) for record in records]


def acknowledge_in(state_dir: Path, alert_id: str | None = None) -> list[dict]:
    """`cloudfs alerts ack` while the directory is not mounted: in the file itself."""
    return [alert.as_dict() for alert in AlertBook(state_dir).acknowledge(alert_id)]


def alerts_in(state_dir: Path) -> list[dict]:
    """`cloudfs alerts list` while the directory is not mounted."""
    return [alert.as_dict() for alert in AlertBook(state_dir).alerts]


@dataclass
class PinningContext:
    """What the alarm needs of the daemon to pin: its repository, how to wait out a
    store that is down, and whether a snapshot sealed before a moment is still uploading."""

    repo: object
    source: str
    until_store_answers: Callable[[Callable[[], Awaitable]], Awaitable]
    uploading_sealed_before: Callable[[int], bool]
    committed: Callable[[], Awaitable[None]]      # returns after the next commit
    host: str = field(default_factory=socket.gethostname)


class Alarm:
    """Records the tripwire's bursts as alerts and pins a snapshot for each."""

    def __init__(self, book: AlertBook, pinning: PinningContext | None):
        self.book = book
        self.pinning = pinning
        self._wake: Callable[[], None] = lambda: None
        self.rearm: Callable[[], None] = lambda: None    # set by the daemon: the tripwire's

    def fired(self, burst: Burst) -> None:
        """The tripwire's on_fire (in a FUSE handler: no await, no network, and no
        exception may reach the write that fired it)."""
        try:
            alert = self.book.add(burst, NO_REPOSITORY if self.pinning is None else PENDING)
        except OSError as error:
            log.critical("RANSOMWARE TRIPWIRE: cannot record the alert in %s: %s", self.book.path, error)
            alert = self.book.alerts[-1]
        log.critical("RANSOMWARE TRIPWIRE: %s since %s; %s. Check the directory, then `cloudfs alerts "
                     "ack` (docs/operations.md, \"Ransomware tripwire\")", alert.describe(),
                     _iso(burst.started_ns),
                     "pinning the snapshot before it" if self.pinning else "no repository to pin a snapshot in")
        self._wake()

    async def run(self) -> None:
        """Pin a snapshot for every alert that has none yet (also after a remount)."""
        import trio

        while True:
            woken = trio.Event()
            self._wake = woken.set
            for alert in [a for a in self.book.alerts if a.pin_state == PENDING]:
                try:
                    await self._pin(alert)
                except Exception as error:  # noqa: BLE001 - the mount serves whatever happens here
                    log.error("tripwire alert %s: cannot pin the snapshot before it yet (%s); retrying",
                              alert.id, error)
                    await trio.sleep(RETRY_AFTER_FAILURE)
                    woken.set()
            await woken.wait()

    async def _pin(self, alert: Alert) -> None:
        from cloudfs.repo.pins import Pin

        context = self.pinning
        while True:
            snapshots = await context.until_store_answers(context.repo.snapshots)
            before = [s for s in snapshots if s.host == context.host and s.source == context.source
                      and s.time_ns < alert.burst.started_ns]
            if before or not context.uploading_sealed_before(alert.burst.started_ns):
                break
            await context.committed()     # the clean snapshot is still uploading: pin it once committed
        if not before:
            alert.pin_state = NOTHING_TO_PIN
            log.critical("tripwire alert %s: no snapshot of %s was taken before the burst; nothing to pin",
                         alert.id, context.source)
            self.book.save()
            return
        snapshot = before[-1]
        note = f"{alert.describe()} at {_iso(alert.burst.started_ns)}; the last snapshot before it"
        pin = await context.until_store_answers(lambda: context.repo.save_pin(Pin(snapshot.name, note=note)))
        alert.pin_state, alert.snapshot, alert.pin = PINNED, snapshot.name, pin.name
        self.book.save()
        log.critical("tripwire alert %s: pinned %s (forget and prune keep it)", alert.id, snapshot.name)
        if context.repo.config.object_lock is not None:
            alert.locks = await _extend_locks(context.repo, snapshot)
            self.book.save()

    def acknowledge(self, alert_id: str | None) -> list[dict]:
        acknowledged = self.book.acknowledge(alert_id)
        if not self.book.open_alerts():
            self.rearm()
        return [alert.as_dict() for alert in acknowledged]

    def status(self) -> list[dict]:
        return [alert.as_dict() for alert in self.book.open_alerts()]


async def _extend_locks(repo, snapshot) -> str:
    """Lock what `snapshot` needs for the repository's full period from now; or say why not."""
    from datetime import datetime, timedelta, timezone

    from cloudfs.repo.locks import extend_retention
    from cloudfs.snapshot.locks import PREFIXES, needed_objects
    from cloudfs.snapshot.reachable import reachable_chunks

    lock = repo.config.object_lock
    try:
        reachable = await reachable_chunks(repo, [snapshot])
        needed, _ = await needed_objects(repo, reachable.chunks)
        report = await extend_retention(repo.store, lock, needed, PREFIXES,
                                        now=datetime.now(timezone.utc), margin=timedelta(days=lock.days))
    except CloudfsError as error:
        log.error("tripwire: cannot extend the Object Lock retention of %s: %s; run `cloudfs locks "
                  "extend` with the maintenance role", snapshot.name, error)
        return f"not extended: {error}"
    return f"{report.checked} objects locked until at least {report.earliest:%Y-%m-%d}" if report.earliest \
        else "nothing to lock"


def _iso(time_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time_ns / 1e9))
