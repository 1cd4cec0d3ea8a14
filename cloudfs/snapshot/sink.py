"""Where the builder's blobs go: straight into a repository, one at a time.

The uploader's pipeline replaces this with a parallel sink; the builder only
needs put_data and put_tree."""

from __future__ import annotations

from cloudfs.repo import BlobKind, Repository


class RepositorySink:
    def __init__(self, repo: Repository):
        self.repo = repo

    async def put_data(self, data: bytes) -> bytes:
        return await self.repo.put_blob(BlobKind.DATA, data)

    async def put_tree(self, data: bytes) -> bytes:
        return await self.repo.put_blob(BlobKind.TREE, data)
