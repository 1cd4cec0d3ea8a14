"""Ranged reads of several records at once: spans.

A span is records of one chunk fetched with one ranged GET (neighbours within
`max_gap` bytes of each other, up to `max_bytes`), each record then opened on its
own (AES-GCM with the chunk's key, decompression, the keyed hash: I5): a record
that fails is an IntegrityError for that blob alone. The snapshot mount's and the
restore's fetchers read file content this way, the snapshot builder the previous
tree's nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import trio

from cloudfs.errors import (
    AccessDenied,
    BucketNotFound,
    IntegrityError,
    ObjectNotFound,
    StoreError,
    StoreUnavailable,
)
from cloudfs.repo.chunk import BlobLocation, chunk_name, open_record
from cloudfs.repo.repository import Repository

SPAN_BYTES = 8 << 20           # the largest ranged GET
SPAN_GAP = 1 << 20             # unwanted bytes a GET may carry to save another GET
THREAD_BYTES = 256 << 10       # spans smaller than this are opened on the event loop

# Errors that say nothing about the blob itself: the store cannot be used now.
STORE_DOWN = (StoreUnavailable, AccessDenied, BucketNotFound)


@dataclass(frozen=True)
class Span:
    """Records of one chunk fetched with one ranged GET: bytes [start, end)."""

    chunk_id: bytes
    start: int
    end: int
    locations: tuple[BlobLocation, ...]

    @property
    def name(self) -> str:
        return chunk_name(self.chunk_id)


def plan_spans(locations: Iterable[BlobLocation], max_bytes: int = SPAN_BYTES,
               max_gap: int = 0) -> list[Span]:
    """Group records into ranged reads: same chunk, at most `max_gap` unwanted
    bytes between neighbours, at most `max_bytes` per read (a single larger
    record gets a read of its own)."""
    spans: list[Span] = []
    current: list[BlobLocation] = []
    for location in sorted(set(locations), key=lambda loc: (loc.chunk_id, loc.offset)):
        if current:
            last, first = current[-1], current[0]
            end = last.offset + last.length
            fits = (location.chunk_id == last.chunk_id and end <= location.offset <= end + max_gap
                    and location.offset + location.length - first.offset <= max_bytes)
            if not fits:
                spans.append(_span(current))
                current = []
        current.append(location)
    if current:
        spans.append(_span(current))
    return spans


def _span(locations: list[BlobLocation]) -> Span:
    last = locations[-1]
    return Span(last.chunk_id, locations[0].offset, last.offset + last.length, tuple(locations))


def open_span(repo: Repository, span: Span, data: bytes) -> dict[bytes, bytes | IntegrityError]:
    """Open every record of a fetched span; a short read (truncated chunk) fails
    exactly the records it cut."""
    view = memoryview(data)
    results: dict[bytes, bytes | IntegrityError] = {}
    for location in span.locations:
        start = location.offset - span.start
        try:
            results[location.blob_id] = open_record(repo.master, location,
                                                    view[start:start + location.length], span.name)
        except IntegrityError as error:
            results[location.blob_id] = error
    return results


class _DamagedSpan(IntegrityError):
    """Some record of a span failed: with several targets, the span is read from the next."""

    def __init__(self, span: Span, results: dict[bytes, bytes | IntegrityError]):
        super().__init__(span.name, "damaged records")
        self.results = results


async def fetch_span(repo: Repository, span: Span) -> dict[bytes, bytes | Exception]:
    """Fetch and open one span. Store outages raise (StoreUnavailable and kin);
    everything that is the data's fault becomes a per-blob IntegrityError, after
    every target that holds the chunk was tried."""

    async def opened(data: bytes) -> dict[bytes, bytes | IntegrityError]:
        if span.end - span.start >= THREAD_BYTES:
            results = await trio.to_thread.run_sync(open_span, repo, span, data)
        else:
            results = open_span(repo, span, data)
        if any(isinstance(result, IntegrityError) for result in results.values()):
            raise _DamagedSpan(span, results)
        return results

    try:
        return await repo.store.get_verified(span.name, opened, span.start, span.end - span.start)
    except _DamagedSpan as damaged:
        return damaged.results
    except ObjectNotFound:
        error = IntegrityError(span.name, "chunk is missing from the store")
    except STORE_DOWN:
        raise
    except StoreError as failure:   # e.g. a range past the end of a truncated chunk
        error = IntegrityError(span.name, f"chunk cannot be read as indexed ({failure})")
    return {location.blob_id: error for location in span.locations}


async def fetch_span_bytes(repo: Repository, span: Span) -> bytes | IntegrityError:
    try:
        return await repo.store.get(span.name, span.start, span.end - span.start)
    except ObjectNotFound:
        return IntegrityError(span.name, "chunk is missing from the store")
    except STORE_DOWN:
        raise
    except StoreError as error:   # e.g. a range past the end of a truncated chunk
        return IntegrityError(span.name, f"chunk cannot be read as indexed ({error})")
