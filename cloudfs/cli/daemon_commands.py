"""`cloudfs status|snapshot|flush|rescan`: ask a running mount's daemon over its control socket.

Each takes an optional MOUNT (the mount point, the protected directory, or the
NAME of a [directories.NAME] of the configuration file); without it, the mount
containing the current directory, or the only one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone

from cloudfs import control
from cloudfs.cli import configured
from cloudfs.cli.common import human_duration, human_size, print_json

MOUNT_HELP = "mount point, protected directory, or NAME of the configuration file"


def register(subparsers) -> None:
    status = subparsers.add_parser("status", help="what a running mount is doing",
                                   description="Pending changes, the age of the oldest change not yet "
                                               "in a snapshot (the live RPO), uploads, store health.")
    status.add_argument("mount", nargs="?", metavar="MOUNT", help=MOUNT_HELP)
    configured.config_option(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=run_status)

    snapshot = subparsers.add_parser("snapshot", help="take a snapshot now",
                                     description="Seal the current changes into a snapshot now.")
    snapshot.add_argument("mount", nargs="?", metavar="MOUNT", help=MOUNT_HELP)
    configured.config_option(snapshot)
    snapshot.add_argument("--wait", action="store_true", help="return once it is committed")
    snapshot.add_argument("--tag", action="append", default=[], metavar="TAG",
                          help="tag the snapshot (repeatable); `forget --keep-tag` keeps tagged ones")
    snapshot.add_argument("--json", action="store_true")
    snapshot.set_defaults(run=run_snapshot)

    flush = subparsers.add_parser("flush", help="wait until everything sealed is committed",
                                  description="Return once every sealed change is in a committed snapshot.")
    flush.add_argument("mount", nargs="?", metavar="MOUNT", help=MOUNT_HELP)
    configured.config_option(flush)
    flush.add_argument("--json", action="store_true")
    flush.set_defaults(run=run_flush)

    rescan = subparsers.add_parser(
        "rescan", help="look for changes made behind the mount's back, now",
        description="Scan the protected directory for changes that did not go through the "
                    "mount (made to SOURCE directly while it is mounted elsewhere) and journal "
                    "them, so the next snapshot has them. The mount does this by itself every "
                    "--rescan-interval.")
    rescan.add_argument("mount", nargs="?", metavar="MOUNT", help=MOUNT_HELP)
    configured.config_option(rescan)
    rescan.add_argument("--json", action="store_true")
    rescan.set_defaults(run=run_rescan)


def run_status(args) -> int:
    return _ask(args, "status", lambda reply: format_status(reply, time.time_ns()), timeout=30.0)


def run_snapshot(args) -> int:
    # The daemon checks the tags (and answers one line if one is wrong): importing the
    # repository's code here would cost this command most of its start-up time.
    return _ask(args, "snapshot", _said_snapshot, wait=args.wait, queue=True, tags=list(args.tag or []))


def _said_snapshot(reply: dict) -> str:
    if reply.get("snapshot"):
        return f"committed {reply['snapshot']}"
    if reply.get("queued"):
        return "a snapshot is uploading; a new one will be sealed as soon as it is committed (cloudfs status)"
    return f"sealed epoch {reply.get('epoch')}; it uploads in the background (cloudfs status)"


def run_flush(args) -> int:
    return _ask(args, "flush", lambda reply: "everything sealed is committed "
                f"(last snapshot {reply.get('snapshot') or 'none'})")


def run_rescan(args) -> int:
    return _ask(args, "rescan", lambda reply: f"scanned {reply['entries']} entries in {reply['seconds']:.1f} s: "
                f"{reply['changed_inodes']} changed outside the mount")


def _ask(args, op: str, said: Callable[[dict], str], timeout: float | None = None, **arguments) -> int:
    """Send `op` to the mount's daemon and print its answer (as JSON with --json)."""
    reply = control.request(control.find_state_dir(_target(args)), op, timeout=timeout, **arguments)
    if args.json:
        print_json(reply)
    else:
        print(said(reply))
    return 0


def _target(args) -> str | None:
    """MOUNT as given, or, if it is the NAME of a [directories.NAME] (a name without
    a `/`, as for `cloudfs mount NAME`), that entry's mount point."""
    if args.mount is None or os.sep in args.mount:
        return args.mount
    config = configured.load_config(args, required=args.config is not None)
    if configured.names_an_entry(config, args.mount):
        return config.entry(args.mount).mountpoint
    return args.mount


