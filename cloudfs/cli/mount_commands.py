"""`cloudfs mount`, `cloudfs umount` and `cloudfs changes`: parse, call cloudfs.live, report.

With --repo (or a configuration file naming a repository) the mount also takes
encrypted snapshots into that repository; the repository is opened, and the
passphrase read, before mounting, so that any error is one line at the prompt.
`cloudfs mount NAME` and `--all` take everything from the configuration file
(docs/configuration.md); options on the command line win over it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cloudfs.cli import configured
from cloudfs.cli.common import as_writer, checked_compression, open_store_from, repository_options, target_store
from cloudfs.cli.configured import address, duration, duration_or_off, size
from cloudfs.errors import StoreUnavailable, UsageError

DEFAULT_INTERVAL = 300.0
DEFAULT_SPOOL = 1 << 30


def register(subparsers) -> None:
    mount = subparsers.add_parser(
        "mount", help="mount a protected directory and journal every change",
        parents=[repository_options()],
        description="Serve SOURCE through a FUSE mount that journals every change, so "
                    "that nothing is missed by the backup. Without MOUNTPOINT the mount "
                    "covers SOURCE itself and applications keep their paths. With --repo "
                    "it takes encrypted, incremental snapshots into that repository: the "
                    "first one of all of SOURCE, then every --interval seconds, on "
                    "`cloudfs snapshot`, and before unmounting.")
    mount.add_argument("source", metavar="SOURCE|NAME", nargs="?",
                       help="the directory to protect, or the NAME of a [directories.NAME] entry "
                            "of the configuration file")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?",
                       help="where to mount (default: the entry's mountpoint, else over SOURCE itself)")
    mount.add_argument("--all", action="store_true",
                       help="mount every directory of the configuration file, each in the background "
                            "as with --daemon, with the file's settings only")
    configured.config_option(mount)
    _state_dir_option(mount)
    mount.add_argument("--daemon", action="store_true",
                       help="run in the background once mounted (logs to STATE_DIR/mount.log)")
    mount.add_argument("--no-journal", dest="journaling", action="store_false",
                       help="plain passthrough without journaling (to measure what it costs; "
                            "the next journaled mount finds the changes by rescanning)")
    mount.add_argument("--allow-other", action="store_true", default=None,
                       help="let other users use the mount (the default when run as root)")
    mount.add_argument("--metrics", type=address, metavar="ADDR",
                       help="serve Prometheus metrics at http://ADDR/metrics (HOST:PORT; :PORT "
                            "listens on loopback, e.g. :9477)")
    mount.add_argument("--rescan-interval", type=duration_or_off, metavar="SECONDS",
                       help="look for changes made to SOURCE behind the mount's back this often, "
                            "at low priority (default 24h; off: only on `cloudfs rescan`)")
    snapshots = mount.add_argument_group("snapshots (with --repo)")
    snapshots.add_argument("--interval", type=duration, metavar="SECONDS",
                           help="seal a snapshot this often if anything changed (default 300; "
                                "suffixes s, m, h)")
    snapshots.add_argument("--spool-size", type=size, metavar="SIZE",
                           help="room for copy-on-write while a snapshot uploads (default 1G); "
                                "if it fills, that snapshot is retried from a new seal")
    snapshots.add_argument("--compression", type=checked_compression, metavar="METHOD",
                           help="zstd, zstd:LEVEL (-7 fastest to 22 smallest) or none, for what this "
                                "mount uploads (default: the repository's, zstd:1)")
    snapshots.add_argument("--bandwidth-limit", type=size, metavar="BYTES_PER_S",
                           help="upload at most this many bytes per second (suffixes K, M, G)")
    snapshots.add_argument("--exclude", action="append", metavar="PATTERN",
                           help="leave out of snapshots: a name pattern (*.tmp) anywhere, or a "
                                "path pattern relative to SOURCE (build/*); repeatable")
    snapshots.add_argument("--required-targets", type=int, metavar="K",
                           help="with several targets (`cloudfs targets`), a snapshot is committed once "
                                "K of them hold all of it (default: all)")
    snapshots.add_argument("--snapshot-timeout", type=duration, metavar="SECONDS",
                           help="how long the final snapshot may take when a signal (SIGTERM, "
                                "SIGINT, SIGHUP) stops the mount, before it unmounts anyway "
                                "(default 30); what it misses stays in the journal")
    tripwire = mount.add_argument_group(
        "ransomware tripwire (docs/operations.md): fires when FILES existing files are rewritten "
        "with high-entropy data, or renamed to one new extension, within WINDOW")
    tripwire.add_argument("--no-tripwire", dest="tripwire", action="store_false", default=None,
                          help="do not watch for mass encryption")
    tripwire.add_argument("--tripwire-files", type=int, metavar="FILES",
                          help="how many files make a burst (default 100)")
    tripwire.add_argument("--tripwire-window", type=duration, metavar="WINDOW",
                          help="within how long (default 60s)")
    tripwire.add_argument("--tripwire-entropy", type=float, metavar="BITS",
                          help="bits per byte (8 is random) from which a write looks encrypted (default 7.5)")
    mount.set_defaults(run=_mount)

    umount = subparsers.add_parser(
        "umount", help="unmount a live mount and wait for a clean stop",
        description="Unmount a cloudfs mount and wait until its daemon has recorded a clean stop.")
    umount.add_argument("path", metavar="PATH", help="the mount point")
    umount.add_argument("-z", "--lazy", action="store_true",
                        help="detach now even if files are open; the daemon stops when they are closed")
    umount.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for the daemon to stop (default 120)")
    umount.add_argument("--snapshot-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long the final snapshot of what is pending may take before "
                             "unmounting anyway (default 60; 0: none). Changes it misses stay in "
                             "the journal and the next mount commits them")
    umount.set_defaults(run=_umount)

    changes = subparsers.add_parser(
        "changes", help="list what changed in a protected directory since the baseline",
        description="List the changes not yet in a committed snapshot, like `git status`: "
                    "added, removed, whole (re-read), data (changed byte ranges), meta.")
    changes.add_argument("source", metavar="SOURCE", help="the protected directory")
    _state_dir_option(changes)
    changes.add_argument("--json", action="store_true", help="machine-readable output")
    changes.add_argument("--journal-only", action="store_true",
                         help="only what the journal recorded: skip looking for changes "
                              "made while unmounted")
    changes.set_defaults(run=_changes)


def _state_dir_option(parser) -> None:
    parser.add_argument("--state-dir", metavar="DIR",
                        help="journal and state (default $XDG_STATE_HOME/cloudfs/<hash of SOURCE>)")


def _mount(args) -> int:
    if args.all:
        return _mount_all(args)
    from cloudfs import mountproc
    from cloudfs.live import mount
    from cloudfs.malloc import few_arenas

    few_arenas()   # before any thread starts

    _configure(args)
    plan = mount.plan(args.source, args.mountpoint, args.state_dir,
                      journaling=args.journaling, allow_other=args.allow_other,
                      rescan_interval=_rescan_interval(args), tripwire=_tripwire(args))
    backup = _backup_settings(args, plan.state.path) if args.repo else None
    return mountproc.run(plan, args.daemon, backup, metrics=args.metrics)


def _configure(args) -> None:
    """Fill what the command line left unset from the configuration file: the entry
    named by NAME, else the entry protecting SOURCE, else the file's defaults."""
    config = configured.load_config(args, required=args.config is not None)
    if config is None:
        if args.source is None:
            raise UsageError("name a SOURCE directory, an entry of the configuration file, or --all")
        return
    if args.source is None:
        raise UsageError(f"name a SOURCE directory or one of {config.path}'s directories "
                         f"({', '.join(config.directories) or 'none'}), or --all")
    if configured.names_an_entry(config, args.source):
        entry = config.entry(args.source)
    else:
        entry = config.protecting(args.source)
    if entry is None:
        configured.apply(args, config.defaults)
        return
    args.source = entry.source
    args.mountpoint = args.mountpoint or entry.settings.get("mountpoint")
    configured.apply(args, entry.settings)


