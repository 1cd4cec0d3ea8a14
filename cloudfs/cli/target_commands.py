"""`cloudfs targets add|remove|list|sync`: the places a repository is kept.

A repository may be kept on several targets at once (docs/operations.md,
"Targets"): every object goes to each, a snapshot is committed once K of them
hold it, reads fall back from one to the next. The list is kept in the
repository (`targets/` objects, docs/format.md), so every writer and every new
machine finds it; adding is a put (the writer role), removing a delete (the
maintenance role).
"""

from __future__ import annotations

import sys

from cloudfs.cli.common import human_size, print_json, repository_options
from cloudfs.cli.configured import size
from cloudfs.errors import UsageError


def register(subparsers) -> None:
    repo = repository_options()
    targets = subparsers.add_parser("targets", help="the places the repository is kept (redundancy)")
    commands = targets.add_subparsers(dest="targets_command", metavar="ACTION", required=True)

    add = commands.add_parser(
        "add", parents=[repo], help="keep the repository at another place too",
        description="Copy the whole repository to LOCATION (resumable: run it again after an "
                    "interruption), each chunk checked by size and SHA-256 against the index, then "
                    "record it as a target: from then on every object goes there too. Mounts "
                    "running meanwhile start sending to it before their next snapshot.")
    add.add_argument("name", metavar="NAME", help="the target's name (letters, digits, . _ -)")
    add.add_argument("location", metavar="LOCATION",
                     help="s3://BUCKET/PREFIX, s3+https://HOST:PORT/BUCKET/PREFIX or a path")
    add.add_argument("--this-name", default="primary", metavar="NAME",
                     help="the name --repo gets as the first target, when the repository has none "
                          "recorded yet (default primary)")
    settings = add.add_argument_group("how to reach the new target (kept in its record; no secret is)")
    settings.add_argument("--target-endpoint-url", metavar="URL")
    settings.add_argument("--target-region", metavar="REGION")
    settings.add_argument("--target-profile", metavar="PROFILE", help="an AWS profile holding its credentials")
    settings.add_argument("--target-credentials-file", metavar="FILE",
                          help="an AWS credentials file holding its credentials")
    settings.add_argument("--target-ca-bundle", metavar="PEM")
    settings.add_argument("--target-addressing", choices=("auto", "path", "virtual"), default="auto")
    settings.add_argument("--target-checksum", choices=("sha256", "md5", "none"), default="sha256")
    settings.add_argument("--target-bandwidth-limit", type=size, metavar="BYTES_PER_S",
                          help="upload to it at most this fast (suffixes K, M, G)")
    add.add_argument("--no-progress", dest="progress", action="store_false")
    add.set_defaults(run=run_add)

    remove = commands.add_parser(
        "remove", parents=[repo], help="stop keeping the repository at a target (maintenance)",
        description="Remove NAME from the targets: nothing more is sent there. Its copy stays "
                    "as it is (delete the bucket yourself if that is meant). Never the last target.")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(run=run_remove)

    listing = commands.add_parser("list", parents=[repo], help="the targets and how to reach them")
    listing.add_argument("--check", action="store_true", help="ask each target whether it answers")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=run_list)

    sync = commands.add_parser(
        "sync", parents=[repo], help="copy to each target what it lacks",
        description="Compare each target (or NAME) with the others and copy what it lacks, checked: "
                    "after an outage a mount does this by itself; a command that could not reach "
                    "a target says to run this.")
    sync.add_argument("names", metavar="NAME", nargs="*")
    sync.add_argument("--no-progress", dest="progress", action="store_false")
    sync.set_defaults(run=run_sync)


def run_add(args) -> int:
    from cloudfs.cli.common import as_writer, target_store, with_repository
    from cloudfs.repo.replicas import replicated_store
    from cloudfs.repo.targets import TargetRecord, checked_target_name

    name = checked_target_name(args.name)

    async def add(repo):
        records = await repo.targets()
        if any(record.target == name for record in records):
            raise UsageError(f"the repository already has a target {name!r}")
        first = [] if records else [_opened_as_target(args, checked_target_name(args.this_name))]
        if first and first[0].target == name:
            raise UsageError(f"--this-name and the new target are both {name!r}")
        new = TargetRecord(target=name, location=args.location, endpoint_url=args.target_endpoint_url,
                           region=args.target_region, profile=args.target_profile,
                           credentials_file=args.target_credentials_file, ca_bundle=args.target_ca_bundle,
                           addressing=args.target_addressing, checksum=args.target_checksum,
                           bandwidth_limit=args.target_bandwidth_limit or 0)
        store_for = lambda record: as_writer(target_store(args, record))     # noqa: E731
        await _check_new_target(repo, store_for(new), new)
        replicated = replicated_store(repo, [*records, *first, new], store_for, opened=repo.store)
        target = replicated.targets[[t.name for t in replicated.targets].index(name)]
        with _progress_bar(args, f"copying to {name}") as progress:
            await replicated.level_now(target, progress)
            for record in [*first, new]:
                await repo.save_target(record)
            await replicated.level_now(target, progress)     # what arrived meanwhile, and the records
        return target

    target = with_repository(args, add)
    print(f"target {name} added: {args.location} holds the repository "
          f"({target.sent_objects} objects, {human_size(target.sent_bytes)} copied)")
    return 0


