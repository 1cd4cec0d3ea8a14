"""`cloudfs drill`: restore a random sample of the latest snapshot from each target,
verified, into a scratch directory that is removed after, and project the time a
full restore would take (the RTO). cloudfs.restore.drill does the work; the result
is kept on this machine for `cloudfs status`."""

from __future__ import annotations

import os
import re
import tempfile
import time

from cloudfs.cli import configured
from cloudfs.cli.common import (
    each_target,
    human_duration,
    human_size,
    print_json,
    repository_options,
    target_options,
    with_repository,
)
from cloudfs.errors import CloudfsError, UsageError

DEFAULT_SAMPLE = "2%"
DEFAULT_SCRATCH = "/var/tmp"
_COUNT = re.compile(r"^\d+$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


class DrillFailed(CloudfsError):
    """A target could not restore its sample (what each one did is printed before)."""


def register(subparsers) -> None:
    drill = subparsers.add_parser(
        "drill", parents=[repository_options(), target_options()],
        help="restore a sample from each target and project the time to restore everything (RTO)",
        description="Restore a random sample of the latest snapshot from each target of the "
                    "repository (or its one store), verified as every restore is, into a scratch "
                    "directory that is removed afterwards; report the throughput and the projected "
                    "time of a full restore (RTO) per target. The result is kept on this machine "
                    "and shown by `cloudfs status`.")
    drill.add_argument("name", nargs="?", metavar="NAME",
                       help="drill the repository of [directories.NAME] of the configuration file "
                            "(what cloudfs-drill@NAME.timer runs); default: --repo")
    configured.config_option(drill)
    drill.add_argument("--sample", default=DEFAULT_SAMPLE, metavar="P%|N|SIZE|N,SIZE",
                       help="how much to restore: P%% of the files and of the bytes, N files, SIZE bytes "
                            "(e.g. 2GiB), or both (500,2GiB); at least 200 files and 16 MiB, or the "
                            "whole snapshot if it is smaller (default %(default)s)")
    drill.add_argument("--scratch", metavar="DIR", default=DEFAULT_SCRATCH,
                       help="restore the sample into a new directory in DIR, removed afterwards; best on "
                            f"the disk a real restore would write to (default {DEFAULT_SCRATCH})")
    drill.add_argument("--json", action="store_true", help="the result as JSON (docs/json.md)")
    drill.set_defaults(run=run_drill)


def sample_size(text: str) -> tuple[int | None, int | None, float | None]:
    """--sample: (files, bytes, percent), each None where not given."""
    from cloudfs.settings.units import parse_size

    files = size = percent = None
    for part in text.replace(" ", "").split(","):
        if match := _PERCENT.match(part):
            percent = float(match.group(1))
            if not 0 < percent <= 100:
                raise UsageError(f"--sample {text}: a percentage is above 0 and at most 100")
        elif _COUNT.match(part):
            files = int(part)
        else:
            try:
                size = parse_size(part)
            except ValueError:
                raise UsageError(f"--sample {text}: expected P%, a number of files, a size such as "
                                 "2GiB, or N,SIZE") from None
    if percent is not None and (files or size) or "," in text and (files is None or size is None) or files == 0:
        raise UsageError(f"--sample {text}: expected P%, a number of files, a size such as 2GiB, or N,SIZE")
    return files, size, percent


def run_drill(args) -> int:
    started = time.time_ns()
    sample = sample_size(args.sample)
    if args.name is not None:
        configured.apply(args, configured.load_config(args).entry(args.name).settings)
    chosen, args.from_target = args.from_target, None   # each target on its own
    repo_id, results = with_repository(args, lambda repo: _drill_each(args, repo, chosen, sample))
    record = {"time_ns": started, "sample": args.sample, "ok": all(r.ok for r in results),
              "targets": [result.as_dict() for result in results]}
    from cloudfs.system.drills import save_drill

    save_drill(repo_id, record)
    if args.json:
        print_json(record)
    else:
        for result in results:
            _print_result(result)
    _raise_if_failed(results)
    return 0


async def _drill_each(args, repo, chosen: str | None, sample: tuple):
    import random

    from cloudfs.restore.drill import SampleSize, drill_target, remove_tree

    if not await repo.snapshots():
        raise UsageError("no snapshot to drill yet: the repository has none (a mount commits one "
                         "after its first interval, or run `cloudfs snapshot`)")
    targets = await each_target(args, repo, chosen)
    startup = _process_age()
    scratch = _new_scratch(args.scratch)
    try:
        results = []
        for name, at in targets:
            alone = repo.at(repo.store) if at is repo else at    # from the store, not the local cache
            part = os.path.join(scratch, name or "repository")
            os.mkdir(part, 0o700)
            try:
                results.append(await drill_target(name, alone, SampleSize(*sample), part, startup,
                                                  random.Random()))
            finally:
                alone.index.close()
    finally:
        remove_tree(scratch)
    return repo.config.repo_id_hex, results


def _new_scratch(parent: str) -> str:
    try:
        return tempfile.mkdtemp(prefix="cloudfs-drill-", dir=parent)
    except OSError as error:
        raise UsageError(f"cannot make a scratch directory in {parent}: {error.strerror} "
                         "(choose another with --scratch)") from None


def _process_age() -> float:
    """Seconds since this process started (a restore pays the interpreter's start-up too)."""
    with open("/proc/self/stat") as stat:
        started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")


def _print_result(result) -> None:
    name = result.target or "repository"
    for path, why in result.damaged:
        print(f"{name}: damaged: {path}: {why}")
    if result.error is not None:
        print(f"{name}: failed: {result.error}")
        return
    share = f"all {result.files}" if result.whole else f"{result.files} of {result.snapshot_files}"
    print(f"{name}: restored {share} files, {human_size(result.bytes)} of {human_size(result.snapshot_bytes)} "
          f"of snapshot {result.snapshot} in {result.restore_seconds:.1f} s "
          f"({human_size(result.throughput)}/s), verified; projected full restore (RTO): "
          f"{human_duration(result.rto_seconds)}")


def _raise_if_failed(results) -> None:
    failed = [result for result in results if not result.ok]
    if not failed:
        return
    first = failed[0]
    why = first.error or f"{len(first.damaged)} files of the sample could not be restored (listed above)"
    where = f" from target {first.target}" if first.target else ""
    more = f" (and {len(failed) - 1} more targets)" if len(failed) > 1 else ""
    raise DrillFailed(f"the drill failed{where}: {why}{more}")