def _mount_all(args) -> int:
    """Each directory of the configuration file in its own background mount process
    (`cloudfs mount NAME --daemon`), one after the other; 1 if any failed."""
    if args.source or args.mountpoint:
        raise UsageError("--all mounts the directories of the configuration file: name none")
    config = configured.load_config(args)
    if not config.directories:
        raise UsageError(f"{config.path} has no [directories.NAME]")
    failed = 0
    for name, entry in config.directories.items():
        command = [sys.executable, "-m", "cloudfs", *_global_options(args),
                   "mount", name, "--config", str(config.path), "--daemon"]
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in (result.stdout + result.stderr).splitlines():
            print(line.replace("cloudfs: ", f"cloudfs: {name}: ", 1), file=sys.stderr)
        if result.returncode:
            failed += 1
        else:
            print(f"{name}: {entry.source} mounted on {entry.mountpoint}")
    return 1 if failed else 0


def _global_options(args) -> list[str]:
    return [*["-v"] * args.verbose, "--log-format", args.log_format]


def _rescan_interval(args) -> float | None:
    from cloudfs.live.rescan import DEFAULT_INTERVAL
    from cloudfs.settings import OFF

    if args.rescan_interval is None:
        return DEFAULT_INTERVAL
    return None if args.rescan_interval == OFF else args.rescan_interval


