"""Options and helpers shared by the subcommands that open a repository.

Building the parser imports every command module, so this module and the
command modules import only the standard library and cloudfs.errors at the
top: the repository, the stores (boto3), trio and cryptography are imported by
the functions that use them. A command that only asks a running mount
(`cloudfs status`) then starts in a few tens of milliseconds
(`tests/test_cli_startup.py`).
"""

from __future__ import annotations

import argparse
import getpass
import gc
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cloudfs.errors import UsageError

if TYPE_CHECKING:
    from cloudfs import crypto
    from cloudfs.repo import Repository
    from cloudfs.store import Store

T = TypeVar("T")


def repository_options() -> argparse.ArgumentParser:
    """A parent parser with the options that say which repository and how to reach it."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("repository")
    group.add_argument("-r", "--repo", default=os.environ.get("CLOUDFS_REPO"),
                       help="s3://BUCKET/PREFIX, s3+http(s)://HOST:PORT/BUCKET/PREFIX or a path "
                            "(default $CLOUDFS_REPO)")
    group.add_argument("--password-file", default=os.environ.get("CLOUDFS_PASSWORD_FILE"),
                       help="read the passphrase from this file (else $CLOUDFS_PASSWORD, else a prompt)")
    group.add_argument("--password-command", metavar="COMMAND",
                       help="run COMMAND (a keyring helper, say) and take what it prints as the passphrase")
    group.add_argument("--endpoint-url", default=os.environ.get("CLOUDFS_ENDPOINT_URL"),
                       help="S3-compatible endpoint (default $CLOUDFS_ENDPOINT_URL, $AWS_ENDPOINT_URL or AWS)")
    group.add_argument("--region", help="S3 region (default from the AWS environment or profile)")
    group.add_argument("--profile", help="AWS profile for credentials and settings")
    group.add_argument("--ca-bundle", help="PEM file of CAs to trust for TLS (TLS is always verified)")
    group.add_argument("--s3-addressing", choices=("auto", "path", "virtual"), default="auto",
                       help="path: HOST/BUCKET (most S3-compatible servers), virtual: BUCKET.HOST (AWS); "
                            "auto: path with --endpoint-url, else virtual (default auto)")
    group.add_argument("--s3-checksum", choices=("sha256", "md5", "none"), default="sha256",
                       help="checksum header each upload carries (default sha256)")
    group.add_argument("--s3-connections", type=int, default=8, metavar="N",
                       help="concurrent S3 requests (default 8)")
    group.add_argument("--retries", type=int, default=6, metavar="N",
                       help="tries of a failing request before giving up (default 6)")
    group.add_argument("--maintenance-profile", metavar="PROFILE",
                       help="AWS profile for the maintenance role (forget, unpin, policy set, key "
                            "remove/passwd, repair index, locks extend, init): its own credentials")
    group.add_argument("--maintenance-credentials", metavar="FILE",
                       help="an AWS credentials file for the maintenance role (its [default] "
                            "profile, or --maintenance-profile)")
    group.add_argument("--cache-dir", type=Path, help="local cache (default ~/.cache/cloudfs)")
    group.add_argument("--no-cache", action="store_true", help="do not cache index and snapshot objects")
    parser.set_defaults(opens_repository=True)
    return parser


def kdf_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--kdf-time", type=float, default=0.5, metavar="SECONDS",
                        help="how long deriving the key from a passphrase takes here (default 0.5)")
    return parser


def as_of_options() -> argparse.ArgumentParser:
    """--as-of: read the repository as it was at a past moment (versioned S3 buckets)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--as-of", type=past_moment, metavar="TIME",
                        help="read every object as it was at TIME (ISO 8601, UTC unless a zone is "
                             "given: 2026-11-26T05:40:00Z), ignoring later overwrites and deletes; "
                             "needs a versioned S3 bucket")
    return parser


def past_moment(text: str) -> datetime:
    """An argparse type: an ISO 8601 time, UTC unless it says otherwise, not in the future."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (ISO 8601, e.g. 2026-11-26T05:40:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment > datetime.now(timezone.utc):
        raise argparse.ArgumentTypeError(f"{text} is in the future")
    return moment


def snapshot_filter_options() -> argparse.ArgumentParser:
    """--host and --source: only the snapshots of one machine and/or directory."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("which snapshots")
    group.add_argument("--host", help="only snapshots taken on this host")
    group.add_argument("--source", metavar="DIR",
                       help="only snapshots of this protected directory (as it was mounted)")
    return parser


def snapshot_filter(args):
    from cloudfs.browse.names import SnapshotFilter

    sources = frozenset({os.path.abspath(args.source), os.path.realpath(args.source)}) if args.source else None
    return SnapshotFilter(host=args.host, sources=sources)


