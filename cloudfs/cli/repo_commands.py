"""`cloudfs init`, `key add|list|remove|passwd`, `snapshots`, `check` and `repair index`."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from cloudfs.cli.common import (
    as_of_options,
    checked_compression,
    each_target,
    human_size,
    kdf_options,
    open_maintenance_store,
    print_json,
    read_new_passphrase,
    read_passphrase,
    repository_options,
    run_async,
    snapshot_filter,
    snapshot_filter_options,
    target_options,
    tuned_kdf,
    with_repository,
)
from cloudfs.errors import BucketNotFound, UsageError


def register(subparsers) -> None:
    repo, kdf = repository_options(), kdf_options()

    init = subparsers.add_parser("init", parents=[repo, kdf], help="create a repository",
                                 description="Create an encrypted repository in an empty location.")
    init.add_argument("location", nargs="?", help="the repository (instead of --repo)")
    init.add_argument("--create-bucket", action="store_true", help="create the S3 bucket if it is missing")
    init.add_argument("--chunk-size-mib", type=int, default=64, help="target chunk size (default 64)")
    init.add_argument("--block-size-kib", type=int, default=64,
                      help="file block size, a power of two (default 64)")
    init.add_argument("--compression", type=checked_compression, default="zstd", metavar="METHOD",
                      help="zstd, zstd:LEVEL (-7 fastest to 22 smallest) or none: the default of "
                           "every mount, which may choose its own (default zstd, level 1)")
    init.add_argument("--object-lock", type=int, metavar="DAYS",
                      help="lock every object for DAYS with S3 Object Lock (the bucket needs "
                           "versioning and Object Lock); `cloudfs locks extend` keeps what kept "
                           "snapshots need locked")
    init.add_argument("--lock-mode", choices=("governance", "compliance"), default="governance",
                      help="governance: whoever may bypass governance retention can still delete; "
                           "compliance: nobody can, until the lock runs out (default governance)")
    init.set_defaults(run=run_init)

    key = subparsers.add_parser("key", help="manage passphrases (key slots)")
    key_commands = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    add = key_commands.add_parser("add", parents=[repo, kdf], help="add a passphrase")
    add.add_argument("--new-password-file", help="read the new passphrase from this file")
    add.add_argument("--label", default="", help="a note to tell the slot apart (shown by list)")
    add.set_defaults(run=run_key_add)
    listing = key_commands.add_parser("list", parents=[repo], help="list the key slots")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=run_key_list)
    remove = key_commands.add_parser("remove", parents=[repo], help="remove a key slot")
    remove.add_argument("slot_id", help="the slot's id, or a unique prefix of it")
    remove.set_defaults(run=run_key_remove)
    passwd = key_commands.add_parser("passwd", parents=[repo, kdf],
                                     help="change the passphrase of the slot in use")
    passwd.add_argument("--new-password-file", help="read the new passphrase from this file")
    passwd.set_defaults(run=run_key_passwd)

    snapshots = subparsers.add_parser("snapshots", parents=[repo, snapshot_filter_options(), as_of_options(), target_options()],
                                      help="list the snapshots",
                                      description="List the repository's snapshots, oldest first.")
    snapshots.add_argument("--json", action="store_true")
    snapshots.set_defaults(run=run_snapshots)

    check = subparsers.add_parser("check", parents=[repo, as_of_options(), target_options()], help="verify the repository",
                                  description="Check that every object the repository refers to is "
                                              "there and intact.")
    reading = check.add_mutually_exclusive_group()
    reading.add_argument("--read-data", action="store_true",
                         help="also download and verify every chunk and every blob in it")
    reading.add_argument("--read-data-subset", type=_subset, metavar="N/T|P%",
                         help="read a share of the chunks: slice N of T (1/3), or P%% of them (10%%); "
                              "each run reads the next share, so T runs (or 100/P) read them all")
    check.add_argument("--json", action="store_true", help="the findings and counts as JSON")
    check.set_defaults(run=run_check)

    repair = subparsers.add_parser(
        "repair", parents=[repo, target_options()], help="heal the repository from its other targets",
        description="Read every target (or --target's) whole, copy each missing or damaged object "
                    "to it from a target holding a checked copy, then index chunks no index names "
                    "from their footers (as `repair index`). Maintenance work.")
    repair.set_defaults(run=run_repair)
    repair_commands = repair.add_subparsers(dest="repair_command", metavar="WHAT")
    repair_index = repair_commands.add_parser(
        "index", parents=[repo], help="rebuild the index from the chunks",
        description="Index every chunk that no readable index object lists, from the chunk's "
                    "own footer, and drop damaged index objects.")
    repair_index.add_argument("--json", action="store_true")
    repair_index.set_defaults(run=run_repair_index)


def run_init(args) -> int:
    from cloudfs.repo import RepoConfig, Repository
    from cloudfs.repo.config import ObjectLock, parse_compression

    if args.location:
        args.repo = args.location
    try:
        level = parse_compression(args.compression)
        lock = None if args.object_lock is None else ObjectLock(args.lock_mode, args.object_lock)
        config = RepoConfig(chunk_size=args.chunk_size_mib << 20, block_size=args.block_size_kib << 10,
                            compression="none" if level is None else "zstd",
                            compression_level=level or 1, object_lock=lock)
    except ValueError as error:
        raise UsageError(str(error)) from None
    store = open_maintenance_store(args)     # removes the key slots of an interrupted init
    passphrase = read_passphrase(args, confirm=True)
    kdf = tuned_kdf(args)

    async def init():
        repo = await Repository.init(store, passphrase, config=config, kdf=kdf,
                                     cache_root=args.cache_dir, use_cache=not args.no_cache,
                                     create_container=args.create_bucket or "://" not in args.repo
                                     or args.repo.startswith("file://"))
        await repo.close()
        return repo

    try:
        repo = run_async(init)
    except BucketNotFound as error:
        raise BucketNotFound(f"{error} (pass --create-bucket to create it)") from None
    print(f"created repository {repo.config.repo_id_hex[:16]} at {store.location}")
    if config.object_lock:
        print(f"every object is locked for {config.object_lock.days} days ({config.object_lock.mode} "
              "mode): run `cloudfs locks extend` daily to keep what kept snapshots need locked")
    print("keep the passphrase safe: without it the backups cannot be read")
    return 0


def run_key_add(args) -> int:
    async def add(repo):
        return await repo.add_key(read_new_passphrase(args), label=args.label, kdf=tuned_kdf(args))

    slot = with_repository(args, add)
    print(f"added key slot {slot.slot_id[:16]}")
    return 0


def run_key_list(args) -> int:
    async def slots(repo):
        return repo.slot, await repo.key_slots()

    current, slots = with_repository(args, slots)
    rows = [{"id": s.slot_id, "current": s.name == current.name, "created": s.created,
             "host": s.host, "user": s.user, "label": s.label, "kdf": s.kdf.algorithm}
            for s in slots]
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        print(f"{'*' if row['current'] else ' '} {row['id'][:16]}  {row['created'][:19]}  "
              f"{row['user']}@{row['host']}  {row['label']}".rstrip())
    return 0


def run_key_remove(args) -> int:
    slot = with_repository(args, lambda repo: repo.remove_key(args.slot_id), maintenance=True)
    print(f"removed key slot {slot.slot_id[:16]}")
    return 0


def run_key_passwd(args) -> int:
    async def passwd(repo):
        return await repo.change_passphrase(read_new_passphrase(args), kdf=tuned_kdf(args))

    slot = with_repository(args, passwd, maintenance=True)
    print(f"passphrase changed; the slot is now {slot.slot_id[:16]}")
    return 0


def _subset(text: str):
    from cloudfs.check import parse_subset

    try:
        return parse_subset(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_check(args) -> int:
    reports = check_report(args)
    if args.json:
        print_json(check_json(args, reports))
    else:
        print_check(args, reports)
    return 0 if checked_ok(reports) else 1


def check_report(args):
    from tqdm import tqdm

    from cloudfs.check import Rotation, check_repository

    chosen, args.from_target = getattr(args, "from_target", None), None   # each target on its own
    subset, as_json = getattr(args, "read_data_subset", None), getattr(args, "json", False)

    async def check(repo):
        reports = []
        for name, at in await each_target(args, repo, chosen):
            rotation = Rotation(_rotation_path(repo, name) if not args.no_cache else None)
            choose = None
            if subset:
                kind, amount, count = subset
                choose = rotation.slice(int(amount), count) if kind == "slice" else rotation.share(amount)
            reading = args.read_data or choose is not None
            with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=f"reading {name or 'chunks'}",
                      file=sys.stderr, disable=as_json or not (reading and sys.stderr.isatty())) as bar:

                def expect(total: int) -> None:
                    bar.total = total
                    bar.refresh()

                reports.append((name, await check_repository(at, read_data=args.read_data, choose=choose,
                                                             progress=bar.update, expect=expect)))
            rotation.save()
        return reports

    return with_repository(args, check)


def check_json(args, reports) -> dict:
    """One target's findings at the top level; with several, each under "targets"."""
    each = [_target_json(args, name, report) for name, report in reports]
    if len(each) == 1 and each[0]["target"] is None:
        return each[0]
    return {"ok": all(report["ok"] for report in each), "targets": each}