def format_status(status: dict, now_ns: int) -> str:
    upload = status.get("upload", {})
    lines = [f"{status.get('source')} mounted on {status.get('mountpoint')}",
             f"repository     {status.get('repository') or 'none (journal only)'}"]
    if upload.get("last_snapshot"):
        lines.append(f"last snapshot  {_when(upload['last_snapshot_time_ns'], now_ns)}  "
                     f"{upload['last_snapshot']}")
    else:
        lines.append("last snapshot  none yet")
    oldest = status.get("oldest_change_ns")
    rpo = f", oldest change {_ago(oldest, now_ns)} (RPO)" if oldest else ""
    lines.append(f"pending        {status.get('pending_files', 0)} files, "
                 f"{human_size(status.get('pending_bytes', 0))}{rpo}")
    lines.append(f"RPO            {human_duration((now_ns - oldest) / 1e9) if oldest else '0 s'}: what a loss now "
                 "would lose (changes not yet in a committed snapshot)")
    if upload.get("uploading"):
        lines.append(f"upload         snapshot in progress since {_ago(upload['uploading_since_ns'], now_ns)}, "
                     f"{human_size(upload.get('current_bytes_read', 0))} read")
    else:
        lines.append(f"upload         idle; {human_size(upload.get('bytes_stored', 0))} stored this session, "
                     f"last at {human_size(upload.get('upload_rate', 0))}/s")
    if upload.get("store_ok", True):
        lines.append("store          ok")
    else:
        lines.append(f"store          unreachable since {_ago(upload.get('store_error_since_ns'), now_ns)}: "
                     f"{upload.get('store_error')}")
    lines.extend(_target_lines(status, now_ns))
    if "spool_bytes" in status:
        lines.append(f"spool          {human_size(status['spool_bytes'])} of {human_size(status.get('spool_limit', 0))}")
    if status.get("next_snapshot_ns"):
        lines.append(f"next snapshot  in {human_duration((status['next_snapshot_ns'] - now_ns) / 1e9)}")
    lines.extend(_rescan_lines(status.get("rescan"), now_ns))
    if "last_drill" in status:
        lines.extend(_drill_lines(status["last_drill"], now_ns))
    return "\n".join(lines)


def _target_lines(status: dict, now_ns: int) -> list[str]:
    """One line per target: its state, backlog and lag; and what a snapshot waits for."""
    targets = status.get("targets")
    if not targets:
        return []
    lines = [f"targets        a snapshot is committed once {status.get('required_targets')} of "
             f"{len(targets)} hold it"]
    if status.get("waiting_for_targets"):
        lines.append(f"               {status['waiting_for_targets']} waits for them")
    for target in targets:
        line = f"  {target['name']:<12} {target['state']:<8}"
        if target["backlog_objects"]:
            line += (f" backlog {target['backlog_objects']} objects, {human_size(target['backlog_bytes'])}, "
                     f"{human_duration(target['lag_seconds'])} behind")
        if target.get("error"):
            line += f"; failing since {_ago(target.get('error_since_ns'), now_ns)}: {target['error']}"
        lines.append(line)
    return lines


def _rescan_lines(rescan: dict | None, now_ns: int) -> list[str]:
    if rescan is None:
        return []
    every = f"every {human_duration(rescan['interval'])}" if rescan.get("interval") else "only when asked"
    last = rescan.get("last")
    if last is None:
        return [f"rescan         {every}; none yet"]
    return [f"rescan         {every}; last {_ago(last['time_ns'], now_ns)}, "
            f"{last['changed_inodes']} changed outside the mount"]


def _drill_lines(drill: dict | None, now_ns: int) -> list[str]:
    """The last `cloudfs drill` run here: its age, and per target the projected RTO or why it failed."""
    if drill is None:
        return ["last drill     none yet (cloudfs drill)"]
    lines = [f"last drill     {_ago(drill['time_ns'], now_ns)}, "
             + ("every target restored its sample" if drill["ok"] else "FAILED")]
    for target in drill["targets"]:
        name = target["target"] or "repository"
        if target["ok"]:
            lines.append(f"  {name:<12} RTO {human_duration(target['rto_seconds'])} "
                         f"({human_size(target['throughput_bytes_per_second'])}/s, "
                         f"snapshot {target['snapshot']})")
        else:
            why = target["error"] or f"{len(target['damaged'])} files of the sample damaged"
            lines.append(f"  {name:<12} failed: {why}")
    return lines


def _when(time_ns: int, now_ns: int) -> str:
    stamp = datetime.fromtimestamp(time_ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({_ago(time_ns, now_ns)})"


def _ago(time_ns: int | None, now_ns: int) -> str:
    if not time_ns:
        return "-"
    return f"{human_duration((now_ns - time_ns) / 1e9)} ago"