def checked_compression(text: str) -> str:
    """An argparse type: `zstd`, `zstd:LEVEL` or `none`, kept as given."""
    from cloudfs.repo.config import parse_compression

    try:
        parse_compression(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def open_store_from(args) -> Store:
    """The store as the writer role uses it: get, put, head, list; a delete raises (I9).
    With --as-of, the store as it was then, read-only."""
    store = as_writer(_store_from(args))
    if getattr(args, "as_of", None) is None:
        return store
    from cloudfs.store.asof import AsOfStore

    return AsOfStore(store, args.as_of)


def as_writer(store: Store) -> Store:
    from cloudfs.store.roles import WriterStore

    return WriterStore(store)


def as_maintenance(store: Store) -> Store:
    from cloudfs.store.roles import MaintenanceStore

    return MaintenanceStore(store)


def open_maintenance_store(args) -> Store:
    """The store for maintenance (forget, unpin, policy changes, key removal, index
    repair, lock extension, init's cleanup): the only one whose delete works, with
    the maintenance role's own credentials if given. The one place they are used."""
    return as_maintenance(_store_from(args, profile=args.maintenance_profile or args.profile,
                                      credentials_file=args.maintenance_credentials))


def target_options() -> argparse.ArgumentParser:
    """--target NAME: read one of the repository's targets only."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--target", dest="from_target", metavar="NAME",
                        help="read only this target of the repository (`cloudfs targets list`); "
                             "default: the healthiest, falling back to the others")
    return parser


def target_store(args, record) -> Store:
    """The store of a recorded target, reached with the record's settings and this
    command's retries and connections."""
    from cloudfs.store import RetryPolicy, S3Options, open_store

    options = S3Options(endpoint_url=record.endpoint_url, region=record.region, profile=record.profile,
                        credentials_file=record.credentials_file, addressing=record.addressing,
                        ca_bundle=record.ca_bundle, checksum=record.checksum,
                        max_concurrency=args.s3_connections, retry=RetryPolicy(attempts=args.retries))
    return open_store(record.location, options)


async def use_targets(args, repo: Repository, opened: Store, role: Callable[[Store], Store]) -> Repository:
    """The repository to use: read and written through every target it records (the
    opened store serves the one it is), or with --target as that target alone holds
    it (its own index and snapshots). As it is without targets recorded, or with
    --as-of (the past of the opened one)."""
    from cloudfs.repo.replicas import place, replicated_store

    if getattr(args, "as_of", None) is not None:
        return repo
    records = await repo.targets()
    chosen = getattr(args, "from_target", None)
    if chosen:
        record = next((r for r in records if r.target == chosen), None)
        if record is None:
            names = ", ".join(r.target for r in records) or "none: it is kept only where --repo says"
            raise UsageError(f"the repository has no target {chosen!r} (its targets: {names})")
        store = role(target_store(args, record))
        alone = repo.at(opened if place(opened) == place(store) else store)
        await alone.load_index()
        return alone
    if records:
        replicated = replicated_store(repo, records, lambda record: role(target_store(args, record)),
                                      opened=opened)
        repo.use_store(role(replicated))
    return repo


async def each_target(args, repo, chosen: str | None) -> list:
    """(target name, the repository as that target holds it) for each target to check or drill;
    (None, repo) for a repository kept in one place."""
    from cloudfs.repo.replicas import place

    records = [] if getattr(args, "as_of", None) else await repo.targets()
    if chosen:
        records = [r for r in records if r.target == chosen]
        if not records:
            raise UsageError(f"the repository has no target {chosen!r} (`cloudfs targets list`)")
    if not records:
        return [(None, repo)]
    opened = open_store_from(args)
    return [(r.target, repo.at(opened if place(opened) == place(s := target_store(args, r)) else as_writer(s)))
            for r in records]


def _store_from(args, *, profile: str | None = None, credentials_file: str | None = None) -> Store:
    from cloudfs.store import RetryPolicy, S3Options, open_store

    if not args.repo:
        raise UsageError("no repository given: use --repo or set CLOUDFS_REPO")
    if args.retries < 1 or args.s3_connections < 1:
        raise UsageError("--retries and --s3-connections must be at least 1")
    if credentials_file is not None and not os.path.isfile(credentials_file):
        raise UsageError(f"no credentials file {credentials_file}")
    options = S3Options(
        endpoint_url=args.endpoint_url,
        region=args.region,
        profile=profile or args.profile,
        credentials_file=credentials_file,
        addressing=args.s3_addressing,
        ca_bundle=args.ca_bundle,
        checksum=args.s3_checksum,
        max_concurrency=args.s3_connections,
        retry=RetryPolicy(attempts=args.retries),
    )
    return open_store(args.repo, options)


async def open_repository(args) -> Repository:
    """The repository with the writer role's store (every target's, if it has several)."""
    return await _open_repository(args, open_store_from(args), as_writer)


async def open_maintenance_repository(args) -> Repository:
    return await _open_repository(args, open_maintenance_store(args), as_maintenance)


async def _open_repository(args, store: Store, role: Callable[[Store], Store]) -> Repository:
    from cloudfs.repo import Repository

    passphrase = read_passphrase(args)
    repo = await Repository.open(store, passphrase, cache_root=args.cache_dir, use_cache=not args.no_cache)
    try:
        return await use_targets(args, repo, store, role)
    except BaseException:
        await repo.close()
        raise


def run_async(function: Callable[[], Awaitable[T]]) -> T:
    """Run `function()` in a trio loop (imported only by the commands that need it)."""
    import trio

    return trio.run(function)


def with_repository(args, action: Callable[[Repository], Awaitable[T]], *, maintenance: bool = False) -> T:
    """Open the repository `args` name (with the maintenance role's store if
    `maintenance`), return `await action(repo)`, and close it."""

    async def run() -> T:
        from cloudfs.store.replicated import find_replicated

        repo = await (open_maintenance_repository(args) if maintenance else open_repository(args))
        # What starting up made (modules, boto3's models: ~1 M objects) lives until
        # the end: out of the collector's sight, its full collections stop costing
        # ~0.1 s each in a restore that allocates an object or two per entry.
        gc.freeze()
        try:
            return await action(repo)
        finally:
            _warn_of_targets_behind(find_replicated(repo.store))
            await repo.close()

    return run_async(run)


def _warn_of_targets_behind(replicated) -> None:
    for name, count in (replicated.pending() if replicated is not None else {}).items():
        print(f"cloudfs: warning: target {name} did not receive {count} object(s); "
              "`cloudfs targets sync` sends them", file=sys.stderr)


def tuned_kdf(args) -> crypto.KdfParams:
    from cloudfs import crypto

    if args.kdf_time <= 0:
        raise UsageError("--kdf-time must be positive")
    return crypto.tune_kdf(args.kdf_time)


def read_passphrase(args, *, confirm: bool = False) -> bytes:
    """From --password-file, --password-command, the configuration's password_env,
    $CLOUDFS_PASSWORD, or a prompt on a terminal."""
    if args.password_file:
        return _read_password_file(args.password_file)
    if getattr(args, "password_command", None):
        return _run_password_command(args.password_command)
    if getattr(args, "password_env", None):
        return _read_password_env(args.password_env)
    if "CLOUDFS_PASSWORD" in os.environ:
        return os.environ["CLOUDFS_PASSWORD"].encode()
    return _prompt("Passphrase: ", confirm)


def read_new_passphrase(args) -> bytes:
    """From --new-password-file, $CLOUDFS_NEW_PASSWORD, or a prompt (twice) on a terminal."""
    if getattr(args, "new_password_file", None):
        return _read_password_file(args.new_password_file)
    if "CLOUDFS_NEW_PASSWORD" in os.environ:
        return os.environ["CLOUDFS_NEW_PASSWORD"].encode()
    return _prompt("New passphrase: ", confirm=True)


def _read_password_file(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read password file {path}: {error.strerror}") from None
    return data[:-1] if data.endswith(b"\n") else data


PASSWORD_COMMAND_TIMEOUT = 60.0


def _run_password_command(command: str | list[str]) -> bytes:
    """What `command` prints (one trailing newline dropped); its failure is one line."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    name = argv[0] if argv else "''"
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=PASSWORD_COMMAND_TIMEOUT)
    except FileNotFoundError:
        raise UsageError(f"password command {name} not found") from None
    except PermissionError:
        raise UsageError(f"password command {name} is not executable") from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"password command {name} did not answer within "
                         f"{PASSWORD_COMMAND_TIMEOUT:.0f} s") from None
    if result.returncode:
        said = result.stderr.decode(errors="replace").strip().splitlines()
        raise UsageError(f"password command {name} failed (exit status {result.returncode})"
                         + (f": {said[0]}" if said else ""))
    passphrase = result.stdout[:-1] if result.stdout.endswith(b"\n") else result.stdout
    if not passphrase:
        raise UsageError(f"password command {name} printed no passphrase")
    return passphrase


def _read_password_env(name: str) -> bytes:
    if name not in os.environ:
        raise UsageError(f"the passphrase's environment variable {name} (password_env) is not set")
    return os.environ[name].encode()


def _prompt(text: str, confirm: bool) -> bytes:
    if not sys.stdin.isatty():
        raise UsageError("no passphrase: use --password-file, set CLOUDFS_PASSWORD, or run in a terminal")
    first = getpass.getpass(text)
    if confirm and getpass.getpass("Repeat it: ") != first:
        raise UsageError("the passphrases do not match")
    return first.encode()


def print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def human_size(count: float) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def human_duration(seconds: float) -> str:
    """95 -> "2 min"."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