def _target_json(args, name: str | None, report) -> dict:
    return {"target": name, "ok": report.ok,
            "read_data": bool(args.read_data or getattr(args, "read_data_subset", None)),
            "snapshots": report.snapshots, "chunks": report.chunks, "blobs": report.blobs,
            "chunks_read": report.chunks_read, "bytes_read": report.bytes_read,
            "errors": report.errors, "warnings": report.warnings, "damaged": report.damaged,
            "affected": [list(place) for place in report.affected], "more_affected": report.more_affected}


def checked_ok(reports) -> bool:
    return all(report.ok for _, report in reports)


def print_check(args, reports) -> None:
    for name, report in reports:
        _print_check(name, report, args)


def _rotation_path(repo, target: str | None):
    from cloudfs.system.statedir import state_home

    return state_home() / "check" / f"{repo.config.repo_id_hex}-{target or 'repository'}.json"


def _print_check(name: str | None, report, args) -> None:
    prefix = f"{name}: " if name else ""
    for warning in report.warnings:
        print(f"{prefix}warning: {warning}")
    for error in report.errors:
        print(f"{prefix}error: {error}")
    for snapshot, path in report.affected:
        print(f"{prefix}damaged: {snapshot.removeprefix('snapshots/')} {path}")
    if report.more_affected:
        print(f"{prefix}damaged: {report.more_affected} more paths")
    read = ""
    if args.read_data or getattr(args, "read_data_subset", None):
        read = f", read {len(report.chunks_read)} chunks ({report.bytes_read / 2**20:.1f} MiB)"
    print(f"{prefix}checked {report.snapshots} snapshots, {report.chunks} chunks, {report.blobs} blobs{read}: "
          + ("no errors found" if report.ok else f"{len(report.errors)} errors"))


