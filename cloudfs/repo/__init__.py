"""The repository format: config, key slots, chunks of sealed blobs, the blob
index and snapshot objects. docs/format.md specifies it byte by byte."""

from cloudfs.repo.chunk import BlobKind
from cloudfs.repo.config import RepoConfig
from cloudfs.repo.repository import Repository
from cloudfs.repo.snapshots import Snapshot

__all__ = ["BlobKind", "RepoConfig", "Repository", "Snapshot"]
