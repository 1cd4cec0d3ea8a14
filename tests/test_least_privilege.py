"""The two roles with the IAM policies docs/operations.md gives, enforced by moto's
server in its IAM mode, on repositories made with --object-lock.

- A real live mount, its snapshots and a restore work with the writer's policy, and
  the server's log shows that no DELETE was ever sent; every object is locked.
- The writer's delete of a locked object is refused, and so is the removal of the
  locked version by anyone; an overwrite only adds a version `--as-of` ignores.
- A repository vandalised with the maintenance keys (every object overwritten, most
  hidden behind delete markers) restores bit-exact, checks clean and browses with
  `--as-of` a moment before.
- Maintenance commands (forget, prune) without the maintenance role's rights stop
  with one line naming the permission; given its credentials (a file or a
  profile), they work.
- A prune that would delete compliance-locked chunks skips them and says so.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import botocore.exceptions
import pytest
import trio

from cloudfs.snapshot.reader import TreeReader
from cloudfs.store import S3Options, S3Store
from cloudfs.store.versions import first_version, versions_by_name
from tests.browse_fixtures import short_state_home
from tests.cli_helpers import one_line_error
from tests.iam_moto import documented_policies, for_bucket, start_iam_moto
from tests.live_fixtures import run_cloudfs
from tests.repo_helpers import PASSPHRASE
from tests.snapshot_fixtures import Protected
from tests.tree_helpers import capture_directory, capture_snapshot, diff

pytestmark = pytest.mark.timeout(240)

PREFIX = "repo"


@pytest.fixture(scope="module")
def iam(tmp_path_factory):
    policies = documented_policies()
    server = start_iam_moto(tmp_path_factory.mktemp("iam-moto"), {
        role: for_bucket(policies[role], "t-*", PREFIX) for role in ("writer", "maintenance")})
    try:
        yield server
    finally:
        server.stop()


def role_env(iam, role: str, bucket: str, base: Path) -> dict:
    env = iam.env(role)
    env.update(CLOUDFS_REPO=f"s3://{bucket}/{PREFIX}", CLOUDFS_PASSWORD=PASSPHRASE.decode(),
               XDG_CACHE_HOME=str(base / "cache"), XDG_STATE_HOME=str(short_state_home()))
    env.pop("CLOUDFS_PASSWORD_FILE", None)
    return env


@pytest.fixture
def locked(tmp_path, iam, monkeypatch):
    """A Protected tree whose repository was made by the maintenance role with
    --object-lock 1; the tree's commands (and this process) have the writer's keys."""
    yield from protected_on(iam, tmp_path, monkeypatch, "governance")


def protected_on(iam, base: Path, monkeypatch, mode: str):
    bucket = iam.new_bucket()
    run_cloudfs("init", "--kdf-time", "0.01", "--object-lock", "1", "--lock-mode", mode,
                env=role_env(iam, "maintenance", bucket, base))
    tree = Protected(base, endpoint=iam.endpoint, bucket=bucket)
    tree.env = role_env(iam, "writer", bucket, base)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, tree.env[key])
    try:
        yield tree
    finally:
        tree.cleanup()


def write_files(root: Path, seed: int) -> None:
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "report.txt").write_text(f"report {seed}\n" * 100)
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "small.bin").write_bytes(bytes(range(256)) * (seed + 1))
    os.symlink("docs/report.txt", root / f"link-{seed}")


def snapshot_now(tree: Protected) -> str:
    return run_cloudfs("snapshot", "--wait", tree.source, env=tree.env).stdout.strip().removeprefix("committed ")


def first_versions(tree: Protected) -> dict[str, str]:
    store = S3Store(tree.bucket, PREFIX, S3Options(endpoint_url=tree.endpoint))

    async def run():
        return {name: first_version(versions).version_id async for name, versions in versions_by_name(store, "")}
    return trio.run(run)


def denied(call) -> bool:
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"] == "AccessDenied"
    return False


def test_the_writer_policy_mounts_snapshots_and_restores_and_never_deletes(locked, iam, tmp_path):
    already = len(iam.requests())
    root = locked.mount(None, "--interval", "3600")
    write_files(root, 1)
    snapshot_now(locked)
    write_files(root, 2)           # an incremental snapshot: most blocks deduplicated
    latest = snapshot_now(locked)
    locked.umount()

    target = tmp_path / "restored"
    run_cloudfs("restore", "latest", target, env=locked.env)
    repo = locked.repository()
    snapshot = next(s for s in locked.snapshots(repo) if s.name == latest)
    assert not diff(capture_snapshot(TreeReader(repo), snapshot.tree), capture_directory(target))
    assert locked.check().returncode == 0

    methods = {method for method, _, _ in iam.requests()[already:]}
    assert "DELETE" not in methods and {"PUT", "GET"} <= methods

    admin = iam.client("admin")
    versions = first_versions(locked)
    soon = datetime.now(timezone.utc) + timedelta(hours=23)
    for name, version in versions.items():
        head = admin.head_object(Bucket=locked.bucket, Key=f"{PREFIX}/{name}", VersionId=version)
        assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"] > soon, name


def test_a_locked_object_cannot_be_deleted_and_an_overwrite_leaves_it_intact(locked, iam):
    root = locked.mount(None, "--interval", "3600")
    write_files(root, 1)
    snapshot_now(locked)
    locked.umount()
    writer, maintenance = iam.client("writer"), iam.client("maintenance")
    chunk = next(name for name in first_versions(locked) if name.startswith("chunks/"))
    key, genuine = f"{PREFIX}/{chunk}", first_versions(locked)[chunk]

    assert denied(lambda: writer.delete_object(Bucket=locked.bucket, Key=key))
    assert denied(lambda: writer.delete_object(Bucket=locked.bucket, Key=key, VersionId=genuine))
    assert denied(lambda: maintenance.delete_object(Bucket=locked.bucket, Key=key, VersionId=genuine))

    async def exclusive_overwrite():
        store = S3Store(locked.bucket, PREFIX, S3Options(endpoint_url=iam.endpoint))
        from cloudfs.errors import ObjectExists
        with pytest.raises(ObjectExists):
            await store.put(chunk, b"garbage", exclusive=True)

    trio.run(exclusive_overwrite)
    writer.put_object(Bucket=locked.bucket, Key=key, Body=b"garbage")    # a new version on top
    assert writer.get_object(Bucket=locked.bucket, Key=key, VersionId=genuine)["Body"].read() != b"garbage"
    assert first_versions(locked)[chunk] == genuine


def vandalise(iam, bucket: str) -> int:
    """With the maintenance keys: overwrite every object, then hide most behind delete
    markers, and try (in vain) to remove the locked versions. Returns how many objects."""
    vandal = iam.client("maintenance")
    keys = [item["Key"] for item in vandal.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/")["Contents"]]
    for number, key in enumerate(keys):
        vandal.put_object(Bucket=bucket, Key=key, Body=b"encrypted by ransomware")
        if number % 4:
            vandal.delete_object(Bucket=bucket, Key=key)
    for page in vandal.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}/").get("Versions", []):
        assert denied(lambda: vandal.delete_object(Bucket=bucket, Key=page["Key"], VersionId=page["VersionId"]))
    return len(keys)


def test_a_vandalised_repository_restores_checks_and_browses_as_of_before(locked, iam, tmp_path):
    root = locked.mount(None, "--interval", "3600")
    write_files(root, 1)
    snapshot_now(locked)
    write_files(root, 2)
    snapshot_now(locked)
    locked.umount()
    expected = capture_directory(locked.source)
    time.sleep(1.1)                       # S3 keeps whole seconds
    moment = datetime.now(timezone.utc).isoformat()
    time.sleep(1.1)
    assert vandalise(iam, locked.bucket) > 5

    present = run_cloudfs("restore", "latest", tmp_path / "now", check=False, env=locked.env)
    assert present.returncode != 0
    target = tmp_path / "restored"
    run_cloudfs("restore", "--as-of", moment, "latest", target, env=locked.env)
    assert not diff(expected, capture_directory(target))
    checked = run_cloudfs("check", "--as-of", moment, "--read-data", env=locked.env)
    assert "no errors found" in checked.stdout and "checked 3 snapshots" in checked.stdout   # the mount's first, and two

    mountpoint = tmp_path / "past"
    mountpoint.mkdir()
    run_cloudfs("browse", "--as-of", moment, "--daemon", mountpoint, env=locked.env)
    try:
        assert (mountpoint / "latest" / "big.bin").read_bytes() == (locked.source / "big.bin").read_bytes()
    finally:
        run_cloudfs("umount", mountpoint, "--timeout", "20", env=locked.env, timeout=30)


def test_maintenance_without_its_rights_is_one_line_and_its_credentials_work(locked, iam, tmp_path):
    root = locked.mount(None, "--interval", "3600")
    write_files(root, 1)
    first = snapshot_now(locked)
    (root / "small.bin").write_text("changed")
    snapshot_now(locked)
    locked.umount()

    line = one_line_error(run_cloudfs("forget", "--keep-last", "1", check=False, env=locked.env))
    assert "the maintenance role cannot delete (s3:DeleteObject): use --maintenance-profile" in line
    assert len(locked.snapshots()) == 3      # the mount's first, and two; nothing was deleted
    line = one_line_error(run_cloudfs("prune", check=False, env=locked.env))
    assert "the maintenance role cannot write (s3:PutObject): use --maintenance-profile" in line

    credentials = iam.credentials_file(tmp_path / "maintenance-credentials", "maintenance")
    run_cloudfs("forget", "--keep-last", "1", "--maintenance-credentials", credentials, env=locked.env)
    assert first not in [s.name for s in locked.snapshots()]

    profiles = tmp_path / "aws-credentials"
    access, secret = iam.keys["maintenance"]
    profiles.write_text(f"[maint]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
    env = {**locked.env, "AWS_SHARED_CREDENTIALS_FILE": str(profiles)}
    extended = run_cloudfs("locks", "extend", "--margin", "2", "--maintenance-profile", "maint", env=env)
    assert "1 snapshots need" in extended.stdout and "extended" in extended.stdout
    missing = one_line_error(run_cloudfs("locks", "extend", "--maintenance-profile", "nobody",
                                         check=False, env=env))
    assert "no profile 'nobody'" in missing


def test_a_compliance_locked_snapshot_that_forget_deletes_stays_stored_and_restorable(iam, tmp_path, monkeypatch):
    for tree in protected_on(iam, tmp_path, monkeypatch, "compliance"):
        root = tree.mount(None, "--interval", "3600")
        write_files(root, 1)
        first = snapshot_now(tree)
        (root / "big.bin").write_bytes(b"replaced")
        snapshot_now(tree)
        tree.umount()
        repo = tree.repository()
        snapshot = next(s for s in tree.snapshots(repo) if s.name == first)
        expected = capture_snapshot(TreeReader(repo), snapshot.tree)
        time.sleep(1.1)
        moment = datetime.now(timezone.utc).isoformat()
        time.sleep(1.1)

        credentials = iam.credentials_file(tmp_path / "maintenance-credentials", "maintenance")
        forgot = run_cloudfs("forget", "--keep-last", "1", "--maintenance-credentials", credentials, env=tree.env)
        assert "S3 Object Lock keeps the removed snapshot objects stored" in forgot.stdout
        assert "compliance mode" in forgot.stdout
        assert first not in [s.name for s in tree.snapshots()]
        listed = run_cloudfs("snapshots", "--json", "--as-of", moment, env=tree.env).stdout
        assert first in listed

        admin, key = iam.client("admin"), f"{PREFIX}/{first}"
        version = first_versions(tree)[first]
        head = admin.head_object(Bucket=tree.bucket, Key=key, VersionId=version)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert denied(lambda: admin.delete_object(Bucket=tree.bucket, Key=key, VersionId=version,
                                                  BypassGovernanceRetention=True))
        target = tmp_path / "restored"
        run_cloudfs("restore", "--as-of", moment, first.removeprefix("snapshots/"), target, env=tree.env)
        assert not diff(expected, capture_directory(target))

        pruned = run_cloudfs("prune", "--grace", "0", "--maintenance-credentials", credentials, env=tree.env)
        assert "locked (S3 Object Lock)" in pruned.stdout and "delete 0 chunks" in pruned.stdout
        assert admin.head_object(Bucket=tree.bucket, Key=f"{PREFIX}/{pruned.stdout.split('skipped ')[1].split(':')[0]}")
        assert run_cloudfs("check", env=tree.env, check=False).returncode == 0
        latest = tmp_path / "latest"
        run_cloudfs("restore", "latest", latest, env=tree.env)
        assert (latest / "big.bin").read_bytes() == b"replaced"
