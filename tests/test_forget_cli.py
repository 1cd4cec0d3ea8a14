"""`cloudfs forget`, `policy`, `pin` and `unpin` as a user runs them, on synthetic histories.

The snapshots are written through the repository API with chosen times, hosts
and directories (all pointing at one stored empty tree), so a history of days
or years takes a second; the commands run as subprocesses against the rclone
S3 server.
"""

from __future__ import annotations

import json
import time

import pytest
import trio

from cloudfs.repo import BlobKind, Repository, Snapshot
from cloudfs.snapshot.forget import plan_forget
from cloudfs.snapshot.retention import LADDER, NS, Duration, Policy, apply_policy
from cloudfs.snapshot.tree import encode_directory
from cloudfs.store import S3Options, S3Store
from tests.cli_helpers import cloudfs, one_line_error

pytestmark = pytest.mark.timeout(120)

PASSPHRASE = "first passphrase"
HOUR = 3600 * NS
ALPHA_DOCS, ALPHA_CODE, BETA_DOCS = ("alpha", "/docs"), ("alpha", "/code"), ("beta", "/docs")


@pytest.fixture
def env(s3_env, bucket, tmp_path):
    environment = s3_env.env()
    environment.update(CLOUDFS_REPO=f"s3://{bucket}/backup", CLOUDFS_PASSWORD=PASSPHRASE,
                       XDG_CACHE_HOME=str(tmp_path / "cache"))
    environment.pop("CLOUDFS_PASSWORD_FILE", None)
    assert cloudfs("init", "--kdf-time", "0.01", env=environment).returncode == 0
    return environment


@pytest.fixture
def store(s3_env, bucket):
    return S3Store(bucket, "backup", S3Options(endpoint_url=s3_env.endpoint))


def write_history(store, groups: dict[tuple[str, str], list[int]],
                  tags: dict[int, tuple[str, ...]] | None = None) -> list[Snapshot]:
    """Snapshots at the given times (ns) for each (host, source); `tags` by time."""
    async def run():
        repo = await Repository.open(store, PASSPHRASE.encode(), use_cache=False)
        tree = await repo.put_blob(BlobKind.TREE, encode_directory([]))
        written = []
        for (host, source), times in groups.items():
            for time_ns in times:
                written.append(await repo.save_snapshot(Snapshot(
                    tree=tree, time_ns=time_ns, host=host, source=source, tags=(tags or {}).get(time_ns, ()))))
        return written

    return trio.run(run)


def hourly(count: int, newest_ns: int | None = None) -> list[int]:
    newest_ns = newest_ns or time.time_ns() - HOUR // 2
    return [newest_ns - i * HOUR for i in range(count)]


