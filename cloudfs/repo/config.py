"""The repository's `config` object: identity and the parameters every writer must share."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

from cloudfs.crypto import MasterKey
from cloudfs.errors import IntegrityError
from cloudfs.repo.format import Kind, open_object, seal_object
from cloudfs.store.base import LOCK_MODES

CONFIG_NAME = "config"
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
DEFAULT_BLOCK_SIZE = 64 * 1024
COMPRESSIONS = ("zstd", "none")


def parse_compression(text: str) -> int | None:
    """`zstd` (level 1), `zstd:LEVEL` (-7 to 22) or `none` -> the zstd level, or None
    for none. Raises ValueError."""
    method, _, level = text.strip().lower().partition(":")
    if method == "none" and not level:
        return None
    if method == "zstd":
        try:
            value = int(level) if level else 1
        except ValueError:
            value = None
        if value is not None and -7 <= value <= 22 and value != 0:
            return value
    raise ValueError(f"not a compression: {text!r} (zstd, zstd:LEVEL from -7 to 22, or none)")


@dataclass(frozen=True)
class ObjectLock:
    """S3 Object Lock for every object of the repository: each is stored locked for
    `days` in `mode` (governance or compliance), and `cloudfs locks extend` keeps
    what kept snapshots need locked for at least that long."""

    mode: str
    days: int

    def __post_init__(self):
        if self.mode not in LOCK_MODES:
            raise ValueError(f"unknown Object Lock mode {self.mode!r} (governance or compliance)")
        if not isinstance(self.days, int) or self.days < 1:
            raise ValueError("the Object Lock period must be a whole number of days, at least 1")


@dataclass(frozen=True)
class RepoConfig:
    repo_id: bytes = field(default_factory=lambda: os.urandom(16))
    chunk_size: int = DEFAULT_CHUNK_SIZE
    block_size: int = DEFAULT_BLOCK_SIZE
    compression: str = "zstd"
    compression_level: int = 1
    blob_hash: str = "blake3-keyed"
    cipher: str = "aes-256-gcm"
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    object_lock: ObjectLock | None = None    # stored only when set

    def __post_init__(self):
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {self.compression!r}")
        if self.block_size < 4096 or self.block_size & (self.block_size - 1):
            raise ValueError("block size must be a power of two of at least 4096")
        if self.chunk_size < self.block_size * 2:
            raise ValueError("chunk size must be at least twice the block size")

    @property
    def repo_id_hex(self) -> str:
        return self.repo_id.hex()

    def seal(self, master: MasterKey) -> bytes:
        values = asdict(self)
        if self.object_lock is None:
            del values["object_lock"]
        return seal_object(Kind.CONFIG, master.config_key, CONFIG_NAME, values)

    @classmethod
    def open(cls, master: MasterKey, data: bytes) -> "RepoConfig":
        """The config in `data`; keys this cloudfs does not know are ignored (format.md)."""
        values = open_object(Kind.CONFIG, master.config_key, CONFIG_NAME, data)
        known = {item.name for item in fields(cls)}
        try:
            values = {key: value for key, value in values.items() if key in known}
            if values.get("object_lock") is not None:
                values["object_lock"] = ObjectLock(**values["object_lock"])
            return cls(**values)
        except (TypeError, ValueError, AttributeError) as error:
            raise IntegrityError(CONFIG_NAME, f"unusable settings ({error})") from None
