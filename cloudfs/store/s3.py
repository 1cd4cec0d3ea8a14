"""An S3 store on botocore (boto3's core): AWS S3 and S3-compatible servers (MinIO, Ceph RGW, rclone).

botocore is blocking, so every request runs in a worker thread, at most
`max_concurrency` at a time. boto3's own retries are off; ours retry timeouts,
resets and 5xx/SlowDown with exponential backoff and full jitter, and never
retry 403 or 404. Checksums: boto3's default flexible checksums (CRC trailers,
aws-chunked bodies) are turned off because many S3-compatible servers reject
them; instead each PUT carries an `x-amz-checksum-sha256` header (or
Content-MD5, see `checksum`) that the server can verify.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from dataclasses import dataclass, field

import botocore.exceptions as bce
import botocore.loaders
import botocore.session
import trio
from botocore.config import Config

from cloudfs.errors import (
    AccessDenied,
    BucketNotFound,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StoreUnavailable,
)
from cloudfs.store.base import FilePayload, ObjectInfo, ObjectVersion, Retention, Store, VersionPage
from cloudfs.store.retry import RetryPolicy, retrying

log = logging.getLogger(__name__)

TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "403"}
#: The IAM permission each kind of request needs, to name it when one is denied.
PERMISSIONS = {
    "PUT": "s3:PutObject",
    "GET": "s3:GetObject",
    "HEAD": "s3:GetObject",
    "LIST": "s3:ListBucket",
    "DELETE": "s3:DeleteObject",
    "HEAD bucket": "s3:ListBucket",
    "CREATE bucket": "s3:CreateBucket",
    "GET object-lock": "s3:GetBucketObjectLockConfiguration and s3:GetBucketVersioning",
    "HEAD retention": "s3:GetObjectRetention",
    "PUT retention": "s3:PutObjectRetention",
    "LIST versions": "s3:ListBucketVersions",
    "GET version": "s3:GetObjectVersion",
}
NETWORK_ERRORS = (
    bce.EndpointConnectionError,
    bce.ConnectionClosedError,
    bce.ConnectTimeoutError,
    bce.ReadTimeoutError,
    bce.ResponseStreamingError,
    bce.IncompleteReadError,
    bce.ConnectionError,
)


@dataclass
class S3Options:
    endpoint_url: str | None = None      # None: AWS, or AWS_ENDPOINT_URL(_S3) from the environment
    region: str | None = None            # None: boto3's chain (AWS_REGION, profile), else us-east-1
    profile: str | None = None           # a profile of ~/.aws/config and credentials
    credentials_file: str | None = None  # instead of ~/.aws/credentials (its [default] unless `profile`)
    addressing: str = "auto"             # path | virtual | auto (path with a custom endpoint)
    ca_bundle: str | None = None         # PEM file of trusted CAs; TLS is always verified
    checksum: str = "sha256"             # sha256 | md5 | none: header sent with each PUT
    max_concurrency: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str, options: S3Options):
        if options.checksum not in ("sha256", "md5", "none"):
            raise StoreError(f"unknown S3 checksum mode {options.checksum!r} (sha256, md5 or none)")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.options = options
        self._limiter = trio.CapacityLimiter(options.max_concurrency)
        self._client = _make_client(options)
        self.endpoint = self._client.meta.endpoint_url
        self.location = f"s3://{bucket}/{self.prefix}".rstrip("/")

    # -- the Store interface ------------------------------------------------

    async def put(self, name: str, data: bytes, *, exclusive: bool = False,
                  sha256: bytes | None = None, retention: Retention | None = None) -> None:
        def request():
            params = dict(Bucket=self.bucket, Key=self._key(name), Body=_body(data))
            params.update(self._checksum_params(data, sha256, locked=retention is not None))
            if exclusive:
                params["IfNoneMatch"] = "*"
            if retention is not None:
                params.update(ObjectLockMode=retention.mode.upper(),
                              ObjectLockRetainUntilDate=retention.until)
            self._client.put_object(**params)

        if exclusive and await self.exists(name):
            raise ObjectExists(name)
        await self._call(request, "PUT", name)

    async def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return await self._get(name, offset, length, None)

    async def get_version(self, name: str, version_id: str, offset: int = 0,
                          length: int | None = None) -> bytes:
        return await self._get(name, offset, length, version_id)

    async def _get(self, name: str, offset: int, length: int | None, version_id: str | None) -> bytes:
        if length == 0:
            return b""

        def request():
            params = dict(Bucket=self.bucket, Key=self._key(name), **_version(version_id))
            if offset or length is not None:
                end = "" if length is None else str(offset + length - 1)
                params["Range"] = f"bytes={offset}-{end}"
            response = self._client.get_object(**params)
            body = response["Body"].read()
            if "Range" in params and "ContentRange" not in response:
                # The server ignored the range and sent the whole object.
                body = body[offset:] if length is None else body[offset:offset + length]
            return body

        return await self._call(request, "GET version" if version_id else "GET", name)

    async def head(self, name: str) -> ObjectInfo:
        def request():
            response = self._client.head_object(Bucket=self.bucket, Key=self._key(name))
            return ObjectInfo(name, response["ContentLength"])

        return await self._call(request, "HEAD", name)

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        def request():
            found = []
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for item in page.get("Contents", []):
                    found.append(ObjectInfo(item["Key"][len(self.prefix):], item["Size"],
                                            item.get("LastModified")))
            return sorted(found, key=lambda info: info.name)

        return await self._call(request, "LIST", prefix or "/")

    async def delete(self, name: str) -> None:
        await self._call(
            lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(name)),
            "DELETE", name,
        )

    async def check(self) -> None:
        await self._call(lambda: self._client.head_bucket(Bucket=self.bucket), "HEAD bucket", "")

    async def create_container(self, *, object_lock: bool = False) -> None:
        """Create the bucket (for `init --create-bucket`); an existing one is fine.
        With `object_lock` a new bucket has versioning and Object Lock enabled."""
        def request():
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except bce.ClientError as error:
                if _status(error) != 404:
                    raise
            params = {"Bucket": self.bucket}
            region = self._client.meta.region_name
            if region and region != "us-east-1" and not self.options.endpoint_url:
                params["CreateBucketConfiguration"] = {"LocationConstraint": region}
            if object_lock:
                params["ObjectLockEnabledForBucket"] = True
            self._client.create_bucket(**params)

        await self._call(request, "CREATE bucket", "")

    # -- Object Lock and versions ---------------------------------------------

    async def check_object_lock(self) -> None:
        def request():
            versioning = self._client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            try:
                configuration = self._client.get_object_lock_configuration(Bucket=self.bucket)
            except bce.ClientError as error:
                if _code(error) != "ObjectLockConfigurationNotFoundError":
                    raise
                return versioning, None
            return versioning, configuration.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")

        versioning, lock = await self._call(request, "GET object-lock", "")
        if lock != "Enabled":
            raise StoreError(f"bucket {self.bucket!r} does not have Object Lock enabled "
                             "(GetObjectLockConfiguration): enable it on the bucket, or create one "
                             "with `init --create-bucket --object-lock`")
        if versioning != "Enabled":
            raise StoreError(f"bucket {self.bucket!r} does not have versioning enabled "
                             "(GetBucketVersioning), which Object Lock needs")

    async def retention(self, name: str, version_id: str | None = None) -> Retention | None:
        def request():
            response = self._client.head_object(Bucket=self.bucket, Key=self._key(name),
                                                **_version(version_id))
            mode, until = response.get("ObjectLockMode"), response.get("ObjectLockRetainUntilDate")
            return Retention(mode.lower(), until) if mode and until else None

        return await self._call(request, "HEAD retention", name)

    async def extend_retention(self, name: str, retention: Retention,
                               version_id: str | None = None) -> None:
        def request():
            self._client.put_object_retention(
                Bucket=self.bucket, Key=self._key(name), **_version(version_id),
                Retention={"Mode": retention.mode.upper(), "RetainUntilDate": retention.until})

        await self._call(request, "PUT retention", name)

    async def version_page(self, prefix: str = "",
                           after: tuple[str, str] | None = None) -> VersionPage:
        def request():
            params = dict(Bucket=self.bucket, Prefix=self._key(prefix))
            if after:
                params.update(KeyMarker=self._key(after[0]), VersionIdMarker=after[1])
            return self._client.list_object_versions(**params)

        response = await self._call(request, "LIST versions", prefix or "/")
        # The listing has each name's versions newest first, delete markers among them;
        # boto3 splits them into two lists, so merge them back in that order (times
        # are in whole seconds: of two at the same second, the one S3 calls latest first).
        items = [(item, False) for item in response.get("Versions", [])]
        items += [(item, True) for item in response.get("DeleteMarkers", [])]
        items.sort(key=lambda pair: (pair[0]["LastModified"], pair[0].get("IsLatest", False)), reverse=True)
        items.sort(key=lambda pair: pair[0]["Key"])
        versions = [self._version_of(item, deleted) for item, deleted in items]
        following = None
        if response.get("IsTruncated"):
            following = (response["NextKeyMarker"][len(self.prefix):], response.get("NextVersionIdMarker", ""))
        return VersionPage(versions, following)

    def _version_of(self, item: dict, deleted: bool) -> ObjectVersion:
        return ObjectVersion(item["Key"][len(self.prefix):], item["VersionId"], item["LastModified"],
                             item.get("Size", 0), deleted)

    async def aclose(self) -> None:
        self._client.close()

    # -- helpers --------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _checksum_params(self, data: bytes, sha256: bytes | None, *, locked: bool) -> dict:
        """The upload checksum headers. S3 wants Content-MD5 (or an SDK checksum
        header) on a put with an Object Lock retention, so a locked put has it too."""
        params = {}
        if self.options.checksum == "sha256":
            digest = sha256 or _digest(hashlib.sha256(), data)
            params["ChecksumSHA256"] = base64.b64encode(digest).decode()
        if self.options.checksum == "md5" or locked:
            params["ContentMD5"] = base64.b64encode(_digest(hashlib.md5(), data)).decode()
        return params

    async def _call(self, request, verb: str, name: str):
        async def attempt():
            # Abandoned on cancel: a request into a silent network holds its thread for the
            # read timeout, and whoever cancelled (an umount) must not wait that long. A
            # put may still land after; an object written late is as harmless as one whose
            # answer was lost (the snapshot object comes last, unreferenced data is pruned).
            return await trio.to_thread.run_sync(request, limiter=self._limiter, abandon_on_cancel=True)

        try:
            return await retrying(
                attempt,
                policy=self.options.retry,
                is_transient=_is_transient,
                what=f"S3 {verb} {name}",
            )
        except (bce.BotoCoreError, bce.ClientError) as error:
            raise self._translate(error, verb, name) from error

    def _translate(self, error: Exception, verb: str, name: str) -> StoreError:
        where = f"{self.endpoint} bucket {self.bucket!r}"
        if isinstance(error, bce.NoCredentialsError):
            return AccessDenied("no S3 credentials found: set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, or choose a profile")
        if isinstance(error, bce.SSLError):
            return StoreUnavailable(f"TLS verification of {self.endpoint} failed "
                                    f"(pass --ca-bundle for a private CA): {error}")
        if isinstance(error, NETWORK_ERRORS):
            return StoreUnavailable(f"cannot reach {self.endpoint} ({verb} {name}): {error}")
        if isinstance(error, bce.ClientError):
            code = _code(error)
            status = _status(error)
            if code == "NoSuchBucket" or (verb == "HEAD bucket" and status == 404):
                return BucketNotFound(f"bucket {self.bucket!r} does not exist at {self.endpoint}")
            if code in DENIED_CODES or status == 403:
                permission = PERMISSIONS.get(verb, "")
                return AccessDenied(f"access denied by {where} ({code} on {verb} {name or '/'}, "
                                    f"which needs {permission}): check the credentials and the "
                                    "bucket policy", permission=permission)
            if code in ("NoSuchKey", "404") or status == 404:
                return ObjectNotFound(name)
            if code == "PreconditionFailed" or status == 412:
                return ObjectExists(name)
            if status and status >= 500 or code in TRANSIENT_CODES:
                return StoreUnavailable(f"{where} kept failing ({verb} {name}): {code}")
            return StoreError(f"S3 {verb} {name} at {where} failed: {code} "
                              f"{error.response.get('Error', {}).get('Message', '')}".rstrip())
        return StoreError(f"S3 {verb} {name} at {where} failed: {error}")


def _make_client(options: S3Options):
    addressing = options.addressing
    if addressing == "auto":
        addressing = "path" if options.endpoint_url else "virtual"
    session = _session(options)
    region = options.region or session.get_config_variable("region") or "us-east-1"
    config = Config(
        # With a checksum header on every PUT (itself covered by the request's
        # signature, and verified by the server) signing the payload too would
        # only hash every upload a second time; boto3 skips it on https anyway.
        s3={"addressing_style": addressing,
            "payload_signing_enabled": options.checksum == "none"},
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        max_pool_connections=options.max_concurrency + 2,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    try:
        return session.create_client(
            "s3",
            endpoint_url=options.endpoint_url,
            region_name=region,
            verify=options.ca_bundle or None,   # None: boto3 verifies, honouring AWS_CA_BUNDLE
            config=config,
        )
    except ValueError as error:   # e.g. a malformed endpoint URL
        raise StoreError(f"cannot use S3 endpoint {options.endpoint_url!r}: {error}") from None


def _session(options: S3Options) -> botocore.session.Session:
    """botocore's session (boto3's adds only resources and transfers, and 65 modules
    to import at every start); with a credentials file, only that file's profile
    supplies credentials (a profile named explicitly outranks $AWS_ACCESS_KEY_ID)."""
    try:
        session = botocore.session.Session()
        session.lazy_register_component("data_loader", lambda: _Loader.like(session))
        if options.credentials_file is not None:
            session.set_config_variable("credentials_file", options.credentials_file)
        profile = options.profile or ("default" if options.credentials_file is not None else None)
        if profile is not None:
            session.set_config_variable("profile", profile)
        session.get_scoped_config()     # a missing profile fails here, with the line below
        return session
    except bce.ProfileNotFound:
        where = options.credentials_file or "the AWS configuration"
        raise StoreError(f"no profile {options.profile or 'default'!r} in {where}") from None


class _Loader(botocore.loaders.Loader):
    """botocore's model loader, except that checking whether a service exists
    looks in that service's directory alone: botocore lists every one of its
    ~400 services to find s3 (1,300 directory reads at every start, from disk
    when the page cache is cold: 0.15-0.2 s here)."""

    @classmethod
    def like(cls, session: botocore.session.Session) -> "_Loader":
        """The loader botocore would make for `session` (honouring AWS_DATA_PATH)."""
        paths = session.get_config_variable("data_path")
        extra = [os.path.expanduser(os.path.expandvars(path)) for path in paths.split(os.pathsep)] if paths else []
        return cls(extra_search_paths=extra)

    def list_available_services(self, type_name):
        return _KnownServices(self, type_name)


class _KnownServices:
    """The services a loader knows: membership asks one directory, the rest lists all."""

    def __init__(self, loader: _Loader, type_name: str):
        self._loader, self._type_name = loader, type_name

    def __contains__(self, service_name) -> bool:
        try:
            return bool(self._loader.list_api_versions(service_name, self._type_name))
        except bce.DataNotFoundError:
            return False

    def _all(self) -> list[str]:
        return botocore.loaders.Loader.list_available_services(self._loader, self._type_name)

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __getitem__(self, index):
        return self._all()[index]


def _version(version_id: str | None) -> dict:
    return {"VersionId": version_id} if version_id else {}


def _body(data):
    return data.reader() if isinstance(data, FilePayload) else data


def _digest(hasher, data) -> bytes:
    for piece in data.slices() if isinstance(data, FilePayload) else (data,):
        hasher.update(piece)
    return hasher.digest()


def _code(error: bce.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: bce.ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, bce.SSLError):
        return False
    if isinstance(error, NETWORK_ERRORS):
        return True
    if isinstance(error, bce.ClientError):
        return _status(error) >= 500 or _code(error) in TRANSIENT_CODES
    return False
