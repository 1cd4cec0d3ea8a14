"""`cloudfs prune`: delete the chunks no kept snapshot needs, repack sparse ones.

Maintenance work (it deletes): the repository is opened with the maintenance
role's store. The protocol and its reasons are in docs/prune.md; this module
parses, shows bars on a terminal, and reports.
"""

from __future__ import annotations

import argparse
import sys

from cloudfs.cli.common import human_size, print_json, repository_options, with_repository

SAFE_GRACE = 86400      # seconds: below this, writers that sleep or upload longer are not safe


def register(subparsers) -> None:
    prune = subparsers.add_parser(
        "prune", parents=[repository_options()], help="delete the data no kept snapshot needs",
        description="Delete the chunks no snapshot needs and repack sparse ones, safely while mounts "
                    "upload: a run marks what is unused (a doom list), and a later run, at least the "
                    "grace period after, deletes it, less what snapshots committed meanwhile need. "
                    "Run it after `cloudfs forget`, e.g. weekly (docs/prune.md).")
    prune.add_argument("--dry-run", action="store_true",
                       help="say what would be deleted and repacked, in objects and bytes; change nothing")
    prune.add_argument("--grace", type=grace_period, default=7 * 86400.0, metavar="DURATION",
                       help="how long marked chunks wait before they are deleted, and how old a chunk "
                            "must be to be judged at all (default 7d; longer than any upload or sleep "
                            "of a writer; 0 only when no writer can run)")
    prune.add_argument("--max-unused", type=unused_share, default=0.10, metavar="PERCENT",
                       help="repack the sparsest chunks until the unused bytes left in the rest are at "
                            "most PERCENT of the used ones (default 10%%; `unlimited`: never repack)")
    prune.add_argument("--json", action="store_true")
    prune.set_defaults(run=run_prune)


def grace_period(text: str) -> float:
    from cloudfs.settings.units import parse_duration

    if text.strip() in ("0", "0s"):
        return 0.0
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error} (or 0)") from None


def unused_share(text: str) -> float | None:
    if text.strip().lower() == "unlimited":
        return None
    try:
        share = float(text.strip().removesuffix("%")) / 100
    except ValueError:
        share = -1.0
    if share < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a percentage (10%) or unlimited")
    return share


class TerminalProgress:
    """A bar per stage of a prune, on a terminal only."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars = []

    def stage(self, description: str, total: int, unit: str):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=description, unit=unit, unit_scale=unit == "B", unit_divisor=1024,
                   file=sys.stderr, disable=not self.enabled or not total, leave=False)
        self.bars.append(bar)
        return bar.update

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


def run_prune(args) -> int:
    report = prune_repository(args, args.dry_run, args.grace, args.max_unused)
    if args.json:
        print_json(report_json(report))
    else:
        print_report(report)
    return 0


def prune_repository(args, dry_run: bool, grace: float, max_unused: float | None):
    """Prune the repository `args` name (the maintenance command calls this too)."""
    from datetime import timedelta

    from cloudfs.snapshot.prune.run import PruneOptions, prune

    if grace < SAFE_GRACE and not dry_run:
        print(f"cloudfs: warning: a grace period of {grace:.0f} s is only safe while no mount uploads "
              "to this repository", file=sys.stderr)
    options = PruneOptions(grace=timedelta(seconds=grace), max_unused=max_unused, dry_run=dry_run)
    progress = TerminalProgress(sys.stderr.isatty())
    try:
        return with_repository(args, lambda repo: prune(repo, options, progress), maintenance=not dry_run)
    finally:
        progress.close()


def print_report(report) -> None:
    would = "would " if report.dry_run else ""
    for sweep in report.swept:
        print(f"{sweep.doom.name}: {would}delete {len(sweep.chunks)} chunks ({human_size(sweep.chunk_bytes)}) "
              f"and {len(sweep.index_deleted)} index objects, writing {len(sweep.replacements)} in their place"
              + (f"; {len(sweep.rescued)} chunks rescued (snapshots committed since the mark need them)"
                 if sweep.rescued else ""))
        for name in sweep.locked:
            print(f"skipped {name}: locked (S3 Object Lock) until after now; a later prune deletes it")
    for waiting in report.waiting:
        print(f"{waiting.doom.name}: {len(waiting.doom.chunks)} chunks ({human_size(waiting.doom.chunk_bytes)}) "
              f"wait until {waiting.ripe_at:%Y-%m-%d %H:%M:%S} UTC (the grace period); nothing new marked")
    plan = report.marked
    if plan is not None:
        doomed = sum(chunk.size for chunk in plan.doomed)
        repacked = report.repacked
        moved = f", moving {repacked.blobs} blobs ({human_size(repacked.bytes)})" if repacked else ""
        print(f"{would}mark {len(plan.doomed)} chunks ({human_size(doomed)}) for deletion: "
              f"{len(plan.delete)} unused, {len(plan.repack)} repacked{moved}; "
              f"{human_size(plan.unused_left)} unused left in the chunks kept; "
              f"{len(plan.young)} chunks too young to judge")
        if report.doom is not None and not any(s.doom.name == report.doom.name for s in report.swept):
            print(f"marked in {report.doom.name}; a prune after the grace period deletes them")
    if report.dry_run:
        print("nothing changed (--dry-run)")


def report_json(report) -> dict:
    plan = report.marked
    return {
        "dry_run": report.dry_run,
        "swept": [{"doom_list": sweep.doom.name, "chunks": len(sweep.chunks), "bytes": sweep.chunk_bytes,
                   "index_deleted": len(sweep.index_deleted), "index_written": len(sweep.replacements),
                   "rescued": len(sweep.rescued), "locked": sweep.locked} for sweep in report.swept],
        "waiting": [{"doom_list": w.doom.name, "chunks": len(w.doom.chunks), "bytes": w.doom.chunk_bytes,
                     "ripe_at": w.ripe_at.isoformat()} for w in report.waiting],
        "marked": None if plan is None else {
            "doom_list": report.doom.name if report.doom else None,
            "delete": _chunks_json(plan.delete), "repack": _chunks_json(plan.repack),
            "young": _chunks_json(plan.young), "unused_left": plan.unused_left,
            "snapshots": len(plan.snapshots)},
    }


def _chunks_json(chunks) -> dict:
    return {"chunks": len(chunks), "bytes": sum(chunk.size for chunk in chunks)}
