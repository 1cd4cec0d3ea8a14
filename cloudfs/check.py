"""`cloudfs check`: is everything the repository refers to there and intact?

Without --read-data it checks structure: every key slot, index and snapshot
object opens, every chunk the index names exists with the right size, every
snapshot's root tree is indexed. With --read-data it also downloads every
chunk and verifies its SHA-256, its footer and every blob in it (decrypt,
authenticate, hash), so damage anywhere in the stored bytes is found; with a
subset (`--read-data-subset N/T` or `P%`) it reads a share of the chunks, a
different share each run (`Rotation`, kept on this machine), so that T runs
(or 100/P) read them all. Damage is reported by object (`damaged`, what
`cloudfs repair` heals) and by the snapshots and paths it hurts (`affected`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import trio

from cloudfs.errors import CloudfsError, IntegrityError, ObjectNotFound
from cloudfs.fsutil import make_directories, replace_durably
from cloudfs.repo import Repository
from cloudfs.repo.chunk import CHUNKS_PREFIX, chunk_id_from_name, chunk_name, open_record, parse_footer
from cloudfs.repo.keys import KEYS_PREFIX, KeySlot
from cloudfs.snapshot.damage import affected_paths


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)      # object name -> what is wrong with it
    affected: list[tuple[str, str]] = field(default_factory=list)   # (snapshot, path) damage hurts
    more_affected: int = 0                                      # beyond those named
    chunks_read: list[str] = field(default_factory=list)
    damaged_blobs: set[bytes] = field(default_factory=set)     # blobs that do not open
    chunks: int = 0
    blobs: int = 0
    snapshots: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def damage(self, name: str, why: str) -> None:
        self.errors.append(f"{name}: {why}")
        self.damaged.setdefault(name, why)


Choose = Callable[[list[bytes]], list[bytes]]     # of every indexed chunk id, those to read


async def check_repository(repo: Repository, *, read_data: bool = False, choose: Choose | None = None,
                           progress: Callable[[int], None] | None = None,
                           expect: Callable[[int], None] | None = None) -> CheckReport:
    """Check structure; with `read_data` read every chunk, or those `choose` picks.
    `progress(n)` after each chunk read (n bytes); `expect(total)` once, before the
    first, with the bytes it will read (a progress bar's total)."""
    report = CheckReport()
    await _check_key_slots(repo, report)
    await repo.load_index()
    snapshots = await repo.snapshots()
    for name, why in repo.damaged_objects.items():
        report.damage(name, why)
    stored = {info.name: info.size for info in await repo.store.list(CHUNKS_PREFIX)}
    _check_chunks_listed(repo, stored, report)
    _check_snapshots(repo, snapshots, report)
    report.blobs = len(repo.index)
    if read_data or choose is not None:
        await _read_chunks(repo, stored, report, progress, expect, choose)
    missing = {chunk_id_from_name(name) for name, why in report.damaged.items()
               if name.startswith(CHUNKS_PREFIX) and "missing" in why}

    def hurt(blob_id: bytes) -> bool:
        location = repo.index.get(blob_id)
        return location is None or location.chunk_id in missing or blob_id in report.damaged_blobs

    if missing or report.damaged_blobs:
        found = await affected_paths(repo, snapshots, hurt)
        report.affected, report.more_affected = found.paths, found.more
    return report


async def _check_key_slots(repo: Repository, report: CheckReport) -> None:
    for info in await repo.store.list(KEYS_PREFIX):
        try:
            KeySlot.from_bytes(info.name, await repo.store.get(info.name))
        except CloudfsError as error:
            report.errors.append(str(error))


def _check_chunks_listed(repo: Repository, stored: dict[str, int], report: CheckReport) -> None:
    for chunk in repo.index.chunks():
        name = chunk_name(chunk.chunk_id)
        if name not in stored:
            report.damage(name, "chunk is missing from the store")
        elif stored[name] != chunk.size:
            report.damage(name, f"size {stored[name]} but the index says {chunk.size}")
    report.chunks = repo.index.chunk_count()
    for name in stored:
        if repo.index.chunk(chunk_id_from_name(name)) is None:
            report.warnings.append(f"{name}: not in any index (left by an interrupted upload)")


def _check_snapshots(repo: Repository, snapshots: list, report: CheckReport) -> None:
    for snapshot in snapshots:
        if snapshot.tree not in repo.index:
            report.errors.append(f"{snapshot.name}: its root tree {snapshot.tree.hex()[:16]} is not stored")
    report.snapshots = len(snapshots)


async def _read_chunks(repo: Repository, stored: dict[str, int], report: CheckReport,
                       progress: Callable[[int], None] | None, expect: Callable[[int], None] | None,
                       choose: Choose | None) -> None:
    limiter = trio.CapacityLimiter(4)

    async def verify(chunk) -> None:
        name = chunk_name(chunk.chunk_id)
        async with limiter:
            try:
                blobs = await repo.chunk_blobs(chunk.chunk_id)
            except IntegrityError as error:
                report.errors.append(str(error))
                return
            try:
                data = await repo.store.get(name)
            except ObjectNotFound:
                return  # already reported as missing
            report.bytes_read += len(data)
            report.chunks_read.append(name)
            problems, unreadable = await trio.to_thread.run_sync(_verify_chunk, repo, chunk, blobs, name, data)
            report.damaged_blobs |= unreadable
            for problem in problems:
                report.errors.append(problem)
                report.damaged.setdefault(name, problem)
        if progress:
            progress(len(data))

    # One entry per 64 MiB chunk: 16,000 for a terabyte.
    chunks = {chunk.chunk_id: chunk for chunk in repo.index.chunks() if chunk_name(chunk.chunk_id) in stored}
    chosen = [chunks[chunk_id] for chunk_id in (sorted(chunks) if choose is None else choose(sorted(chunks)))]
    if expect:
        expect(sum(chunk.size for chunk in chosen))
    async with trio.open_nursery() as nursery:
        for chunk in chosen:
            nursery.start_soon(verify, chunk)


def _verify_chunk(repo: Repository, chunk, blobs, name: str, data: bytes) -> tuple[list[str], set[bytes]]:
    """What is wrong with a chunk, and the blobs in it that do not open."""
    unreadable = set()
    if hashlib.sha256(data).digest() != chunk.sha256:
        problems = [f"{name}: content does not match its SHA-256 in the index"]
    else:
        problems = []
    try:
        footer = {blob.blob_id: blob for blob in parse_footer(repo.master, name, data)}
    except CloudfsError as error:
        problems.append(str(error))
        footer = {}
    for blob in blobs:
        if footer and footer.get(blob.blob_id) != blob:
            problems.append(f"{name}: footer and index disagree about blob {blob.blob_id.hex()[:16]}")
        try:
            open_record(repo.master, blob, data[blob.offset:blob.offset + blob.length], name)
        except IntegrityError as error:
            problems.append(str(error))
            unreadable.add(blob.blob_id)
    return problems, unreadable


# -- reading a share of the chunks per run -------------------------------------------------


class Rotation:
    """Which share of the chunks a subset check reads this run, remembered in a small
    file on this machine, so that successive runs read different shares: `N/T` reads
    slice N of T the first time, then N+1, ... (a chunk's slice is its id modulo T, so
    T runs read every chunk); `P%` reads the next P% of the chunks by id after where
    the last run stopped. Without a file (no state directory) nothing rotates."""

    def __init__(self, path: Path | None):
        self.path = path
        try:
            self.state = json.loads(path.read_text()) if path else {}
        except (OSError, ValueError):
            self.state = {}

    def slice(self, number: int, count: int) -> Choose:
        turns = self.state.setdefault("slices", {})
        turn = turns.get(str(count), 0)
        chosen = (number - 1 + turn) % count
        turns[str(count)] = turn + 1

        def choose(chunk_ids: list[bytes]) -> list[bytes]:
            return [c for c in chunk_ids if int.from_bytes(c[:8], "big") % count == chosen]

        return choose

    def share(self, percent: float) -> Choose:
        def choose(chunk_ids: list[bytes]) -> list[bytes]:
            if not chunk_ids:
                return []
            cursor = bytes.fromhex(self.state.get("cursor", ""))
            start = next((i for i, c in enumerate(chunk_ids) if c > cursor), 0)
            wanted = min(len(chunk_ids), math.ceil(len(chunk_ids) * percent / 100))
            chosen = [chunk_ids[(start + i) % len(chunk_ids)] for i in range(wanted)]
            self.state["cursor"] = chosen[-1].hex()
            return chosen

        return choose

    def save(self) -> None:
        if self.path is None:
            return
        make_directories(self.path.parent)
        replace_durably(self.path, json.dumps(self.state).encode())


def parse_subset(text: str) -> tuple[str, float, int]:
    """`N/T` -> ("slice", N, T); `P%` -> ("share", P, 0). ValueError if neither."""
    text = text.strip()
    if text.endswith("%"):
        percent = float(text[:-1])
        if not 0 < percent <= 100:
            raise ValueError(f"{text}: a share of more than 0% and at most 100%")
        return "share", percent, 0
    number, slash, count = text.partition("/")
    if not slash or not number.isdigit() or not count.isdigit() or not 1 <= int(number) <= int(count):
        raise ValueError(f"{text!r}: N/T with 1 <= N <= T (1/3), or P% (10%)")
    return "slice", int(number), int(count)
