"""`cloudfs check`: is everything the repository refers to there and intact?

Without --read-data it checks structure: every key slot, index and snapshot
object opens, every chunk the index names exists with the right size, every
snapshot's root tree is indexed. With --read-data it also downloads every
chunk and verifies its SHA-256, its footer and every blob in it (decrypt,
authenticate, hash), so damage anywhere in the stored bytes is found.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import trio

from cloudfs.errors import CloudfsError, IntegrityError, ObjectNotFound
from cloudfs.repo import Repository
from cloudfs.repo.chunk import CHUNKS_PREFIX, chunk_id_from_name, chunk_name, open_record, parse_footer
from cloudfs.repo.keys import KEYS_PREFIX, KeySlot


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    chunks: int = 0
    blobs: int = 0
    snapshots: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


async def check_repository(repo: Repository, *, read_data: bool = False,
                           progress: Callable[[int], None] | None = None,
                           expect: Callable[[int], None] | None = None) -> CheckReport:
    """`progress(n)` after each chunk read (n bytes); `expect(total)` once, before
    the first, with the bytes --read-data will read (a progress bar's total)."""
    report = CheckReport()
    await _check_key_slots(repo, report)
    await repo.load_index()
    snapshots = await repo.snapshots()
    report.errors.extend(f"{name}: {why}" for name, why in repo.damaged_objects.items())
    stored = {info.name: info.size for info in await repo.store.list(CHUNKS_PREFIX)}
    _check_chunks_listed(repo, stored, report)
    _check_snapshots(repo, snapshots, report)
    report.blobs = len(repo.index)
    if read_data:
        await _read_all_chunks(repo, stored, report, progress, expect)
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
            report.errors.append(f"{name}: chunk is missing from the store")
        elif stored[name] != chunk.size:
            report.errors.append(f"{name}: size {stored[name]} but the index says {chunk.size}")
    report.chunks = repo.index.chunk_count()
    for name in stored:
        if repo.index.chunk(chunk_id_from_name(name)) is None:
            report.warnings.append(f"{name}: not in any index (left by an interrupted upload)")


def _check_snapshots(repo: Repository, snapshots: list, report: CheckReport) -> None:
    for snapshot in snapshots:
        if snapshot.tree not in repo.index:
            report.errors.append(f"{snapshot.name}: its root tree {snapshot.tree.hex()[:16]} is not stored")
    report.snapshots = len(snapshots)


async def _read_all_chunks(repo: Repository, stored: dict[str, int], report: CheckReport,
                           progress: Callable[[int], None] | None,
                           expect: Callable[[int], None] | None) -> None:
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
            report.errors.extend(await trio.to_thread.run_sync(_verify_chunk, repo, chunk, blobs, name, data))
        if progress:
            progress(len(data))

    # One entry per 64 MiB chunk: 16,000 for a terabyte.
    chunks = [chunk for chunk in repo.index.chunks() if chunk_name(chunk.chunk_id) in stored]
    if expect:
        expect(sum(chunk.size for chunk in chunks))
    async with trio.open_nursery() as nursery:
        for chunk in chunks:
            nursery.start_soon(verify, chunk)


def _verify_chunk(repo: Repository, chunk, blobs, name: str, data: bytes) -> list[str]:
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
    return problems
