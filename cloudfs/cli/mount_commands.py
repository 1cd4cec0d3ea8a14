"""`cloudfs mount`, `cloudfs umount` and `cloudfs changes`: parse, call cloudfs.live, report."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from cloudfs.live.view import DATA, display_path


def register(subparsers) -> None:
    mount = subparsers.add_parser(
        "mount", help="mount a protected directory and journal every change",
        description="Serve SOURCE through a FUSE mount that journals every change, so "
                    "that nothing is missed by the backup. Without MOUNTPOINT the mount "
                    "covers SOURCE itself and applications keep their paths.")
    mount.add_argument("source", metavar="SOURCE", help="the directory to protect")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?",
                       help="where to mount (default: over SOURCE itself)")
    _state_dir_option(mount)
    mount.add_argument("--daemon", action="store_true",
                       help="run in the background once mounted (logs to STATE_DIR/mount.log)")
    mount.add_argument("--no-journal", dest="journaling", action="store_false",
                       help="plain passthrough without journaling (to measure what it costs; "
                            "the next journaled mount finds the changes by rescanning)")
    mount.add_argument("--allow-other", action="store_true", default=None,
                       help="let other users use the mount (the default when run as root)")
    mount.set_defaults(run=_mount)

    umount = subparsers.add_parser(
        "umount", help="unmount a live mount and wait for a clean stop",
        description="Unmount a cloudfs mount and wait until its daemon has recorded a clean stop.")
    umount.add_argument("path", metavar="PATH", help="the mount point")
    umount.add_argument("-z", "--lazy", action="store_true",
                        help="detach now even if files are open; the daemon stops when they are closed")
    umount.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for the daemon to stop (default 120)")
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
    from cloudfs.live import mount

    plan = mount.plan(args.source, args.mountpoint, args.state_dir,
                      journaling=args.journaling, allow_other=args.allow_other)
    return mount.run(plan, args.daemon)


def _umount(args) -> int:
    from cloudfs.live import mount

    mount.unmount(args.path, lazy=args.lazy, timeout=args.timeout)
    return 0


def _changes(args) -> int:
    from cloudfs.live.report import pending_changes
    from cloudfs.live.state import default_state_dir

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