def _tripwire(args):
    """The tripwire's thresholds from the options and the file, or None if it is off."""
    from cloudfs.live.tripwire import Thresholds

    if args.tripwire is False:
        return None
    default = Thresholds()
    files, window, entropy = (default_value if given is None else given for given, default_value in (
        (args.tripwire_files, default.files), (args.tripwire_window, default.window),
        (args.tripwire_entropy, default.entropy)))
    if files < 2:
        raise UsageError("tripwire_files must be at least 2")
    if window <= 0:
        raise UsageError("tripwire_window must be positive")
    if not 0 < entropy <= 8:
        raise UsageError("tripwire_entropy must be between 0 and 8 bits per byte")
    return Thresholds(files, window, entropy)


def _backup_settings(args, state_dir: Path):
    """Open the repository now (passphrase, network): its errors are one line here.
    If the store cannot be reached, the copies the last mount saved will do."""
    import trio

    from cloudfs.cli.common import read_passphrase
    from cloudfs.daemon import FINAL_TIMEOUT, BackupSettings
    from cloudfs.repo.access import open_for_mount
    from cloudfs.snapshot.source import exclusion_matcher

    if not args.journaling:
        raise UsageError("--repo needs the journal: it cannot be combined with --no-journal")
    exclude = args.exclude or []
    exclusion_matcher(exclude)
    store, passphrase = open_store_from(args), read_passphrase(args)

    async def open_repository():
        repo, unreachable = await open_for_mount(store, passphrase, state_dir, args.repo,
                                                 cache_root=args.cache_dir, use_cache=not args.no_cache)
        try:
            return repo, unreachable, await repo.targets()
        except StoreUnavailable:     # offline, and no target records cached: the daemon reads them later
            return repo, unreachable, []

    repo, unreachable, targets = trio.run(open_repository)
    repo.index.release()   # the mount may fork (--daemon): no SQLite connection may cross it
    required = _required_targets(args.required_targets, len(targets))
    if unreachable:
        print(f"cloudfs: warning: {unreachable}; mounting with the repository details the last "
              "mount saved; snapshots upload once the store answers", file=sys.stderr)

    def reopen_store():
        store = open_store_from(args)
        if args.bandwidth_limit:
            from cloudfs.store.throttle import ThrottledStore

            store = ThrottledStore(store, args.bandwidth_limit)
        return store

    return BackupSettings(repo=repo, location=args.repo, reopen_store=reopen_store,
                          interval=args.interval or DEFAULT_INTERVAL,
                          spool_limit=args.spool_size or DEFAULT_SPOOL, exclude=exclude,
                          compression=args.compression, unreachable=unreachable,
                          final_timeout=args.snapshot_timeout or FINAL_TIMEOUT,
                          show_progress=not args.daemon and sys.stderr.isatty(),
                          targets=targets, required_targets=required,
                          target_store=lambda record: as_writer(target_store(args, record)))


def _required_targets(asked: int | None, count: int) -> int | None:
    """K, the targets that must hold a snapshot before it counts as committed (None: all)."""
    if asked is None:
        return None
    if asked < 1:
        raise UsageError("--required-targets must be at least 1")
    if asked > max(count, 1):
        raise UsageError(f"--required-targets {asked} is more than the repository's {max(count, 1)} "
                         "target(s): a snapshot could never be committed (`cloudfs targets list`)")
    return asked


def _umount(args) -> int:
    from cloudfs import mountproc

    final = mountproc.unmount(args.path, lazy=args.lazy, timeout=args.timeout,
                              snapshot_timeout=args.snapshot_timeout)
    if final is not None and final.get("repository", True) is not None and not final.get("committed"):
        print("cloudfs: warning: the final snapshot did not complete; the changes stay in the "
              "journal and the next mount commits them", file=sys.stderr)
    return 0


def _changes(args) -> int:
    from cloudfs.live.report import pending_changes
    from cloudfs.live.view import DATA, display_path
    from cloudfs.system.statedir import default_state_dir

    source = Path(os.path.realpath(args.source))
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(source)
    report = pending_changes(source, state_dir, journal_only=args.journal_only)
    if args.json:
        document = {
            "source": str(report.source),
            "state_dir": str(report.state_dir),
            "mounted": report.mounted,
            "clean_stop": report.clean_stop,
            "reconciled": report.reconciled,
            "epochs": report.epochs,
            "changes": [{"path": os.fsdecode(change.path), "kind": change.kind,
                         **({"ranges": [list(r) for r in change.ranges]} if change.kind == DATA else {})}
                        for change in report.changes],
        }
        json.dump(document, sys.stdout, indent=1)
        print()
        return 0
    for change in report.changes:
        detail = ""
        if change.kind == DATA:
            size = sum(end - start for start, end in change.ranges)
            detail = f"  ({len(change.ranges)} range{'s' * (len(change.ranges) != 1)}, {size} bytes)"
        print(f"{change.kind:<8} {display_path(change.path)}{detail}")
    if not report.changes:
        print("no changes since the baseline")
    return 0
