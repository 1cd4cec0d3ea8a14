"""`cloudfs doctor` against real stores: a healthy setup (moto's S3, for versioning and
Object Lock), a bucket without Object Lock, a missing bucket, wrong credentials,
a clock an hour off (a proxy moves the store's Date), and no network.
"""

from __future__ import annotations

import json
import time

import pytest

from cloudfs.locals3 import free_port
from cloudfs.store import S3Options, S3Store
from tests.cli_helpers import cloudfs
from tests.date_proxy import DateShiftingProxy
from tests.repo_helpers import PASSPHRASE, init_repo

pytestmark = pytest.mark.timeout(120)


def write_config(tmp_path, repository: str, endpoint: str) -> dict:
    (tmp_path / "documents").mkdir(exist_ok=True)
    (tmp_path / "config.toml").write_text(
        f'[directories.documents]\nsource = "{tmp_path}/documents"\nstate_dir = "{tmp_path}/state"\n'
        f'repository = "{repository}"\nendpoint_url = "{endpoint}"\npassword_env = "DOCUMENTS_PASSPHRASE"\n')
    return {"CLOUDFS_CONFIG": str(tmp_path / "config.toml"), "DOCUMENTS_PASSPHRASE": PASSPHRASE.decode()}


def doctor(server, extra: dict, **changes) -> tuple[int, list[dict]]:
    env = server.env()
    for key in ("CLOUDFS_REPO", "CLOUDFS_PASSWORD", "CLOUDFS_ENDPOINT_URL"):
        env.pop(key, None)
    env.update(extra, **changes)
    result = cloudfs("doctor", "--json", env=env, timeout=60)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def levels(findings: list[dict], level: str) -> list[str]:
    return [f["message"] for f in findings if f["level"] == level]


def moto_repository(moto_server, monkeypatch, locked: bool) -> str:
    """A bucket on moto's server (with Object Lock if `locked`) holding a repository
    at documents/. Uploads carry Content-MD5, which moto (like S3) wants for
    objects under a default retention."""
    for key, value in moto_server.env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    bucket = moto_bucket(moto_server, locked)
    init_repo(S3Store(bucket, "documents", S3Options(endpoint_url=moto_server.endpoint, checksum="md5")))
    return bucket


def moto_bucket(moto_server, locked: bool) -> str:
    name = f"doctor-{time.monotonic_ns()}"
    client = moto_server.client()
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=locked)
    if locked:
        client.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 30}}})
    return name


def test_a_healthy_setup_has_nothing_to_fix(moto_server, tmp_path, monkeypatch):
    bucket = moto_repository(moto_server, monkeypatch, locked=True)
    code, findings = doctor(moto_server, write_config(tmp_path, f"s3://{bucket}/documents", moto_server.endpoint))
    assert code == 0, findings
    assert levels(findings, "fail") == [] and levels(findings, "warn") == []
    said = "\n".join(levels(findings, "ok"))
    for expected in ("/dev/fuse opens", "is valid (1 directories)", "state directory", "passphrase from password_env",
                     f"bucket {bucket!r} at {moto_server.endpoint} answers", "keeps versions",
                     "Object Lock is on, governance mode, 30 days by default", "clock within"):
        assert expected in said, said


def test_a_bucket_without_object_lock_is_a_warning(moto_server, tmp_path, monkeypatch):
    bucket = moto_repository(moto_server, monkeypatch, locked=False)
    code, findings = doctor(moto_server, write_config(tmp_path, f"s3://{bucket}/documents", moto_server.endpoint))
    assert code == 0
    warnings = levels(findings, "warn")
    assert any(w.startswith(f"no Object Lock on bucket {bucket!r}: credentials that can delete") for w in warnings)
    assert any(w.startswith(f"versioning is off on bucket {bucket!r}") for w in warnings)


def test_a_missing_bucket_and_a_missing_repository(s3_server, bucket, tmp_path):
    code, findings = doctor(s3_server, write_config(tmp_path, "s3://no-such-bucket/documents", s3_server.endpoint))
    assert code == 1
    assert levels(findings, "fail") == [f"bucket 'no-such-bucket' does not exist at {s3_server.endpoint}: check "
                                        "the bucket name, or create it (cloudfs init --create-bucket)"]
    code, findings = doctor(s3_server, write_config(tmp_path, f"s3://{bucket}/documents", s3_server.endpoint))
    assert code == 1
    assert levels(findings, "fail") == [f"no cloudfs repository at s3://{bucket}/documents: fix repository, "
                                        "or create one with cloudfs init"]


def test_wrong_credentials(s3_server, bucket, tmp_path):
    code, findings = doctor(s3_server, write_config(tmp_path, f"s3://{bucket}/documents", s3_server.endpoint),
                            AWS_SECRET_ACCESS_KEY="not-the-secret")
    assert code == 1
    [failure] = levels(findings, "fail")
    assert failure.startswith(f"access denied by {s3_server.endpoint} bucket {bucket!r}")
    assert failure.endswith("check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the profile) and the "
                            "bucket policy")


def test_a_clock_an_hour_off_must_be_fixed(s3_server, bucket, tmp_path):
    with DateShiftingProxy(int(s3_server.endpoint.rsplit(":", 1)[1]), shift_seconds=3600) as proxy:
        code, findings = doctor(s3_server, write_config(tmp_path, f"s3://{bucket}/documents", proxy.endpoint))
    assert code == 1
    assert any(message.startswith(f"this machine's clock is 60 min behind {proxy.endpoint}'s, and S3 refuses")
               for message in levels(findings, "fail")), findings


def test_no_network_is_one_finding_and_quick(s3_server, tmp_path):
    nowhere = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    code, findings = doctor(s3_server, write_config(tmp_path, "s3://bucket/documents", nowhere))
    assert time.monotonic() - started < 30
    assert code == 1
    [failure] = levels(findings, "fail")
    assert failure.startswith(f"cannot reach {nowhere}") and failure.endswith(
        "check the endpoint, the network and the firewall")
