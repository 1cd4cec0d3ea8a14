"""init, key, check and repair as a user runs them, including every bad input."""

import json
import time

import pytest
import trio

from cloudfs.repo import Repository
from cloudfs.repo.config import parse_compression
from cloudfs.store import LocalStore

from tests.cli_helpers import cloudfs, one_line_error
from tests.faults import FaultyProxy

FAST = ["--kdf-time", "0.01"]


@pytest.fixture
def env(s3_env, bucket, tmp_path):
    environment = s3_env.env()
    environment.update(CLOUDFS_REPO=f"s3://{bucket}/backup", CLOUDFS_PASSWORD="first passphrase",
                       XDG_CACHE_HOME=str(tmp_path / "cache"))
    environment.pop("CLOUDFS_PASSWORD_FILE", None)
    return environment


def objects(s3_env, bucket) -> dict[str, bytes]:
    client = s3_env.client()
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def replace_object(s3_env, bucket, key, data):
    s3_env.client().put_object(Bucket=bucket, Key=key, Body=data)


def test_init_then_check_succeeds(env):
    result = cloudfs("init", *FAST, env=env)
    assert result.returncode == 0, result.stderr
    assert "created repository" in result.stdout
    result = cloudfs("check", "--read-data", env=env)
    assert result.returncode == 0, result.stderr
    assert "no errors found" in result.stdout


def test_init_over_an_existing_repository_is_refused_and_nothing_is_overwritten(env, s3_env, bucket):
    assert cloudfs("init", *FAST, env=env).returncode == 0
    before = objects(s3_env, bucket)
    env["CLOUDFS_PASSWORD"] = "another passphrase"
    assert "already exists" in one_line_error(cloudfs("init", *FAST, env=env))
    assert objects(s3_env, bucket) == before


def test_init_on_a_local_path_creates_the_directory(env, tmp_path):
    target = tmp_path / "usb" / "backup"
    result = cloudfs("init", str(target), *FAST, env=env)
    assert result.returncode == 0, result.stderr
    assert (target / "config").is_file()
    env["CLOUDFS_REPO"] = f"file://{target}"
    assert cloudfs("key", "list", env=env).returncode == 0


def test_init_sets_the_default_compression_of_the_repository(env, tmp_path):
    for method, level in (("zstd:5", 5), ("none", None), ("zstd", 1)):
        target = tmp_path / method.replace(":", "-")
        result = cloudfs("init", str(target), "--compression", method, *FAST, env=env)
        assert result.returncode == 0, result.stderr
        repo = trio.run(lambda: Repository.open(LocalStore(target), b"first passphrase", use_cache=False))
        assert repo.compression_level == level
        assert repo.config.compression == ("none" if level is None else "zstd")
    refused = cloudfs("init", str(tmp_path / "x"), "--compression", "zstd:99", *FAST, env=env)
    assert refused.returncode == 2 and "not a compression" in refused.stderr
    assert not (tmp_path / "x").exists()
    assert [parse_compression(text) for text in ("ZSTD:-3", " zstd:22", "none")] == [-3, 22, None]
    for wrong in ("zstd:0", "zstd:x", "none:1", "lz4", ""):
        with pytest.raises(ValueError):
            parse_compression(wrong)


def test_wrong_passphrase_gets_one_clear_line(env):
    cloudfs("init", *FAST, env=env)
    env["CLOUDFS_PASSWORD"] = "not it"
    assert "wrong passphrase" in one_line_error(cloudfs("key", "list", env=env))


def test_passphrase_from_a_file(env, tmp_path):
    cloudfs("init", *FAST, env=env)
    del env["CLOUDFS_PASSWORD"]
    (tmp_path / "pw").write_text("first passphrase\n")
    assert cloudfs("key", "list", "--password-file", str(tmp_path / "pw"), env=env).returncode == 0
    assert "cannot read password file" in one_line_error(
        cloudfs("key", "list", "--password-file", str(tmp_path / "nope"), env=env))
    assert "no passphrase" in one_line_error(cloudfs("key", "list", env=env))


def test_missing_bucket_is_named(env):
    env["CLOUDFS_REPO"] = "s3://no-such-bucket-xyz/backup"
    line = one_line_error(cloudfs("init", *FAST, env=env))
    assert "no-such-bucket-xyz" in line and "does not exist" in line and "--create-bucket" in line
    assert "does not exist" in one_line_error(cloudfs("check", env=env))


def test_init_can_create_the_bucket(env):
    env["CLOUDFS_REPO"] = "s3://made-by-init/backup"
    result = cloudfs("init", "--create-bucket", *FAST, env=env)
    assert result.returncode == 0, result.stderr
    assert cloudfs("check", env=env).returncode == 0


def test_refused_credentials_get_one_clear_line(env):
    env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    assert "access denied" in one_line_error(cloudfs("init", *FAST, env=env))


def test_unreachable_endpoint_fails_quickly_after_bounded_retries(env):
    proxy = FaultyProxy(1)
    proxy.close()
    env["CLOUDFS_ENDPOINT_URL"] = proxy.endpoint
    start = time.monotonic()
    line = one_line_error(cloudfs("check", "--retries", "3", env=env))
    assert "cannot reach" in line
    assert time.monotonic() - start < 30


