"""Where the builder's blobs go: the repository's packer.

Blocks are stored from worker threads (`store_blocks_sync`), a batch at a time:
zero blocks are recognised and stored nowhere, and compression is tried on the
rest of a batch only if its first block compressed, so incompressible data
(media, archives, encrypted files) does not pay for a compression attempt per
block. The first block's attempt is kept, not done twice.
"""

from __future__ import annotations

from cloudfs.repo import BlobKind, Repository
from cloudfs.repo.chunk import encode_payload

_ZEROS = bytes(1 << 20)


class RepositorySink:
    def __init__(self, repo: Repository):
        self.repo = repo

    def store_blocks_sync(self, data: bytes, block_size: int) -> list[bytes | None]:
        view = memoryview(data)
        store = self.repo.packer.store_sync
        level = self.repo.compression_level
        ids: list[bytes | None] = []
        compress = None   # decided by the first block that is not zeros
        for start in range(0, len(data), block_size):
            block = view[start:start + block_size]
            if _is_zero(block):
                ids.append(None)
            elif compress is None and level is not None:
                payload = encode_payload(block, level)
                compress = len(payload) < len(block)
                ids.append(store(BlobKind.DATA, block, payload=payload))
            else:
                ids.append(store(BlobKind.DATA, block, compress=bool(compress)))
        return ids

    async def put_tree(self, data: bytes) -> bytes:
        return await self.repo.put_blob(BlobKind.TREE, data)


def _is_zero(block) -> bool:
    return block == _ZEROS[:len(block)] if len(block) <= len(_ZEROS) else not any(block)
