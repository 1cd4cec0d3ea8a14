"""Repacking: the live blobs of sparse chunks, copied into new chunks.

Each chunk is read whole (one GET), each live blob is opened and verified
(I5: a damaged blob stops the prune before anything is doomed) and sealed
again, under the new chunk's key, with its payload as it was (compressed or
not: nothing is compressed twice). The new chunks get their index objects
like any upload's, before the doom list names the old ones (commit last).
A live blob is moved only from the chunk that holds its first copy; copies
elsewhere are garbage like any unused record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from cloudfs.repo import Repository
from cloudfs.repo.blobset import BlobSet
from cloudfs.repo.chunk import BlobLocation, chunk_name, open_record_payload


@dataclass
class Repacked:
    chunks: int = 0
    blobs: int = 0
    bytes: int = 0          # of sealed records copied


async def repack(repo: Repository, chunk_ids: list[bytes], live: BlobSet,
                 advance: Callable[[int], None] = lambda n: None) -> Repacked:
    done = Repacked()
    for chunk_id in chunk_ids:
        moving = await _live_records(repo, chunk_id, live)
        if moving:
            data = await repo.store.get(chunk_name(chunk_id))
            await trio.to_thread.run_sync(_move, repo, chunk_id, data, moving)
        done.chunks += 1
        done.blobs += len(moving)
        done.bytes += sum(location.length for location in moving)
        advance(1)
    await repo.flush()
    return done


async def _live_records(repo: Repository, chunk_id: bytes, live: BlobSet) -> list[BlobLocation]:
    """The records of a chunk that hold the first copy of a live blob."""
    records = await repo.chunk_blobs(chunk_id)
    wanted = live.members(record.blob_id for record in records)
    homes = repo.index.get_many(wanted)
    return [record for record in records if record.blob_id in wanted
            and getattr(homes.get(record.blob_id), "chunk_id", None) == chunk_id]


def _move(repo: Repository, chunk_id: bytes, data: bytes, records: list[BlobLocation]) -> None:
    """In a worker thread (the packer uploads from there)."""
    name = chunk_name(chunk_id)
    for record in records:
        payload, plaintext = open_record_payload(repo.master, record,
                                                 data[record.offset:record.offset + record.length], name)
        repo.packer.store_sync(record.kind, plaintext, blob_id=record.blob_id, payload=payload, force=True)
