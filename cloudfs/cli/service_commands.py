"""`cloudfs service install NAME` (systemd units) and `cloudfs maintenance NAME` (what their timer runs)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from cloudfs.cli import configured
from cloudfs.cli.common import print_json, repository_options
from cloudfs.cli.prune_commands import grace_period, print_report, prune_repository, report_json, unused_share
from cloudfs.cli.repo_commands import check_json, check_report, checked_ok, print_check
from cloudfs.cli.retention_commands import forget_by_policy


def register(subparsers) -> None:
    service = subparsers.add_parser("service", help="run protected directories as systemd services")
    actions = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    install = actions.add_parser(
        "install", help="write and enable the systemd units of one configured directory",
        description="Write cloudfs@.service (Type=notify: ready once the mount answers), "
                    "cloudfs-maintenance@.service and its weekly timer, plus a drop-in for "
                    "cloudfs@NAME (the mounts it needs first, the units it comes before), and "
                    "enable cloudfs@NAME and its timer. Start it with systemctl start cloudfs@NAME.")
    install.add_argument("name", metavar="NAME", help="a [directories.NAME] of the configuration file")
    configured.config_option(install)
    install.add_argument("--unit-dir", type=Path, metavar="DIR",
                         help="where to write the units (default /etc/systemd/system, or "
                              "~/.config/systemd/user with --user)")
    install.add_argument("--user", action="store_true",
                         help="units of this user's service manager (systemctl --user)")
    install.add_argument("--before", action="append", default=[], metavar="UNIT",
                         help="a unit that uses the directory: the mount comes up before it and "
                              "goes down after it (repeatable)")
    install.add_argument("--no-enable", dest="enable", action="store_false",
                         help="write the units without enabling them")
    install.set_defaults(run=run_install)

    maintenance = subparsers.add_parser(
        "maintenance", parents=[repository_options()],
        help="the upkeep of a configured directory's repository (what the timer runs)",
        description="The upkeep of the repository of [directories.NAME]: forget the snapshots "
                    "its policy does not keep (cloudfs policy show), prune, then check. Run by "
                    "cloudfs-maintenance@NAME.timer, with the maintenance role's credentials.")
    maintenance.add_argument("name", metavar="NAME", help="a [directories.NAME] of the configuration file")
    configured.config_option(maintenance)
    maintenance.add_argument("--read-data", action="store_true",
                             help="also download and verify every chunk and every blob in it")
    maintenance.add_argument("--grace", type=grace_period, default=7 * 86400.0, metavar="DURATION",
                             help="prune's grace period (default 7d)")
    maintenance.add_argument("--max-unused", type=unused_share, default=0.10, metavar="PERCENT",
                             help="prune's repacking threshold (default 10%%)")
    maintenance.add_argument("--json", action="store_true")
    maintenance.set_defaults(run=run_maintenance)


def run_install(args) -> int:
    from cloudfs.system import units

    config = configured.load_config(args)
    entry = config.entry(args.name)
    settings = units.UnitSettings(cloudfs=_cloudfs_command(), config=str(config.path.resolve()),
                                  user=args.user)
    unit_dir = args.unit_dir or units.default_unit_dir(args.user)
    drop_in = units.drop_in(_needs_mounted(entry.source, entry.mountpoint), args.before)
    written = units.install(unit_dir, args.name, settings, drop_in, enable=args.enable)
    for path in written:
        print(f"wrote {path}")
    reloaded = args.unit_dir is None and units.reload_manager(args.user)
    manager = "systemctl --user" if args.user else "systemctl"
    if args.unit_dir is None and not reloaded:
        print(f"systemd does not run here: {manager} daemon-reload once it does")
    print(f"start it now with: {manager} start cloudfs@{args.name}.service")
    return 0


def _cloudfs_command() -> str:
    """The absolute path of this cloudfs: the script beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "cloudfs"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("cloudfs")
    if found is None:
        return f"{sys.executable} -m cloudfs"
    return os.path.abspath(found)


def _needs_mounted(source: str, mountpoint: str) -> list[str]:
    """What systemd must have mounted before the mount starts: the directories
    holding SOURCE and MOUNTPOINT, and SOURCE itself where another filesystem (a
    disk) is mounted there; never a path where only cloudfs mounts, whose mount
    unit systemd cannot start."""
    from cloudfs.system import mounttable

    needed = {os.path.dirname(path.rstrip("/")) or "/" for path in (source, mountpoint)}
    if any(entry.mountpoint == source and entry.fstype != mounttable.FSTYPE for entry in mounttable.mounts()):
        needed.add(source)
    return sorted(needed)


def run_maintenance(args) -> int:
    """forget (the repository's policy), prune, check: in that order, so that
    what forget let go is marked by this prune and deleted by the next."""
    config = configured.load_config(args)
    configured.apply(args, config.entry(args.name).settings)
    removed = forget_by_policy(args)
    pruned = prune_repository(args, False, args.grace, args.max_unused)
    checked = check_report(args)
    if args.json:
        print_json({"forgot": [snapshot.name for snapshot in removed], "prune": report_json(pruned),
                    "check": check_json(args, checked)})
        return 0 if checked_ok(checked) else 1
    print(f"forgot {len(removed)} snapshots (the repository's policy)")
    print_report(pruned)
    print_check(args, checked)
    return 0 if checked_ok(checked) else 1