def test_key_add_list_remove_and_passwd(env):
    cloudfs("init", *FAST, env=env)
    env["CLOUDFS_NEW_PASSWORD"] = "second passphrase"
    assert cloudfs("key", "add", "--label", "laptop", *FAST, env=env).returncode == 0
    slots = json.loads(cloudfs("key", "list", "--json", env=env).stdout)
    assert len(slots) == 2 and {s["label"] for s in slots} == {"initial", "laptop"}
    first = next(s for s in slots if s["current"])

    env["CLOUDFS_PASSWORD"] = "second passphrase"
    result = cloudfs("key", "remove", first["id"][:10], env=env)
    assert result.returncode == 0, result.stderr
    env["CLOUDFS_PASSWORD"] = "first passphrase"
    assert "wrong passphrase" in one_line_error(cloudfs("key", "list", env=env))

    env["CLOUDFS_PASSWORD"] = "second passphrase"
    current = json.loads(cloudfs("key", "list", "--json", env=env).stdout)[0]["id"]
    assert "in use" in one_line_error(cloudfs("key", "remove", current, env=env))
    assert "no key slot" in one_line_error(cloudfs("key", "remove", "ffffffffff", env=env))

    env["CLOUDFS_NEW_PASSWORD"] = "third passphrase"
    assert cloudfs("key", "passwd", *FAST, env=env).returncode == 0
    assert "wrong passphrase" in one_line_error(cloudfs("key", "list", env=env))
    env["CLOUDFS_PASSWORD"] = "third passphrase"
    assert len(json.loads(cloudfs("key", "list", "--json", env=env).stdout)) == 1


def test_edited_config_is_reported(env, s3_env, bucket):
    cloudfs("init", *FAST, env=env)
    config = bytearray(objects(s3_env, bucket)["backup/config"])
    config[-5] ^= 0x10
    replace_object(s3_env, bucket, "backup/config", bytes(config))
    line = one_line_error(cloudfs("key", "list", env=env))
    assert "config" in line and "integrity" in line


def test_edited_key_slot_is_reported(env, s3_env, bucket):
    cloudfs("init", *FAST, env=env)
    [key] = [k for k in objects(s3_env, bucket) if k.startswith("backup/keys/")]
    slot = objects(s3_env, bucket)[key].replace(b"initial", b"INITIAL")
    replace_object(s3_env, bucket, key, slot)
    line = one_line_error(cloudfs("key", "list", env=env))
    assert "damaged" in line and key.split("/", 1)[1] in line


def test_unknown_format_version_is_reported(env, s3_env, bucket):
    cloudfs("init", *FAST, env=env)
    config = bytearray(objects(s3_env, bucket)["backup/config"])
    config[4] = 7
    replace_object(s3_env, bucket, "backup/config", bytes(config))
    assert "format version 7" in one_line_error(cloudfs("key", "list", env=env))


def test_not_a_repository_is_reported(env):
    assert "no cloudfs repository" in one_line_error(cloudfs("check", env=env))
    del env["CLOUDFS_REPO"]
    assert "no repository given" in one_line_error(cloudfs("check", env=env))


def test_check_names_a_damaged_chunk_and_exits_non_zero(env, s3_env, bucket):
    import trio

    from cloudfs.repo import BlobKind, Repository
    from cloudfs.store import S3Options, S3Store

    cloudfs("init", *FAST, env=env)

    async def store_a_blob():
        repo = await Repository.open(S3Store(bucket, "backup", S3Options(endpoint_url=s3_env.endpoint)),
                                     b"first passphrase", use_cache=False)
        await repo.put_blob(BlobKind.DATA, b"some file content" * 1000)
        await repo.flush()

    trio.run(store_a_blob)
    [chunk] = [k for k in objects(s3_env, bucket) if k.startswith("backup/chunks/")]
    data = bytearray(objects(s3_env, bucket)[chunk])
    data[100] ^= 0xFF
    replace_object(s3_env, bucket, chunk, bytes(data))
    assert cloudfs("check", env=env).returncode == 0, "structure alone is intact"
    result = cloudfs("check", "--read-data", env=env)
    assert result.returncode == 1
    assert chunk.split("/", 1)[1] in result.stdout and "errors" in result.stdout


def test_snapshots_are_listed_oldest_first_with_their_figures(env, s3_env, bucket, tmp_path):
    import trio

    from cloudfs.repo import Repository
    from cloudfs.store import S3Options, S3Store
    from cloudfs.uploader import snapshot_directory

    assert cloudfs("init", *FAST, env=env).returncode == 0
    assert cloudfs("snapshots", env=env).stdout.strip() == "no snapshots"
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("first version")

    async def two_snapshots():
        repo = await Repository.open(S3Store(bucket, "backup", S3Options(endpoint_url=s3_env.endpoint)),
                                     b"first passphrase", use_cache=False)
        first = await snapshot_directory(repo, data)
        (data / "b.bin").write_bytes(b"x" * 100_000)
        return first, await snapshot_directory(repo, data, previous=first)

    first, second = trio.run(two_snapshots)
    listed = json.loads(cloudfs("snapshots", "--json", env=env).stdout)
    assert [s["name"] for s in listed] == [first.name, second.name]
    assert listed[1]["files"] == 2 and listed[1]["bytes"] == 100_000 + len("first version")
    assert listed[1]["parent"] == first.name and listed[1]["source"] == str(data)
    text = cloudfs("snapshots", env=env).stdout
    assert second.name.rsplit("-", 1)[-1] in text and "2 files" in text
