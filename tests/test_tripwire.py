"""The tripwire's detector on its own: events in, a burst out (no FUSE)."""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import pytest

import cloudfs

from cloudfs.alerts import AlertBook
from cloudfs.live.tripwire import CREATED_CAP, Thresholds, Tripwire, entropy, extension_of, looks_encrypted

pytestmark = pytest.mark.timeout(30)

TEXT = b"def main():\n    return sum(range(10))  # the usual source code\n" * 40


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tripwire(files: int = 10, window: float = 60.0):
    fired, clock = [], Clock()
    wire = Tripwire(Thresholds(files=files, window=window), fired.append, clock=clock)
    return wire, fired, clock


def test_entropy_tells_random_and_compressed_bytes_from_text():
    assert entropy(os.urandom(512)) > 7.6
    sources = b"".join(path.read_bytes() for path in sorted(Path(cloudfs.__file__).parent.rglob("*.py")))
    assert entropy(zlib.compress(sources, 6)[4096:4608]) > 7.5     # compressed data looks encrypted
    assert entropy(TEXT[:512]) < 5.0
    assert entropy(bytes(512)) == 0.0
    assert looks_encrypted(os.urandom(4096), 7.5) and not looks_encrypted(TEXT, 7.5)
    assert not looks_encrypted(bytes(4096), 0.5) and looks_encrypted(bytes(range(256)) * 2, 7.5)


def test_rewriting_existing_files_with_random_bytes_fires_once_and_keeps_counting():
    wire, fired, clock = tripwire(files=10)
    for ino in range(100, 109):
        wire.wrote_start(ino, os.urandom(4096))
        clock.now += 1
    assert not fired
    wire.wrote_start(109, os.urandom(4096))
    assert len(fired) == 1
    burst = fired[0]
    assert burst.rule == "rewrites" and burst.rewrites == 10
    assert burst.fired_ns - burst.started_ns == pytest.approx(9e9, rel=0.01)   # the first event's time
    for ino in range(110, 130):
        wire.wrote_start(ino, os.urandom(4096))
    wire.wrote_start(110, os.urandom(4096))          # the same file again counts once
    assert len(fired) == 1 and burst.rewrites == 30
    wire.rearm()
    for ino in range(200, 210):
        wire.wrote_start(ino, os.urandom(4096))
    assert len(fired) == 2


def test_new_files_text_and_slow_rewrites_do_not_fire():
    wire, fired, clock = tripwire(files=10, window=60)
    for ino in range(1, 1000):                       # new files, random content: a copy, an untar
        wire.created(ino)
        wire.wrote_start(ino, os.urandom(65536))
    for ino in range(2000, 2100):                    # existing files rewritten with text
        wire.wrote_start(ino, TEXT)
    for ino in range(3000, 3030):                    # one encrypted file every 10 s: 6 per minute
        wire.wrote_start(ino, os.urandom(4096))
        clock.now += 10
    for ino in range(4000, 4100):                    # writes too short to judge
        wire.wrote_start(ino, os.urandom(100))
    assert not fired


def test_files_created_long_ago_count_even_when_nothing_was_created_since():
    wire, fired, clock = tripwire(files=10)
    for ino in range(1, 11):
        wire.created(ino)
    clock.now += 3600                                # an hour later, no create in between
    for ino in range(1, 11):
        wire.wrote_start(ino, os.urandom(4096))
    assert len(fired) == 1


def test_renames_to_one_new_extension_fire_but_atomic_saves_do_not():
    wire, fired, clock = tripwire(files=10)
    for ino in range(1, 200):                        # editors and rsync: a new file renamed over the old
        wire.created(ino)
        wire.renamed(ino, b".notes%d.txt.swp" % ino, b"notes%d.txt" % ino)
    for ino in range(300, 330):                      # different new extensions
        wire.renamed(ino, b"a%d" % ino, b"a.%d" % ino)
    for ino in range(400, 430):                      # same extension as before (a move)
        wire.renamed(ino, b"photo%d.jpg" % ino, b"photo-%d.JPG" % ino)
    assert not fired
    for ino in range(500, 510):
        wire.renamed(ino, b"report%d.pdf" % ino, b"report%d.pdf.locked" % ino)
    assert len(fired) == 1 and fired[0].rule == "renames" and fired[0].extension == "locked"
    assert fired[0].renames == 10 and fired[0].examples == ["report509.pdf.locked"]


def test_extension_of():
    assert extension_of(b"a.tar.GZ") == b"gz"
    assert extension_of(b"README") == b"" and extension_of(b".bashrc") == b""
    assert extension_of(b"x." + b"y" * 40) == b""


def test_memory_is_bounded_by_the_cap():
    wire, fired, clock = tripwire()
    for ino in range(CREATED_CAP + 1000):
        wire.created(ino)
    assert len(wire._created) <= CREATED_CAP
    for name in range(10_000):                       # many extensions, one file each
        wire.renamed(1 << 40 | name, b"f", b"f.%x" % random.getrandbits(40))
    assert len(wire._renames) <= 4 * wire.thresholds.files + 1 and not fired


def test_alerts_survive_in_the_state_directory(tmp_path):
    wire, fired, clock = tripwire(files=2)
    wire.wrote_start(1, os.urandom(1024))
    wire.wrote_start(2, os.urandom(1024))
    book = AlertBook(tmp_path)
    alert = book.add(fired[0])
    again = AlertBook(tmp_path)
    assert [a.id for a in again.open_alerts()] == [alert.id] and again.alerts[0].burst.rewrites == 2
    assert [a.id for a in again.acknowledge()] == [alert.id]
    assert AlertBook(tmp_path).open_alerts() == [] and AlertBook(tmp_path).acknowledge() == []


def test_without_a_repository_or_a_writable_state_directory_the_alert_still_stands(tmp_path):
    from cloudfs.alerts import NO_REPOSITORY, Alarm

    wire, fired, clock = tripwire(files=2)
    alarm = Alarm(AlertBook(tmp_path / "gone"), None)      # saving fails: no such directory
    wire.on_fire = alarm.fired
    wire.wrote_start(1, os.urandom(1024))
    wire.wrote_start(2, os.urandom(1024))                 # fires; nothing reaches the handler
    assert [alert["pin_state"] for alert in alarm.status()] == [NO_REPOSITORY]
    assert not (tmp_path / "gone").exists()
