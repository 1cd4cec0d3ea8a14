"""`cloudfs browse` and `cloudfs restore`: parse, call cloudfs.browse / cloudfs.restore, report.

(`cloudfs snapshots`, the listing, is registered by repo_commands.)
"""

from __future__ import annotations

import os
import sys

from cloudfs.cli.common import (
    as_of_options,
    as_writer,
    human_size,
    open_store_from,
    print_json,
    target_options,
    use_targets,
    read_passphrase,
    repository_options,
    snapshot_filter,
    snapshot_filter_options,
    with_repository,
)
from cloudfs.errors import CloudfsError, UsageError


class DamagedFiles(CloudfsError):
    """A restore finished, but some files could not be restored (listed before)."""


def register(subparsers) -> None:
    repo, as_of = repository_options(), as_of_options()

    browse = subparsers.add_parser(
        "browse", parents=[repo, snapshot_filter_options(), as_of, target_options()], help="mount the snapshots read-only",
        description="Mount every snapshot of the repository read-only at MOUNTPOINT: one folder "
                    "per snapshot named by its UTC time, `latest`, `history/` (every version of "
                    "each file) and `@GMT/` (Samba shadow copies). New snapshots appear by "
                    "themselves. Stop with `cloudfs umount MOUNTPOINT`.")
    browse.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    browse.add_argument("--daemon", action="store_true",
                        help="run in the background once mounted (log in the state directory)")
    browse.add_argument("--allow-other", action="store_true",
                        help="let other users see the mount (by default only you can)")
    browse.add_argument("--no-default-permissions", dest="default_permissions", action="store_false",
                        help="do not check the recorded modes and owners (anyone who can reach "
                             "the mount reads everything)")
    browse.add_argument("--refresh", type=float, default=60.0, metavar="SECONDS",
                        help="how often to look for new snapshots (default 60)")
    browse.add_argument("--memory-cache", type=int, default=128, metavar="MIB",
                        help="verified data kept in memory (default 128)")
    browse.add_argument("--disk-cache", type=int, default=2048, metavar="MIB",
                        help="fetched data kept on disk, still encrypted (default 2048; 0: none)")
    browse.set_defaults(run=run_browse)

    restore = subparsers.add_parser(
        "restore", parents=[repo, snapshot_filter_options(), as_of, target_options()], help="restore a snapshot or a path in it",
        description="Restore SNAPSHOT (all of it, or PATH in it) to TARGET, with data, holes, "
                    "modes, owners (as root), times, xattrs, symlinks and hard links; every "
                    "byte is verified. SNAPSHOT is `latest` (of --source, where the repository "
                    "holds several directories), a time as the browse mount shows "
                    "it, a snapshot id, or a unique prefix of one. A directory goes into "
                    "TARGET if TARGET is an existing directory, else becomes TARGET.")
    restore.add_argument("what", metavar="SNAPSHOT[:PATH]")
    restore.add_argument("target", metavar="TARGET")
    restore.add_argument("--overwrite", action="store_true", help="replace files that exist in TARGET")
    restore.add_argument("--resume", action="store_true",
                         help="finish an earlier restore: keep what is already identical, "
                              "rewrite the rest")
    restore.add_argument("--verify", action="store_true",
                         help="read every restored file back and check it against the snapshot")
    restore.add_argument("--dry-run", action="store_true",
                         help="read the snapshot's listing and check TARGET, then say what would be "
                              "restored (files, bytes) without writing anything")
    restore.add_argument("--jobs", type=int, default=4, metavar="N",
                         help="ranged reads fetched and written at once (default 4)")
    restore.add_argument("--no-progress", dest="progress", action="store_false",
                         help="no progress bar (there is none either when stderr is not a terminal)")
    restore.add_argument("--json", action="store_true",
                         help="what was restored (or with --dry-run, would be) as JSON")
    restore.set_defaults(run=run_restore)


# -- browse ---------------------------------------------------------------------------------


def run_browse(args) -> int:
    from cloudfs.browse import mount
    from cloudfs.malloc import keep_freed_memory
    from cloudfs.repo import Repository

    if args.memory_cache < 16 or args.disk_cache < 0 or args.refresh <= 0:
        raise UsageError("--memory-cache must be at least 16, --disk-cache at least 0, --refresh positive")
    settings = mount.BrowseSettings(memory_cache_bytes=args.memory_cache << 20,
                                    disk_cache_bytes=args.disk_cache << 20,
                                    refresh_seconds=args.refresh, allow_other=args.allow_other,
                                    default_permissions=args.default_permissions,
                                    snapshots=snapshot_filter(args))
    plan = mount.plan(args.mountpoint, settings)
    if not args.repo:
        raise UsageError("no repository given: use --repo or set CLOUDFS_REPO")
    passphrase = read_passphrase(args)       # here, before a --daemon fork
    keep_freed_memory()

    async def open_repo():
        store = open_store_from(args)
        repo = await Repository.open(store, passphrase, cache_root=args.cache_dir, use_cache=not args.no_cache)
        return await use_targets(args, repo, store, as_writer)

    return mount.run(plan, open_repo, args.daemon)


