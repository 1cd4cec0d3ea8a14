"""`cloudfs forget`, `cloudfs policy show|set|reset`, `cloudfs pin` and `cloudfs unpin`.

forget, unpin and policy changes are maintenance work and open the store with
open_maintenance_repository; pin needs only a put, and `forget --dry-run` and
`policy show` only reads, which the writer role may do.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

from cloudfs.cli.common import (
    print_json,
    repository_options,
    snapshot_filter,
    snapshot_filter_options,
    with_repository,
)
from cloudfs.errors import UsageError
# The rules are pure (standard library only): the parser needs them for its options.
from cloudfs.snapshot.retention import COUNTED, LADDER, PERIODS, UNLIMITED, WINDOWED, Duration, Policy


def register(subparsers) -> None:
    repo, which, rules = repository_options(), snapshot_filter_options(), rule_options()

    forget_parser = subparsers.add_parser(
        "forget", parents=[repo, which, rules], help="delete the snapshots a retention policy does not keep",
        description="Apply keep rules to each group of snapshots (one protected directory on one "
                    "host) and delete the snapshot objects no rule keeps; pinned snapshots are "
                    "always kept. Without rules, the repository's policy applies (cloudfs policy "
                    "show). The data of deleted snapshots stays until a prune.")
    forget_parser.add_argument("--dry-run", action="store_true",
                               help="list every snapshot with keep/remove and the rules that keep it; "
                                    "delete nothing")
    forget_parser.add_argument("--allow-empty", action="store_true",
                               help="allow rules that keep no snapshot of a group")
    forget_parser.add_argument("--damaged", action="store_true",
                               help="also delete the snapshot objects that cannot be read (prune "
                                    "refuses to run while any exists; heal them from a replica or "
                                    "an older version instead if you can)")
    forget_parser.add_argument("--json", action="store_true")
    forget_parser.set_defaults(run=run_forget)

    policy = subparsers.add_parser("policy", help="the repository's retention policy",
                                   description="The keep rules `cloudfs forget` applies when given none.")
    actions = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", parents=[repo], help="show the policy")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=run_policy_show)
    change = actions.add_parser("set", parents=[repo, rules], help="store new keep rules as the policy")
    change.set_defaults(run=run_policy_set)
    reset = actions.add_parser("reset", parents=[repo], help="store the built-in ladder as the policy",
                               description=f"Store the built-in policy: {LADDER.describe()}.")
    reset.set_defaults(run=run_policy_reset)

    pin = subparsers.add_parser("pin", parents=[repo, which], help="keep a snapshot whatever the policy",
                                description="Pin SNAPSHOT (as `cloudfs restore` names it): forget keeps it "
                                            "until it is unpinned.")
    pin.add_argument("snapshot", metavar="SNAPSHOT")
    pin.add_argument("--note", default="", help="why (shown by `cloudfs snapshots --json`)")
    pin.set_defaults(run=run_pin)
    unpin = subparsers.add_parser("unpin", parents=[repo, which], help="let the policy decide again",
                                  description="Remove every pin of SNAPSHOT.")
    unpin.add_argument("snapshot", metavar="SNAPSHOT")
    unpin.set_defaults(run=run_unpin)


# -- the rules on the command line -------------------------------------------------------------


def rule_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("keep rules (a snapshot that any rule keeps is kept; as in restic)")
    group.add_argument("--keep-last", type=_count, metavar="N", help="the N newest snapshots")
    for period in PERIODS:
        group.add_argument(f"--keep-{period}", type=_count, metavar="N",
                           help=f"the newest snapshot of each of the N latest {_unit(period)}s that have "
                                "one (N may be `unlimited`)")
    group.add_argument("--keep-within", type=_duration, metavar="DURATION",
                       help="every snapshot newer than DURATION (12h, 3d, 2w, 6m, 1y) before the newest")
    for period in PERIODS:
        group.add_argument(f"--keep-within-{period}", type=_duration, metavar="DURATION",
                           help=f"the newest snapshot of each {_unit(period)} within DURATION of the newest")
    group.add_argument("--keep-tag", action="append", default=[], metavar="TAG",
                       help="every snapshot with this tag (repeatable)")
    return parser


def policy_from_args(args) -> Policy | None:
    """The policy the rule options give, or None if they give no rule."""
    from cloudfs.repo.snapshots import checked_tags

    counts = {rule: getattr(args, f"keep_{rule}") for rule in COUNTED}
    windows = {rule: getattr(args, "keep_within" if rule == "all" else f"keep_within_{rule}")
               for rule in WINDOWED}
    policy = Policy({r: n for r, n in counts.items() if n is not None},
                    {r: d for r, d in windows.items() if d is not None},
                    frozenset(checked_tags(args.keep_tag)))
    return None if policy.is_empty() else policy


def _count(text: str) -> int:
    if text.strip().lower() in ("unlimited", "-1"):
        return UNLIMITED
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of at least 1, or unlimited")
    return count


def _duration(text: str) -> Duration:
    try:
        return Duration.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _unit(period: str) -> str:
    return {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month", "yearly": "year"}[period]


# -- forget ----------------------------------------------------------------------------------


def run_forget(args) -> int:
    from cloudfs.snapshot.forget import (damaged_snapshots, drop_damaged, forget, plan_forget,
                                         refuse_empty_groups, repository_policy)

    given = policy_from_args(args)

    async def run(repo):
        policy, origin = (given, "the command line") if given else await repository_policy(repo)
        snapshots = snapshot_filter(args).chosen(await repo.snapshots())
        plans = plan_forget(policy, snapshots, time.time_ns(), frozenset(await repo.pinned()))
        damaged = damaged_snapshots(repo) if args.damaged else []
        if args.dry_run:
            return policy, origin, plans, None, damaged, repo.config.object_lock
        if not args.allow_empty:
            refuse_empty_groups(plans)
        result = await forget(repo, plans)
        if args.damaged:
            damaged = await drop_damaged(repo)
        return policy, origin, plans, result, damaged, repo.config.object_lock

    # A dry run deletes nothing, so the writer's access will do.
    policy, origin, plans, result, damaged, lock = with_repository(args, run, maintenance=not args.dry_run)
    _report_forget(args, policy, origin, plans, result, damaged)
    if result and result.removed and lock and not args.json:
        print(f"S3 Object Lock keeps the removed snapshot objects stored, hidden behind delete markers, "
              f"until their locks run out (at most {lock.days} days, {lock.mode} mode); --as-of still reads them")
    if args.dry_run and not args.allow_empty:
        refuse_empty_groups(plans)    # say that the real run would be refused
    return 0


def forget_by_policy(args):
    """Apply the repository's policy to every group (what `cloudfs maintenance` runs);
    returns the snapshots removed."""
    from cloudfs.snapshot.forget import forget, plan_forget, refuse_empty_groups, repository_policy

    async def run(repo):
        policy, _ = await repository_policy(repo)
        plans = plan_forget(policy, await repo.snapshots(), time.time_ns(), frozenset(await repo.pinned()))
        refuse_empty_groups(plans)
        return (await forget(repo, plans)).removed

    return with_repository(args, run, maintenance=True)


def _report_forget(args, policy: Policy, origin: str, plans, result, damaged: list[str]) -> None:
    if args.json:
        print_json({"policy": policy.describe(), "rules": policy.to_record(), "policy_from": origin,
                    "dry_run": args.dry_run, "groups": [_group_json(plan) for plan in plans],
                    "damaged": damaged,
                    "removed": [s.name for s in result.removed] if result else [],
                    "spared": [s.name for s in result.spared] if result else [],
                    "pins_removed": result.pins_removed if result else []})
        return
    print(f"policy: {policy.describe()} (from {origin})")
    for plan in plans:
        print(f"{plan.host}:{plan.source}: keep {len(plan.kept)}, remove {len(plan.removed)}")
        for decision in plan.decisions:
            action = "keep  " if decision.keep else "remove"
            print(f"  {action}  {_when(decision.snapshot)}  {_short_id(decision.snapshot)}  "
                  f"{', '.join(decision.reasons)}".rstrip())
    for name in damaged:
        print(f"{'would remove' if result is None else 'removed'} damaged {name}")
    if result is None:
        print("nothing deleted (--dry-run)")
        return
    for snapshot in result.spared:
        print(f"spared {snapshot.name}: it was pinned while forget ran")
    print(f"removed {len(result.removed)} snapshots (their data goes at the next prunes)")


def _group_json(plan) -> dict:
    return {"host": plan.host, "source": plan.source, "keep": len(plan.kept), "remove": len(plan.removed),
            "snapshots": [{"name": d.snapshot.name, "id": _short_id(d.snapshot),
                           "time": d.snapshot.time.isoformat(), "tags": list(d.snapshot.tags),
                           "action": "keep" if d.keep else "remove", "reasons": list(d.reasons)}
                          for d in plan.decisions]}


def _when(snapshot) -> str:
    return snapshot.time.strftime("%Y-%m-%d %H:%M:%S")


def _short_id(snapshot) -> str:
    return snapshot.name.rsplit("-", 1)[-1]


# -- policy ----------------------------------------------------------------------------------


def run_policy_show(args) -> int:
    from cloudfs.snapshot.forget import repository_policy

    async def run(repo):
        policy, origin = await repository_policy(repo)
        return policy, origin, await repo.current_policy()

    policy, origin, record = with_repository(args, run)
    if args.json:
        print_json({"policy": policy.describe(), "rules": policy.to_record(), "policy_from": origin,
                    **({"time": _iso(record.time_ns), "host": record.host, "user": record.user}
                       if record else {})})
        return 0
    print(f"policy: {policy.describe()}")
    print(f"from:   {origin}" + (f", set by {record.user}@{record.host} at {_iso(record.time_ns)}"
                                 if record else ""))
    return 0


def run_policy_set(args) -> int:
    policy = policy_from_args(args)
    if policy is None:
        raise UsageError("no rule given: e.g. --keep-daily 7 --keep-weekly 5 (or `policy reset`)")
    return _store_policy(args, policy)


def run_policy_reset(args) -> int:
    return _store_policy(args, LADDER)


def _store_policy(args, policy: Policy) -> int:
    from cloudfs.repo.policy import PolicyRecord

    record = with_repository(args, lambda repo: repo.save_policy(PolicyRecord(policy.to_record())),
                             maintenance=True)
    print(f"policy: {policy.describe()} (stored as {record.name})")
    return 0


def _iso(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, timezone.utc).isoformat()


# -- pins ------------------------------------------------------------------------------------


def run_pin(args) -> int:
    from cloudfs.repo.pins import Pin

    async def run(repo):
        snapshot = await _resolve(repo, args)
        if snapshot.name in await repo.pinned():
            return snapshot, None
        return snapshot, await repo.save_pin(Pin(snapshot.name, note=args.note))

    snapshot, pin = with_repository(args, run)
    print(f"pinned {snapshot.name}" if pin else f"{snapshot.name} was pinned already")
    return 0


def run_unpin(args) -> int:
    async def run(repo):
        snapshot = await _resolve(repo, args)
        pins = (await repo.pinned()).get(snapshot.name, [])
        for name in pins:
            await repo.remove_pin(name)
        return snapshot, pins

    snapshot, pins = with_repository(args, run, maintenance=True)
    if not pins:
        raise UsageError(f"{snapshot.name} is not pinned")
    print(f"unpinned {snapshot.name}")
    return 0


async def _resolve(repo, args):
    from cloudfs.browse.names import Catalog

    return Catalog(snapshot_filter(args).chosen(await repo.snapshots())).resolve(args.snapshot)