def run_repair(args) -> int:
    from cloudfs.check import check_repository
    from cloudfs.errors import CloudfsError
    from cloudfs.store.replicated import find_replicated

    chosen, args.from_target = args.from_target, None

    async def repair(repo):
        replicated = find_replicated(repo.store)
        if replicated is None:
            raise UsageError("the repository is kept in one place: nothing to copy a good object "
                             "from (`cloudfs repair index` rebuilds its index)")
        results = []
        for target in replicated.targets:
            if chosen and target.name != chosen:
                continue
            report = await check_repository(repo.at(target.store), read_data=True)
            for name in sorted(report.damaged):
                try:
                    await replicated.store_copy(target, name, await replicated.good_copy(target, name))
                    results.append((target.name, name, "healed"))
                except CloudfsError as error:
                    results.append((target.name, name, f"not healed: {error}"))
            await replicated.level_now(target)          # and whatever it lacks altogether
        indexed, dropped = await repo.rebuild_index()
        return results, indexed, dropped

    results, indexed, dropped = with_repository(args, repair, maintenance=True)
    for target, name, outcome in results:
        print(f"{target}: {name}: {outcome}")
    for name in dropped:
        print(f"removed damaged {name}")
    print(f"indexed {indexed} chunks from their footers")
    return 1 if any(outcome != "healed" for *_, outcome in results) else 0


def run_repair_index(args) -> int:
    indexed, dropped = with_repository(args, lambda repo: repo.rebuild_index(), maintenance=True)
    if args.json:
        print_json({"indexed_chunks": indexed, "removed": dropped})
        return 0
    for name in dropped:
        print(f"removed damaged {name}")
    print(f"indexed {indexed} chunks from their footers")
    return 0


def run_snapshots(args) -> int:
    async def listing(repo):
        snapshots = snapshot_filter(args).apply(await repo.snapshots())
        pinned = await repo.pinned()
        return snapshots, {s.name: await repo.open_pins(pinned[s.name]) for s in snapshots
                           if s.name in pinned}

    snapshots, pins = with_repository(args, listing)
    rows = [{"name": s.name, "id": s.name.rsplit("-", 1)[-1], "time": s.time.isoformat(),
             "host": s.host, "source": s.source, "parent": s.parent, "tags": list(s.tags),
             "pinned": s.name in pins, "pins": [_pin_row(pin) for pin in pins.get(s.name, ())],
             **s.stats} for s in snapshots]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no snapshots")
    for row in rows:
        marks = "".join([f"  [{','.join(row['tags'])}]" if row["tags"] else "",
                         "  pinned" if row["pinned"] else ""])
        print(f"{row['time'][:19].replace('T', ' ')}  {row['id']}  {row.get('files', 0):>8} files  "
              f"{human_size(row.get('bytes', 0)):>10}  +{human_size(row.get('bytes_added', 0))}  "
              f"{row['host']}:{row['source']}{marks}")
    return 0


def _pin_row(pin) -> dict:
    return {"name": pin.name, "note": pin.note, "host": pin.host, "user": pin.user,
            "time": datetime.fromtimestamp(pin.time_ns / 1e9, timezone.utc).isoformat()}
