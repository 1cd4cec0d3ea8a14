"""Where the builder's blobs go: the repository's packer.

Blocks are stored from worker threads (`store_blocks_sync`), a batch at a time:
zero blocks are recognised and stored nowhere, and compression is tried on a
batch only if its first block compresses, so incompressible data (media,
archives, encrypted files) does not pay for a compression attempt per block.
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
        blocks = [view[start:start + block_size] for start in range(0, len(data), block_size)]
        compress = self._worth_compressing(blocks)
        store = self.repo.packer.store_sync
        return [None if _is_zero(block) else store(BlobKind.DATA, block, compress=compress)
                for block in blocks]

    async def put_tree(self, data: bytes) -> bytes:
        return await self.repo.put_blob(BlobKind.TREE, data)

    def _worth_compressing(self, blocks: list[memoryview]) -> bool:
        level = self.repo.compression_level
        if level is None:
            return False
        sample = next((b for b in blocks if not _is_zero(b)), None)
        return sample is not None and len(encode_payload(sample, level)) < len(sample)


def _is_zero(block) -> bool:
    return block == _ZEROS[:len(block)] if len(block) <= len(_ZEROS) else not any(block)
