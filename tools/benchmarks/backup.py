"""tools/bench backup: backing up with cloudfs and with restic, whole commands as users type them.

    tools/bench backup [--runs 3] [--file-gib 2] [--edits 50] [--dir /var/tmp] [--no-restic]

Data: a directory holding one random file of FILE_GIB GiB, and Python's
standard library without site-packages (7.7k files). One `rclone serve s3`
serves both tools; every run gives each tool new repositories (one per data
set) and empty local caches, and the page cache is dropped before each step.
Each command is timed whole: interpreter start, imports, key derivation and
all. Rows, cloudfs against restic 0.14:

  first backup   `cloudfs mount --daemon --repo R SOURCE` (over SOURCE itself)
                 until `cloudfs flush SOURCE` returns (the first snapshot is
                 committed), against `restic backup SOURCE`
  next backup    of the tree, after EDITS small files were appended to and
                 EDITS new ones written (through the mount, for cloudfs): the
                 whole `cloudfs snapshot --wait`, against `restic backup`
  peak RSS       of the backing-up process: the mount daemon's VmHWM once the
                 first snapshot is committed, against restic backup's

The first run also restores what each tool backed up (`cloudfs restore
latest`, `restic restore latest`) and compares it with the source byte for
byte. cloudfs goes first in odd runs, restic in even ones. Medians over the
runs; the goals are issue 14's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from whole import (CloudfsUser, Restic, assert_same_tree, copy_stdlib, drop_caches,  # noqa: E402,F401
                   edit_small_files, in_turn, peak_rss_mib, restic_available, tree_bytes,
                   write_random_file)

from cloudfs import control, locals3  # noqa: E402

BUCKET = "bench"
GRAVEYARD = ".cloudfs-graveyard"   # made at SOURCE's root by the live mount, not part of a snapshot


class Round:
    """One data set backed up by both tools in one run."""

    def __init__(self, work: Path, server, name: str, source: Path, run: int, edits: int):
        self.work, self.server, self.name, self.source, self.run, self.edits = work, server, name, source, run, edits

    def cloudfs(self, verify: bool) -> dict:
        user = CloudfsUser(self.server, BUCKET, self.work / "home" / f"{self.run}-{self.name}")
        user.repository(f"cloudfs-{self.name}-{self.run}")
        source = str(self.source)
        drop_caches()
        started = time.perf_counter()
        mount_s, _ = user.run("mount", "--daemon", "--interval", "1h", source)
        user.run("flush", source)
        figures = {"first": time.perf_counter() - started, "mount": mount_s}
        state_dir, pid = user.holder(self.source)
        figures["rss"] = peak_rss_mib(pid)
        figures["daemon"] = control.request(state_dir, "status", timeout=30)["history"][0]["seal_to_commit_s"]
        if self.edits:
            edit_small_files(self.source, self.edits, self.edits, f"c{self.run}")
            drop_caches()
            figures["next"], _ = user.run("snapshot", "--wait", source)
        user.run("umount", source)
        if verify:
            target = self.work / "verify" / f"cloudfs-{self.name}"
            user.run("restore", "latest", target, "--no-progress")
            assert_same_tree(self.source, target, ignore=(GRAVEYARD,))
        return {f"cloudfs_{key}": value for key, value in figures.items()}

    def restic(self, verify: bool) -> dict:
        restic = Restic(self.server, BUCKET, self.work / "restic-cache" / f"{self.run}-{self.name}",
                        prefix=f"restic-{self.name}-{self.run}")
        figures = {}
        drop_caches()
        figures["first"], figures["rss"] = restic.timed("backup", "--quiet", self.source)
        if verify:
            target = self.work / "verify" / f"restic-{self.name}"
            restic.timed("restore", "latest", "--target", target)
            assert_same_tree(self.source, target / str(self.source).lstrip("/"))
        if self.edits:
            edit_small_files(self.source, self.edits, self.edits, f"r{self.run}")
            drop_caches()
            figures["next"], _ = restic.timed("backup", "--quiet", self.source)
        return {f"restic_{key}": value for key, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file-gib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--edits", type=int, default=50, help="small files edited, and new ones written")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where to work")
    parser.add_argument("--no-restic", dest="restic", action="store_false")
    args = parser.parse_args()
    with_restic = args.restic and restic_available()
    work = Path(tempfile.mkdtemp(prefix="cloudfs-bench-backup-", dir=args.dir))
    server = locals3.start_rclone(work / "s3")
    try:
        server.client().create_bucket(Bucket=BUCKET)
        data = prepare(work, args.file_gib)
        results = []
        for run in range(args.runs):
            figures = {}
            for name, source in data.items():
                one = Round(work, server, name, source, run, args.edits if name == "tree" else 0)
                tools = [one.cloudfs, one.restic] if with_restic else [one.cloudfs]
                for backup in in_turn(tools, run):
                    figures.update({f"{name}_{key}": value for key, value in backup(verify=run == 0).items()})
            results.append(figures)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(figures.items())), flush=True)
        report(results, args, data, with_restic)
    finally:
        locals3.stop(server.proc)
        shutil.rmtree(work, ignore_errors=True)


def prepare(work: Path, file_gib: float) -> dict[str, Path]:
    data = {"file": work / "data" / "file", "tree": work / "data" / "stdlib"}
    data["file"].mkdir(parents=True)
    write_random_file(data["file"] / "random.bin", int(file_gib * (1 << 30)))
    files = copy_stdlib(data["tree"])
    print(f"data: {file_gib:g} GiB random file; library tree of {files} files, "
          f"{tree_bytes(data['tree']) / 2**20:.0f} MiB", flush=True)
    return data


GOALS = {"file_first": 0.40, "tree_first": 0.50, "tree_next": 0.25, "file_rss": 0.50, "tree_rss": 0.50}


def report(results: list[dict], args, data: dict, with_restic: bool) -> None:
    def value(key):
        return statistics.median(r[key] for r in results) if key in results[0] else None

    def row(label, key, unit):
        data_set, measure = key.split("_")
        ours, theirs = value(f"{data_set}_cloudfs_{measure}"), value(f"{data_set}_restic_{measure}")
        ratio = ours / theirs if ours is not None and theirs else None
        verdict = "" if ratio is None else ("met" if ratio <= GOALS[key] else "missed")
        return [label, f"{ours:.2f} {unit}", f"{theirs:.2f} {unit}" if theirs else "–",
                f"{ratio:.2f}" if ratio else "–", f"≤ {GOALS[key]:.2f} {verdict}"]

    rows = [row(f"first backup, {args.file_gib:g} GiB file (mount → flush)", "file_first", "s"),
            row("first backup, library tree (mount → flush)", "tree_first", "s"),
            row(f"next backup, {args.edits} edited + {args.edits} new files (snapshot --wait)", "tree_next", "s"),
            row("peak RSS backing up the file", "file_rss", "MiB"),
            row("peak RSS backing up the tree", "tree_rss", "MiB")]
    print(f"\nmedians of {args.runs} runs, page cache dropped before each step, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}{'' if with_restic else ', restic skipped'}")
    print_table(["row (whole commands)", "cloudfs", "restic 0.14", "cloudfs/restic", "goal"], rows)
    print(f"of which: `cloudfs mount` returned after {value('file_cloudfs_mount'):.2f} s (file) / "
          f"{value('tree_cloudfs_mount'):.2f} s (tree); the daemon's seal to commit took "
          f"{value('file_cloudfs_daemon'):.2f} s / {value('tree_cloudfs_daemon'):.2f} s")


if __name__ == "__main__":
    main()
