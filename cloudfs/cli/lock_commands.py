"""`cloudfs locks extend`: keep what kept snapshots need locked (S3 Object Lock, I10).

Maintenance work: it opens the repository with the maintenance role's store.
"""

from __future__ import annotations

import argparse

from cloudfs.cli.common import repository_options, with_repository
from cloudfs.errors import CloudfsError


class LocksIncomplete(CloudfsError):
    """Some objects the snapshots need could not be found or read (listed before)."""


def register(subparsers) -> None:
    locks = subparsers.add_parser("locks", help="S3 Object Lock of a repository made with --object-lock")
    actions = locks.add_subparsers(dest="locks_command", metavar="ACTION", required=True)
    extend = actions.add_parser(
        "extend", parents=[repository_options()], help="extend the locks of what kept snapshots need",
        description="Walk every snapshot to the objects it needs (chunks, index objects, snapshot, "
                    "pin and policy objects, key slots, config) and extend the lock of each one "
                    "that runs out within the margin to the repository's lock period from now. "
                    "Run it daily: no object a kept snapshot needs then ever becomes deletable.")
    extend.add_argument("--margin", type=_days, metavar="DAYS",
                        help="extend locks that run out within DAYS (default a third of the period)")
    extend.set_defaults(run=run_extend)


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}")
    return value


def run_extend(args) -> int:
    from datetime import timedelta

    from cloudfs.snapshot.locks import extend_locks

    margin = None if args.margin is None else timedelta(days=args.margin)
    kept = with_repository(args, lambda repo: extend_locks(repo, margin=margin), maintenance=True)
    locks, reachable = kept.locks, kept.reachable
    problems = ([f"{name}: needed, but not in the store" for name in locks.missing]
                + kept.unreadable + reachable.problems)
    for problem in problems:
        print(f"error: {problem}")
    for name in locks.overwritten:
        print(f"warning: {name} has more than one version: someone overwrote it; its first "
              "version is the one kept locked (read the past with --as-of)")
    until = f"; the earliest lock now runs out {locks.earliest:%Y-%m-%d %H:%M} UTC" if locks.earliest else ""
    print(f"{kept.snapshots} snapshots need {locks.checked} objects; extended {locks.extended} locks{until}")
    if reachable.missing_blobs:
        print(f"error: {reachable.missing_blobs} blobs the snapshots refer to are in no index: "
              "run `cloudfs check`")
    if problems or reachable.missing_blobs or reachable.unreadable:
        raise LocksIncomplete("some objects the snapshots need could not be found or read (listed "
                              "above); everything found is locked")
    return 0
