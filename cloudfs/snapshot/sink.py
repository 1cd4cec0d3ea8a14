"""Where the builder's blobs go: the repository's packer.

Blocks are stored from worker threads (`store_buffers_sync`), several buffers
at a time (a group of small files, or a run of a large one): each block is
hashed first and the index is asked about all of them in one query (a query per
block cost more than a small file's hashing, compression and sealing). Zero
blocks are recognised and stored nowhere, blocks the repository has are not
compressed, and compression is tried on the rest of a buffer only if its first
block compressed, so incompressible data (media, archives, encrypted files)
does not pay for a compression attempt per block. The first block's attempt
is kept, not done twice.
"""

from __future__ import annotations

from cloudfs.repo import BlobKind, Repository
from cloudfs.repo.chunk import encode_payload

_ZEROS = bytes(1 << 20)


class RepositorySink:
    def __init__(self, repo: Repository):
        self.repo = repo

    def store_buffers_sync(self, buffers: list, block_size: int) -> list[list[bytes | None]]:
        """Store every block of each buffer; the ids per buffer (None: a zero block)."""
        blob_id = self.repo.master.blob_id
        planned = []
        for data in buffers:
            view = memoryview(data)
            blocks = [view[start:start + block_size] for start in range(0, len(data), block_size)]
            planned.append([(block, None if _is_zero(block) else blob_id(block)) for block in blocks])
        known = self.repo.packer.indexed(i for blocks in planned for _, i in blocks if i is not None)
        return [self._store_blocks(blocks, known) for blocks in planned]

    def _store_blocks(self, blocks: list, known: set[bytes]) -> list[bytes | None]:
        store = self.repo.packer.store_sync
        level = self.repo.compression_level
        ids: list[bytes | None] = []
        compress = None   # decided by the first block that is not zeros nor stored
        for block, blob_id in blocks:
            if blob_id is None:
                ids.append(None)
            elif compress is None and level is not None and blob_id not in known:
                payload = encode_payload(block, level)
                compress = len(payload) < len(block)
                ids.append(store(BlobKind.DATA, block, blob_id=blob_id, payload=payload, known=known))
            else:
                ids.append(store(BlobKind.DATA, block, blob_id=blob_id, compress=bool(compress), known=known))
        return ids

    async def put_tree(self, data: bytes) -> bytes:
        return await self.repo.put_blob(BlobKind.TREE, data)


def _is_zero(block) -> bool:
    return block == _ZEROS[:len(block)] if len(block) <= len(_ZEROS) else not any(block)
