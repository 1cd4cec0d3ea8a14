"""`cloudfs status|snapshot|flush|rescan|alerts`: ask a running mount's daemon over its control socket.

Each takes an optional MOUNT (the mount point, the protected directory, or the
NAME of a [directories.NAME] of the configuration file); without it, the mount
containing the current directory, or the only one. `cloudfs alerts` also works
on a protected directory that is not mounted: the alerts are in its state
directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone

from cloudfs import control
from cloudfs.cli import configured
from cloudfs.cli.common import human_duration, human_size, print_json
from cloudfs.errors import CloudfsError, UsageError

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

    alerts = subparsers.add_parser(
        "alerts", help="the ransomware tripwire's alerts: list, acknowledge",
        description="When the live mount sees a burst that looks like mass encryption it pins the "
                    "snapshot before it and raises an alert, shown by `cloudfs status` until "
                    "acknowledged (docs/operations.md, \"Ransomware tripwire\").")
    actions = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    for action, text in (("list", "every alert, open and acknowledged"),
                         ("ack", "acknowledge the open alerts (exit 1 if there is none)")):
        parser = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        parser.add_argument("mount", nargs="?", metavar="MOUNT",
                            help=MOUNT_HELP + " (a protected directory need not be mounted)")
        configured.config_option(parser)
        parser.add_argument("--state-dir", metavar="DIR", help="the protected directory's state directory")
        if action == "ack":
            parser.add_argument("--id", metavar="ID", help="only this alert")
        parser.add_argument("--json", action="store_true")
        parser.set_defaults(run=run_alerts_list if action == "list" else run_alerts_ack)


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


def run_alerts_list(args) -> int:
    def in_file(state_dir):
        from cloudfs.alerts import alerts_in

        return alerts_in(state_dir)

    alerts = _alerts_request(args, False, in_file)
    if args.json:
        print_json({"alerts": alerts})
        return 0
    now = time.time_ns()
    for alert in alerts:
        print(alert_line(alert, now))
    if not alerts:
        print("no tripwire alert")
    return 0


def run_alerts_ack(args) -> int:
    def in_file(state_dir):
        from cloudfs.alerts import acknowledge_in

        return acknowledge_in(state_dir, args.id)

    acknowledged = _alerts_request(args, True, in_file)
    if not acknowledged:
        raise CloudfsError(f"no open tripwire alert {args.id}" if args.id
                           else "no open tripwire alert to acknowledge")
    if args.json:
        print_json({"acknowledged": acknowledged})
        return 0
    for alert in acknowledged:
        print("acknowledged " + alert_line(alert, time.time_ns()))
    return 0


def _alerts_request(args, ack: bool, in_file: Callable) -> list[dict]:
    """Ask the running mount (its alerts are live), or read the state directory's file."""
    from pathlib import Path

    from cloudfs.control import DaemonUnreachable

    state_dir = Path(args.state_dir) if args.state_dir else None
    if state_dir is None:
        try:
            state_dir = control.find_state_dir(_target(args))
        except UsageError:
            if args.mount is None:
                raise
            from cloudfs.system.statedir import default_state_dir

            state_dir = default_state_dir(Path(_target(args)))
    try:
        reply = control.request(state_dir, "alerts", ack=ack, **({"id": args.id} if ack else {}))
    except DaemonUnreachable:
        if not state_dir.is_dir():
            raise UsageError(f"no state directory at {state_dir}: name the protected directory or "
                             "--state-dir") from None
        return in_file(state_dir)
    return reply["acknowledged" if ack else "alerts"]


def alert_line(alert: dict, now_ns: int) -> str:
    """One line: what the tripwire saw, when, and which snapshot it pinned."""
    from cloudfs.alerts import Alert

    burst = alert["burst"]
    if alert["pin_state"] == "pinned":
        pinned = f"pinned {alert['snapshot']}"
    elif alert["pin_state"] == "pending":
        pinned = "pinning the snapshot before it (waits for the store)"
    else:
        pinned = f"nothing pinned: {alert['pin_state']}"
    if alert.get("locks"):
        pinned += f" (Object Lock: {alert['locks']})"
    acknowledged = f"; acknowledged {_ago(alert['acknowledged_ns'], now_ns)}" if alert.get("acknowledged_ns") else ""
    return (f"{Alert.from_dict(alert).describe()} since {_when(burst['started_ns'], now_ns)}; "
            f"{pinned}{acknowledged}")


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
    lines.extend(_tripwire_lines(status, now_ns))
    if "last_drill" in status:
        lines.extend(_drill_lines(status["last_drill"], now_ns))
    return "\n".join(lines)


def _tripwire_lines(status: dict, now_ns: int) -> list[str]:
    lines = [f"ALERT          {alert_line(alert, now_ns)}; `cloudfs alerts ack` once handled"
             for alert in status.get("alerts") or []]
    tripwire = status.get("tripwire")
    if tripwire:
        lines.append(f"tripwire       on: {tripwire['files']} files within {human_duration(tripwire['window'])}")
    elif "tripwire" in status:
        lines.append("tripwire       off")
    return lines


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
