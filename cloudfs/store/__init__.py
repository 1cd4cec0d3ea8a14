"""Object stores behind one small async interface (see base.Store).

Repository locations:
  s3://BUCKET[/PREFIX]                      AWS, or the endpoint given separately
  s3+http://HOST[:PORT]/BUCKET[/PREFIX]     an S3-compatible server, plain HTTP
  s3+https://HOST[:PORT]/BUCKET[/PREFIX]    an S3-compatible server, TLS
  /a/path, ./path or file:///a/path         a local directory
"""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

from cloudfs.errors import UsageError
from cloudfs.store.base import ObjectInfo, Store
from cloudfs.store.local import LocalStore
from cloudfs.store.retry import RetryPolicy
from cloudfs.store.s3 import S3Options, S3Store

__all__ = ["ObjectInfo", "Store", "LocalStore", "S3Store", "S3Options", "RetryPolicy", "open_store"]


def open_store(location: str, s3_options: S3Options | None = None) -> Store:
    """The store a repository location names (nothing is contacted yet)."""
    s3_options = s3_options or S3Options()
    if "://" not in location:
        if not location:
            raise UsageError("no repository given: use --repo or set CLOUDFS_REPO")
        return LocalStore(location)
    parts = urlsplit(location)
    if parts.scheme == "file":
        return LocalStore(parts.path)
    if parts.scheme == "s3":
        bucket, prefix = parts.netloc, parts.path
    elif parts.scheme in ("s3+http", "s3+https"):
        endpoint = f"{parts.scheme[3:]}://{parts.netloc}"
        s3_options = dataclasses.replace(s3_options, endpoint_url=endpoint)
        bucket, _, prefix = parts.path.lstrip("/").partition("/")
    else:
        raise UsageError(f"unknown repository location {location!r}: use s3://, s3+http(s):// or a path")
    if not bucket:
        raise UsageError(f"no bucket in repository location {location!r}")
    return S3Store(bucket, prefix, s3_options)