def listed(env, *options) -> list[dict]:
    result = cloudfs("snapshots", "--json", *options, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def names(rows) -> set[str]:
    return {row["name"] for row in rows}


def forget_json(env, *options) -> dict:
    result = cloudfs("forget", "--json", *options, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_dry_run_lists_every_snapshot_with_the_rules_that_keep_it_and_deletes_nothing(env, store):
    written = write_history(store, {ALPHA_DOCS: hourly(6), BETA_DOCS: hourly(2)})
    before = names(listed(env))
    report = forget_json(env, "--dry-run", "--keep-last", "2", "--keep-daily", "1",
                         "--host", "alpha", "--source", "/docs")
    assert report["dry_run"] and report["removed"] == [] and names(listed(env)) == before
    [group] = report["groups"]                                     # beta is not chosen
    assert (group["host"], group["source"], group["keep"], group["remove"]) == ("alpha", "/docs", 2, 4)
    snapshots = group["snapshots"]
    assert [s["name"] for s in snapshots] == [s.name for s in written[:6]]     # newest first
    assert snapshots[0]["reasons"] == ["last", "daily"] and snapshots[1]["reasons"] == ["last"]
    assert all(s["action"] == "remove" and s["reasons"] == [] for s in snapshots[2:])

    text = cloudfs("forget", "--dry-run", "--keep-last", "2", "--host", "alpha", env=env).stdout
    assert "policy: keep-last 2 (from the command line)" in text and "nothing deleted (--dry-run)" in text
    assert "alpha:/docs: keep 2, remove 4" in text
    assert f"keep    {written[1].time:%Y-%m-%d %H:%M:%S}  {written[1].name[-8:]}  last" in text


def test_forget_on_one_group_leaves_the_other_groups_alone(env, store):
    write_history(store, {ALPHA_DOCS: hourly(5), ALPHA_CODE: hourly(5), BETA_DOCS: hourly(5)})
    others = names(listed(env, "--source", "/code")) | names(listed(env, "--host", "beta"))
    report = forget_json(env, "--keep-last", "1", "--host", "alpha", "--source", "/docs")
    assert len(report["removed"]) == 4
    assert len(listed(env, "--host", "alpha", "--source", "/docs")) == 1
    assert names(listed(env, "--source", "/code")) | names(listed(env, "--host", "beta")) == others

    report = forget_json(env, "--keep-last", "2")                    # every group, each on its own
    assert [(g["host"], g["source"], g["keep"]) for g in report["groups"]] == [
        ("alpha", "/code", 2), ("alpha", "/docs", 1), ("beta", "/docs", 2)]
    assert len(listed(env)) == 5


def test_rules_that_keep_nothing_are_refused_unless_allowed(env, store):
    write_history(store, {ALPHA_DOCS: hourly(3), BETA_DOCS: hourly(3)})
    before = names(listed(env))
    assert "keep no snapshot of alpha:/docs, beta:/docs" in one_line_error(
        cloudfs("forget", "--keep-tag", "release", env=env))
    dry = cloudfs("forget", "--dry-run", "--keep-tag", "release", "--host", "beta", env=env)
    assert dry.returncode == 2 and "beta:/docs: keep 0, remove 3" in dry.stdout
    assert "keep no snapshot of beta:/docs" in dry.stderr
    assert names(listed(env)) == before

    report = forget_json(env, "--keep-tag", "release", "--host", "beta", "--allow-empty")
    assert len(report["removed"]) == 3 and listed(env, "--host", "beta") == []
    assert len(listed(env, "--host", "alpha")) == 3
    assert "no snapshot matches" in one_line_error(cloudfs("forget", "--keep-last", "1", "--host", "gamma",
                                                           env=env))
    assert "at least 1" in cloudfs("forget", "--keep-last", "0", env=env).stderr
    assert "not a duration" in cloudfs("forget", "--keep-within", "3 days", env=env).stderr


def test_without_rules_forget_applies_the_policy_stored_in_the_repository(env, store, s3_env, bucket):
    written = write_history(store, {ALPHA_DOCS: hourly(24 * 5), BETA_DOCS: hourly(4)})
    shown = json.loads(cloudfs("policy", "show", "--json", env=env).stdout)
    assert shown["rules"] == LADDER.to_record() and "built-in default" in shown["policy_from"]
    report = forget_json(env, "--dry-run", "--source", "/docs", "--host", "alpha")
    expected = {d.snapshot.name for d in apply_policy(LADDER, written[:120], time.time_ns()) if d.keep}
    assert {s["name"] for s in report["groups"][0]["snapshots"] if s["action"] == "keep"} == expected
    assert 24 + 24 + 3 <= len(expected) < 60

    result = cloudfs("policy", "set", "--keep-last", "3", "--keep-within-daily", "1m", env=env)
    assert result.returncode == 0 and "stored as policy/" in result.stdout, result.stderr
    stored = [key for key in _keys(s3_env, bucket) if key.startswith("backup/policy/")]
    assert len(stored) == 1 and _object(s3_env, bucket, stored[0])[:8] == b"CLFS\x01\x06\x00\x00"
    text = cloudfs("policy", "show", env=env).stdout
    assert "keep-within-daily 1m, keep-last 3" in text and stored[0].removeprefix("backup/") in text
    report = forget_json(env)
    stored_policy = Policy(counts={"last": 3}, windows={"daily": Duration(months=1)})
    plans = plan_forget(stored_policy, written, time.time_ns())
    assert report["policy_from"].startswith("policy/")
    assert names(listed(env)) == {s.name for plan in plans for s in plan.kept}
    assert [g["keep"] for g in report["groups"]] == [len(plan.kept) for plan in plans]

    assert cloudfs("policy", "reset", env=env).returncode == 0
    assert json.loads(cloudfs("policy", "show", "--json", env=env).stdout)["rules"] == LADDER.to_record()
    assert "no rule given" in one_line_error(cloudfs("policy", "set", env=env))


def test_a_pin_keeps_a_snapshot_whatever_the_policy_until_unpinned(env, store, s3_env, bucket):
    written = write_history(store, {ALPHA_DOCS: hourly(4)})
    oldest = written[-1]
    result = cloudfs("pin", oldest.name[-8:], "--note", "before the migration", env=env)
    assert result.returncode == 0 and f"pinned {oldest.name}" in result.stdout, result.stderr
    assert "pinned already" in cloudfs("pin", oldest.name[-8:], env=env).stdout
    pins = [key for key in _keys(s3_env, bucket) if key.startswith("backup/pins/")]
    assert len(pins) == 1 and pins[0].startswith("backup/pins/" + oldest.name.removeprefix("snapshots/") + "/")
    assert _object(s3_env, bucket, pins[0])[:8] == b"CLFS\x01\x07\x00\x00"
    row = next(r for r in listed(env) if r["name"] == oldest.name)
    assert row["pinned"] and row["pins"][0]["note"] == "before the migration"
    assert "  pinned" in cloudfs("snapshots", env=env).stdout

    report = forget_json(env, "--keep-last", "1")
    assert set(report["removed"]) == {s.name for s in written[1:3]}
    kept = {s["name"]: s["reasons"] for s in report["groups"][0]["snapshots"] if s["action"] == "keep"}
    assert kept == {written[0].name: ["last"], oldest.name: ["pinned"]}

    assert cloudfs("unpin", oldest.name[-8:], env=env).returncode == 0
    assert not any(key.startswith("backup/pins/") for key in _keys(s3_env, bucket))
    assert "is not pinned" in one_line_error(cloudfs("unpin", oldest.name[-8:], env=env))
    forget_json(env, "--keep-last", "1")
    assert names(listed(env)) == {written[0].name}


def _keys(s3_env, bucket) -> list[str]:
    return [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


def _object(s3_env, bucket, key) -> bytes:
    return s3_env.client().get_object(Bucket=bucket, Key=key)["Body"].read()