# -- restore --------------------------------------------------------------------------------


def run_restore(args) -> int:
    from cloudfs.browse.names import Catalog
    from cloudfs.malloc import keep_freed_memory
    from cloudfs.repo.indexload import progress_bar
    from cloudfs.restore import RestoreOptions, restore, split_argument

    name, path = split_argument(args.what)
    if not name:
        raise UsageError("no snapshot given: SNAPSHOT[:PATH], e.g. latest or latest:docs/report.odt")
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    keep_freed_memory()
    options = RestoreOptions(overwrite=args.overwrite, resume=args.resume, verify=args.verify,
                             dry_run=args.dry_run, jobs=args.jobs)
    bar = progress_bar(args.progress and sys.stderr.isatty() and not args.dry_run, unit="B", unit_scale=True,
                       unit_divisor=1024, desc="restoring", file=sys.stderr)

    def set_total(total: int) -> None:
        bar.total = total
        bar.refresh()

    async def run(repo):
        snapshot = Catalog(snapshot_filter(args).chosen(await repo.snapshots())).resolve(name)
        report = await restore(repo, snapshot, path, args.target, options, bar.update, set_total)
        return snapshot, report

    try:
        snapshot, report = with_repository(args, run)
    finally:
        bar.close()
    if args.json:
        print_json(_report_json(snapshot, path, args, report))
    if args.dry_run:
        if not args.json:
            _print_plan(snapshot, path, args.target, report)
        if report.damaged:
            raise DamagedFiles(f"{len(report.damaged)} of the directories cannot be read (listed above); "
                               "a restore would leave out what is in them")
        return 0
    if not args.json:
        _print_report(snapshot, path, args.target, report)
    if report.damaged:
        raise DamagedFiles(f"{len(report.damaged)} of the paths could not be restored (damaged data, "
                           "listed above); everything else was restored")
    return 0


def _report_json(snapshot, path: bytes, args, report) -> dict:
    document = {"snapshot": snapshot.name, "path": "/" + os.fsdecode(path), "target": args.target,
                "dry_run": args.dry_run, "files": report.files, "directories": report.directories,
                "symlinks": report.symlinks, "hard_links": report.hard_links, "other": report.other,
                "bytes": report.bytes_written, "warnings": report.warnings,
                "damaged": [{"path": shown, "error": why} for shown, why in report.damaged]}
    if args.dry_run:
        estimate = None
        if report.sample:
            sampled, seconds = report.sample
            rate = sampled / max(seconds, 1e-6)
            estimate = {"sampled_bytes": sampled, "sample_seconds": seconds, "bytes_per_second": rate,
                        "seconds": report.bytes_written / rate}
        document["estimate"] = estimate
    else:
        document.update(bytes_kept=report.bytes_kept, seconds=report.seconds)
    return document


def _print_plan(snapshot, path: bytes, target: str, report) -> None:
    what = snapshot.name + (f":/{os.fsdecode(path)}" if path else "")
    links = f", {report.hard_links} hard links" if report.hard_links else ""
    other = f", {report.other} other" if report.other else ""
    print(f"would restore {what} to {target}: {report.files} files, {report.directories} directories, "
          f"{report.symlinks} symlinks{links}{other}, {report.bytes_written / 2**20:.1f} MiB of file "
          f"data (nothing written: --dry-run)")
    if report.sample:
        sampled, seconds = report.sample
        rate = sampled / max(seconds, 1e-6)
        estimate = report.bytes_written / rate
        print(f"fetching and verifying it takes about {estimate:.{1 if estimate < 10 else 0}f} s at "
              f"{human_size(rate)}/s (measured on {human_size(sampled)} just now); "
              "writing it to disk comes on top")
    for warning in report.warnings:
        print(f"warning: {warning}")
    for shown, why in report.damaged:
        print(f"damaged: {shown}: {why}")


def _print_report(snapshot, path: bytes, target: str, report) -> None:
    for warning in report.warnings:
        print(f"warning: {warning}")
    for shown, why in report.damaged:
        print(f"damaged: {shown}: {why}")
    what = snapshot.name + (f":/{os.fsdecode(path)}" if path else "")
    links = f", {report.hard_links} hard links" if report.hard_links else ""
    kept = f" ({report.bytes_kept / 2**20:.1f} MiB already there)" if report.bytes_kept else ""
    rate = report.bytes_written / max(report.seconds, 1e-6) / 2**20
    print(f"restored {what} to {target}: {report.files} files, {report.directories} directories, "
          f"{report.symlinks} symlinks{links}, {report.bytes_written / 2**20:.1f} MiB written{kept} "
          f"in {report.seconds:.1f} s ({rate:.0f} MiB/s)")
