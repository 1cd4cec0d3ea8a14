"""`cloudfs forget`: decide per group what a policy keeps, then delete the rest.

A group is the snapshots of one protected directory on one host: what
`--source`/`--host` choose, and what one live mount's snapshots form. The
policy (cloudfs.snapshot.retention) is applied to each group on its own.

Deleting is maintenance work: the repository must have been opened with the
maintenance role's store. Only snapshot objects and pins are deleted; the data
they referenced stays until a prune (docs/prune.md). The steps, in order:

1. list the snapshots and the pins, and decide (`plan_forget`, pure);
2. refuse if a group would keep nothing (`refuse_empty_groups`), unless allowed;
3. list the pins again, and spare what was pinned since step 1;
4. delete the snapshot objects, oldest first;
5. list the pins once more and delete those of the snapshots just deleted (a
   pin that arrived too late to save its snapshot would pin nothing).

A pin written between steps 3 and 4 loses its snapshot; whoever pins and
must be sure checks afterwards that the snapshot is still listed. A run
killed at any point leaves only whole objects; a rerun finishes the job.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudfs.errors import IntegrityError, UsageError
from cloudfs.repo import Repository, Snapshot
from cloudfs.repo.snapshots import SNAPSHOTS_PREFIX
from cloudfs.snapshot.retention import LADDER, Decision, Policy, apply_policy


@dataclass(frozen=True)
class GroupPlan:
    host: str
    source: str
    decisions: list[Decision]          # newest first

    @property
    def kept(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions if d.keep]

    @property
    def removed(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions if not d.keep]


@dataclass
class ForgetResult:
    removed: list[Snapshot]
    spared: list[Snapshot]             # pinned after the plan was made
    pins_removed: list[str]


class NothingKept(UsageError):
    """The rules keep no snapshot of a group; forget refuses unless --allow-empty."""


def plan_forget(policy: Policy, snapshots: list[Snapshot], now_ns: int,
                pinned: frozenset[str] = frozenset()) -> list[GroupPlan]:
    """The decisions for every group of `snapshots`, groups sorted by host and source."""
    groups: dict[tuple[str, str], list[Snapshot]] = {}
    for snapshot in snapshots:
        groups.setdefault((snapshot.host, snapshot.source), []).append(snapshot)
    return [GroupPlan(host, source, apply_policy(policy, members, now_ns, pinned))
            for (host, source), members in sorted(groups.items())]


def refuse_empty_groups(plans: list[GroupPlan]) -> None:
    """NothingKept naming the groups of which nothing would be kept."""
    empty = [f"{plan.host}:{plan.source}" for plan in plans if not plan.kept]
    if empty:
        raise NothingKept(f"the rules keep no snapshot of {', '.join(empty[:3])}"
                          f"{', ...' if len(empty) > 3 else ''}; nothing was deleted "
                          "(--allow-empty to delete them all)")


async def repository_policy(repo: Repository) -> tuple[Policy, str]:
    """The policy forget applies when given no rule, and where it comes from: the
    newest policy object, or the built-in ladder if none was ever stored."""
    record = await repo.current_policy()
    if record is None:
        return LADDER, "the built-in default (no policy stored)"
    try:
        return Policy.from_record(record.rules), record.name
    except ValueError as error:
        raise IntegrityError(record.name, f"{error}: this cloudfs cannot apply it "
                                          "(a newer cloudfs may)") from None


async def forget(repo: Repository, plans: list[GroupPlan]) -> ForgetResult:
    """Delete what the plans remove (steps 3-5 above)."""
    pinned_now = await repo.pinned()
    doomed = [s for plan in plans for s in reversed(plan.removed)]
    spared = [s for s in doomed if s.name in pinned_now]
    removed = [s for s in doomed if s.name not in pinned_now]
    for snapshot in removed:
        await repo.forget_snapshot(snapshot)
    pins_after = await repo.pinned()
    orphans = [pin for snapshot in removed for pin in pins_after.get(snapshot.name, ())]
    for pin in orphans:
        await repo.remove_pin(pin)
    return ForgetResult(removed, spared, orphans)


def damaged_snapshots(repo: Repository) -> list[str]:
    """Snapshot objects `repo.snapshots()` could not read (call it first)."""
    return sorted(name for name in repo.damaged_objects if name.startswith(SNAPSHOTS_PREFIX))


async def drop_damaged(repo: Repository) -> list[str]:
    """Delete the snapshot objects that cannot be read (`forget --damaged`): what they
    referred to is then unneeded, and the next prune deletes it. Returns their names."""
    names = damaged_snapshots(repo)
    for name in names:
        await repo.store.delete(name)
        del repo.damaged_objects[name]
    return names

