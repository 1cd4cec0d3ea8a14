"""Helpers for tests that use the repository API against the rclone S3 server."""

from __future__ import annotations

import trio

from cloudfs import crypto
from cloudfs.repo import RepoConfig, Repository
from cloudfs.store import RetryPolicy, S3Options, S3Store, Store
from cloudfs.store.wrapper import StoreWrapper

PASSPHRASE = b"correct horse battery staple"
FAST_KDF_SECONDS = 0.01


def fast_kdf() -> crypto.KdfParams:
    return crypto.tune_kdf(FAST_KDF_SECONDS)


def s3_store(server, bucket: str, prefix: str = "repo") -> S3Store:
    return S3Store(bucket, prefix, S3Options(endpoint_url=server.endpoint,
                                             retry=RetryPolicy(attempts=3, base_delay=0.01)))


def init_repo(store: Store, **config) -> Repository:
    return trio.run(lambda: Repository.init(store, PASSPHRASE, config=RepoConfig(**config),
                                            kdf=fast_kdf(), use_cache=False))


def open_repo(store: Store, passphrase: bytes = PASSPHRASE, **options) -> Repository:
    options.setdefault("use_cache", False)
    return trio.run(lambda: Repository.open(store, passphrase, **options))


class CountingStore(StoreWrapper):
    """A real store, with a tally of the requests made through it."""

    def __init__(self, inner: Store):
        super().__init__(inner)
        self.gets: list[tuple[str, int, int | None, int]] = []   # name, offset, length, bytes
        self.puts: list[tuple[str, int]] = []

    async def put(self, name, data, *, exclusive=False, sha256=None, retention=None):
        self.puts.append((name, len(data)))
        await self.inner.put(name, data, exclusive=exclusive, sha256=sha256, retention=retention)

    async def get(self, name, offset=0, length=None):
        data = await self.inner.get(name, offset, length)
        self.gets.append((name, offset, length, len(data)))
        return data
