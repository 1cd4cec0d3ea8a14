"""moto's S3 in a process of its own that enforces IAM policies, one user per role.

The session's `moto_server` runs in the test process with authorization off;
moto's switch for it is process-wide, so the server that enforces policies
runs as a subprocess. It starts open, the users, their policies and their
access keys are created, and then `/moto-api/reset-auth` turns enforcement on
for every later request. moto's access log (stderr) records every request the
server received, which is how tests count requests by HTTP method.

moto names one action differently from AWS: HEAD on a bucket is `s3:HeadBucket`
to moto, `s3:ListBucket` to AWS. `MOTO_ONLY` adds it to every role.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import requests
from botocore.config import Config

from cloudfs.locals3 import free_port, stop, wait_for_port

DOCS = Path(__file__).parent.parent / "docs" / "operations.md"
MOTO_ONLY = {"Sid": "MotoNamesHeadBucketApart", "Effect": "Allow", "Action": ["s3:HeadBucket"],
             "Resource": "*"}
ADMIN = {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
REQUEST_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/1\.[01]" (\d+)')


def documented_policies() -> dict[str, dict]:
    """The IAM policies docs/operations.md gives, by role ("writer", "maintenance"),
    told apart by their statements' Sid (`CloudfsWriter…`, `CloudfsMaintenance…`)."""
    found = {}
    for block in re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S):
        policy = json.loads(block)
        sid = policy["Statement"][0].get("Sid", "")
        for role in ("writer", "maintenance"):
            if sid.lower().startswith(f"cloudfs{role}"):
                found[role] = policy
    return found


def for_bucket(policy: dict, bucket: str, prefix: str) -> dict:
    text = json.dumps(policy).replace("BUCKET", bucket).replace("PREFIX", prefix)
    policy = json.loads(text)
    policy["Statement"].append(MOTO_ONLY)
    return policy


@dataclass
class IamMoto:
    endpoint: str
    proc: subprocess.Popen
    log_path: Path
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)

    def client(self, role: str = "admin", service: str = "s3"):
        access, secret = self.keys.get(role, ("setup", "setup"))
        return boto3.client(service, endpoint_url=self.endpoint, aws_access_key_id=access,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    def env(self, role: str) -> dict[str, str]:
        access, secret = self.keys[role]
        env = dict(os.environ)
        env.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1",
                   AWS_EC2_METADATA_DISABLED="true", CLOUDFS_ENDPOINT_URL=self.endpoint)
        return env

    def credentials_file(self, path: Path, role: str) -> Path:
        access, secret = self.keys[role]
        path.write_text(f"[default]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
        return path

    def new_bucket(self, *, object_lock: bool = True) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        return name

    def add_role(self, role: str, policy: dict) -> None:
        """A user named `role` with `policy` and an access key (before enforcement only)."""
        iam = self.client("setup", "iam")
        iam.create_user(UserName=role)
        iam.put_user_policy(UserName=role, PolicyName=role, PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=role)["AccessKey"]
        self.keys[role] = (key["AccessKeyId"], key["SecretAccessKey"])

    def enforce(self) -> None:
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request the server has answered, in order."""
        return [(m, p, int(s)) for m, p, s in REQUEST_LINE.findall(self.log_path.read_text())]

    def stop(self) -> None:
        stop(self.proc)


def start_iam_moto(directory: Path, roles: dict[str, dict]) -> IamMoto:
    """A moto server enforcing IAM, with a user (and key) per role plus `admin`."""
    port = free_port()
    log_path = directory / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    server = IamMoto(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_for_port(port, proc)
        for role, policy in {"admin": ADMIN, **roles}.items():
            server.add_role(role, policy)
        server.enforce()
    except Exception:
        server.stop()
        raise
    return server
