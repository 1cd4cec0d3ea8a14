"""What `cloudfs doctor` asks of an S3 bucket: does it answer, how far apart are our
clocks, and are versioning and Object Lock on.

Plain blocking boto3 calls on the store's own client, one try each: the doctor
reports how things are now, it does not wait for a store to come back. The
store's clock comes from the `Date` header of its answer (error answers carry
one too); S3 refuses requests signed more than 15 minutes off its clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import botocore.exceptions as bce

from cloudfs.errors import StoreError
from cloudfs.store.s3 import S3Store

NOT_SUPPORTED = {"NotImplemented", "501", "MethodNotAllowed", "405"}
CONFIG_NAME = "config"


@dataclass
class BucketFacts:
    error: StoreError | None = None       # why the bucket cannot be used (None: it answers)
    skew_seconds: float | None = None     # the store's clock minus ours, from its Date header
    versioning: str | None = None         # "Enabled", "Suspended", "off"; None: the server does not say
    object_lock: str | None = None        # "off", or how it is on; None: the server does not say
    has_repository: bool | None = None    # whether the prefix holds a cloudfs `config`


def probe(store: S3Store, clock=time.time) -> BucketFacts:
    facts = BucketFacts()
    client = store._client
    try:
        answer = client.head_bucket(Bucket=store.bucket)
    except (bce.BotoCoreError, bce.ClientError) as error:
        facts.skew_seconds = _skew(getattr(error, "response", None), clock())
        facts.error = store._translate(error, "HEAD bucket", "")
        return facts
    facts.skew_seconds = _skew(answer, clock())
    facts.versioning = _asked(lambda: client.get_bucket_versioning(Bucket=store.bucket).get("Status", "off"))
    facts.object_lock = _asked(lambda: _lock_of(client, store.bucket), absent="ObjectLockConfigurationNotFoundError")
    facts.has_repository = _asked(lambda: bool(client.head_object(Bucket=store.bucket, Key=store._key(CONFIG_NAME))),
                                  absent="404", absent_value=False)
    return facts


def _lock_of(client, bucket: str) -> str:
    configuration = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    if configuration.get("ObjectLockEnabled") != "Enabled":
        return "off"
    retention = configuration.get("Rule", {}).get("DefaultRetention", {})
    if not retention:
        return "on, with no default retention"
    length = f"{retention['Days']} days" if "Days" in retention else f"{retention.get('Years')} years"
    return f"on, {retention.get('Mode', '').lower()} mode, {length} by default"


def _asked(question, absent: str = "", absent_value="off"):
    """The answer; `absent_value` when the server says there is none (`absent`);
    None when it cannot tell (not implemented, or any other refusal)."""
    try:
        return question()
    except bce.ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if absent and absent in (code, status):
            return absent_value
        return None
    except bce.BotoCoreError:
        return None


def _skew(answer: dict | None, now: float) -> float | None:
    date = ((answer or {}).get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}).get("date")
    if not date:
        return None
    try:
        return parsedate_to_datetime(date).timestamp() - now
    except (TypeError, ValueError):
        return None
