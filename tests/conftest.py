from __future__ import annotations

import os

import pytest

from cloudfs import locals3


@pytest.fixture(autouse=True)
def _no_instance_metadata(monkeypatch):
    # boto3 probes the EC2 metadata service when it has no credentials; on a
    # machine without it that costs seconds per client.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _rclone(tmp_path_factory, name: str):
    server = locals3.start_rclone(tmp_path_factory.mktemp(name))
    try:
        yield server
    finally:
        locals3.stop(server.proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One `rclone serve s3` for the whole session, on a free loopback port."""
    yield from _rclone(tmp_path_factory, "s3-data")


@pytest.fixture(scope="session")
def second_s3_server(tmp_path_factory):
    """Another `rclone serve s3`, on its own port and directory: a second target."""
    yield from _rclone(tmp_path_factory, "s3-data-second")


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3, only for what rclone lacks (Object Lock, versioning)."""
    server, handle = locals3.start_moto()
    try:
        yield server
    finally:
        handle.stop()


@pytest.fixture
def bucket(s3_server):
    """A fresh, empty bucket on the rclone server."""
    return s3_server.new_bucket()


def point_boto3_at(server, monkeypatch):
    """Give this process's boto3 the server's endpoint and credentials."""
    for key, value in server.env().items():
        if key.startswith(("AWS_", "CLOUDFS_")):
            monkeypatch.setenv(key, value)
    return server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3 (in this process) at the rclone server's credentials."""
    return point_boto3_at(s3_server, monkeypatch)


@pytest.fixture
def moto_env(moto_server, monkeypatch):
    """Point boto3 (in this process) at the moto server."""
    return point_boto3_at(moto_server, monkeypatch)


@pytest.fixture
def locked_bucket(moto_server):
    """A fresh bucket on the moto server with versioning and Object Lock enabled."""
    return moto_server.new_bucket(object_lock=True)