def _opened_as_target(args, name: str):
    """The location --repo names, recorded as the first target."""
    from cloudfs.repo.targets import TargetRecord

    return TargetRecord(target=name, location=args.repo, endpoint_url=args.endpoint_url, region=args.region,
                        profile=args.profile, ca_bundle=args.ca_bundle, addressing=args.s3_addressing,
                        checksum=args.s3_checksum)


async def _check_new_target(repo, store, record) -> None:
    """The new place answers with its credentials, has its bucket, locks if the
    repository locks, and holds nothing but (part of) this repository."""
    from cloudfs.errors import IntegrityError, ObjectNotFound
    from cloudfs.repo.config import CONFIG_NAME, RepoConfig
    from cloudfs.store.replicated import COPY_ORDER

    await store.check()
    if repo.config.object_lock is not None:
        await store.check_object_lock()
    try:
        data = await store.get(CONFIG_NAME)
    except ObjectNotFound:
        data = None
    if data is not None:
        try:
            same = RepoConfig.open(repo.master, data).repo_id == repo.config.repo_id
        except IntegrityError:
            same = False
        if not same:
            raise UsageError(f"{record.location} holds another repository; choose an empty location")
    strangers = [info.name for info in await store.list() if info.name != CONFIG_NAME
                 and not info.name.startswith(COPY_ORDER)]
    if strangers:
        raise UsageError(f"{record.location} is not empty ({strangers[0]}, ...); choose an empty location")


def run_remove(args) -> int:
    from cloudfs.cli.common import with_repository
    from cloudfs.store.replicated import find_replicated

    async def remove(repo):
        records = await repo.targets()
        if not any(record.target == args.name for record in records):
            raise UsageError(f"the repository has no target {args.name!r} "
                             f"(its targets: {', '.join(r.target for r in records) or 'none'})")
        if len(records) == 1:
            raise UsageError(f"refusing to remove {args.name}, the repository's last target")
        replicated = find_replicated(repo.store)
        if replicated is not None:      # a lost target need not answer to be removed
            replicated.remove_target(args.name)
        return await repo.remove_target(args.name)

    with_repository(args, remove, maintenance=True)
    print(f"target {args.name} removed: nothing more is sent there; its copy stays as it was")
    return 0


def run_list(args) -> int:
    from cloudfs.cli.common import target_store, with_repository

    async def listing(repo):
        rows = []
        for record in await repo.targets():
            row = {"name": record.target, "location": record.location, **record.settings()}
            if args.check:
                row["answers"] = await _answers(target_store(args, record))
            rows.append(row)
        return rows

    rows = with_repository(args, listing)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no targets recorded: the repository is kept only at {args.repo}")
    for row in rows:
        extra = "  ".join(f"{key}={value}" for key, value in row.items()
                          if key not in ("name", "location", "answers"))
        answers = f"  {row['answers']}" if "answers" in row else ""
        print(f"{row['name']:<12} {row['location']}{'  ' + extra if extra else ''}{answers}")
    return 0


async def _answers(store) -> str:
    from cloudfs.errors import CloudfsError

    try:
        await store.check()
        return "ok"
    except CloudfsError as error:
        return f"FAILS: {error}"
    finally:
        await store.aclose()
    return "answers"


def run_sync(args) -> int:
    from cloudfs.cli.common import with_repository
    from cloudfs.store.replicated import find_replicated

    async def sync(repo):
        replicated = find_replicated(repo.store)
        if replicated is None:
            raise UsageError("the repository has no targets recorded (`cloudfs targets add`)")
        chosen = [t for t in replicated.targets if not args.names or t.name in args.names]
        unknown = set(args.names) - {t.name for t in replicated.targets}
        if unknown:
            raise UsageError(f"no target {sorted(unknown)[0]!r}")
        copied = {}
        for target in chosen:
            with _progress_bar(args, f"syncing {target.name}") as progress:
                await replicated.level_now(target, progress)
            copied[target.name] = (target.sent_objects, target.sent_bytes)
        return copied

    for name, (objects, sent) in with_repository(args, sync).items():
        print(f"{name}: level ({objects} objects, {human_size(sent)} copied)")
    return 0


class _progress_bar:
    """A byte progress bar on a terminal (nothing elsewhere), fed (sent, total)."""

    def __init__(self, args, description: str):
        from tqdm import tqdm

        self.bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=description, file=sys.stderr,
                        disable=not (args.progress and sys.stderr.isatty()))

    def __enter__(self):
        return self.update

    def update(self, sent: int, total: int) -> None:
        self.bar.total = total
        self.bar.n = sent
        self.bar.refresh()

    def __exit__(self, *exc) -> None:
        self.bar.close()

