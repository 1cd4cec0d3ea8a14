"""tools/bench restore: restoring and browsing with cloudfs and with restic, whole commands.

    tools/bench restore [--runs 3] [--gib 2] [--dir /var/tmp] [--no-restic]

Data: a directory holding one random file of GIB GiB, and Python's standard
library without site-packages (7.7k files). Each is backed up once, untimed,
into a repository of its own by each tool on one `rclone serve s3` (cloudfs
through `cloudfs mount --repo` and `cloudfs flush`, as users do). Then in
every run, with the page cache dropped and empty local caches before each
step, whole commands as users type them:

- restore: `cloudfs restore latest TARGET` / `restic restore latest --target TARGET`
  (the file's directory, then the tree), with the peak RSS of each command;
  cloudfs first in odd runs, restic first in even ones (what ran just
  before a restore moves its time)
- `cp -a` of the file, then of the tree, out of a fresh `cloudfs browse` /
  `restic mount` (and natively, from disk)
- first listing right after mounting: `find -ls` and, on another fresh mount,
  `ls -lR` (which also asks for two xattrs per file)
- peak memory (VmHWM) of the browse daemon

Every restored tree and every copy is compared with its source byte for byte.
Medians over the runs are printed with the ratio cloudfs/restic and issue 14's
goals. Nothing is deleted during a run (deleting on this disk, mounted with
`discard`, slows what follows); a run's outputs (5 copies of the file, 2 GiB
each by default) are deleted after it, followed by a sync and a pause, so the
disk holds one run's worth, not every run's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from whole import (CLOUDFS, CloudfsUser, Restic, assert_same_tree, copy_stdlib, drop_caches,  # noqa: E402
                   in_turn, peak_rss_mib, restic_available, run_command, write_random_file)

from cloudfs import locals3  # noqa: E402
from cloudfs.system.statedir import StateDir  # noqa: E402

BUCKET = "bench"
ENV = dict(os.environ)
GRAVEYARD = ".cloudfs-graveyard"   # made at SOURCE's root by the live mount, not part of a snapshot
SETTLE_SECONDS = 10                # after deleting a run's outputs (the disk discards what was freed)


class Bench:
    def __init__(self, work: Path, server, gib: int, with_restic: bool):
        self.work, self.server, self.gib, self.with_restic = work, server, gib, with_restic
        self.data = {"file": work / "data" / "file", "tree": work / "data" / "stdlib"}
        self.counter = 0
        self.cloudfs = {name: CloudfsUser(server, BUCKET, self.fresh("home")) for name in self.data}
        self.restic: dict[str, Restic] = {}

    def clear_outputs(self) -> None:
        """Delete what the run made (restores, copies, caches), then let the disk settle."""
        shutil.rmtree(self.work / "out")
        os.sync()
        time.sleep(SETTLE_SECONDS)

    def fresh(self, name: str) -> Path:
        self.counter += 1
        path = self.work / "out" / f"{self.counter:03d}-{name}"
        path.mkdir(parents=True)
        return path

    # -- setting up ------------------------------------------------------------------

    def prepare(self) -> None:
        self.data["file"].mkdir(parents=True)
        write_random_file(self.data["file"] / "big.bin", self.gib << 30)
        self.files = copy_stdlib(self.data["tree"])
        print(f"data: {self.gib} GiB file; library tree of {self.files} files", flush=True)
        for name, source in self.data.items():
            user = self.cloudfs[name]
            user.repository(f"cloudfs-{name}")
            started = time.perf_counter()
            user.run("mount", "--daemon", "--interval", "1h", source)
            user.run("flush", source)
            user.run("umount", source)
            print(f"cloudfs backup of the {name}: {time.perf_counter() - started:.1f} s", flush=True)
            if self.with_restic:
                self.restic[name] = Restic(self.server, BUCKET, self.fresh("restic-cache"), prefix=f"restic-{name}")
                seconds, _ = self.restic[name].timed("backup", "--quiet", source)
                print(f"restic backup of the {name}: {seconds:.1f} s", flush=True)

    # -- measurements -------------------------------------------------------------------------

    def restores(self, run: int) -> dict:
        """Each tool's restore of each data set, the tools taking turns going first."""
        out = {}
        for name in self.data:
            tools = [self._cloudfs_restore, self._restic_restore] if self.with_restic else [self._cloudfs_restore]
            for restore in in_turn(tools, run):
                out.update(restore(name))
        return out

    def _cloudfs_restore(self, name: str) -> dict:
        source, user = self.data[name], self.cloudfs[name]
        user.fresh_home(self.fresh("home"))
        target = self.fresh("restore") / name
        drop_caches()
        seconds, rss = user.run("restore", "latest", target, "--no-progress")
        assert_same_tree(source, target, ignore=(GRAVEYARD,), top_mode=False)
        return {f"restore_{name}": seconds, f"restore_{name}_rss": rss}

    def _restic_restore(self, name: str) -> dict:
        source, restic = self.data[name], self.restic[name]
        restic.env["RESTIC_CACHE_DIR"] = str(self.fresh("restic-cache"))
        target = self.fresh("restic-restore")
        drop_caches()
        seconds, rss = restic.timed("restore", "latest", "--target", target)
        assert_same_tree(source, target / str(source).lstrip("/"))
        return {f"restic_restore_{name}": seconds, f"restic_restore_{name}_rss": rss}

    def copies(self) -> dict:
        out = {}
        drop_caches()
        out["native_file"], _ = run_command(["cp", "-a", self.data["file"] / "big.bin", self.fresh("native")], ENV)
        drop_caches()
        out["native_tree"], _ = run_command(["cp", "-a", self.data["tree"], self.fresh("native")], ENV)
        out.update(self._cloudfs_copies())
        if self.with_restic:
            out.update(self._restic_copies())
        return out

    def _cloudfs_copies(self) -> dict:
        out = {}
        for name, source in self.data.items():
            user = self.cloudfs[name]
            for listing in ("find", "ls"):
                user.fresh_home(self.fresh("home"))
                mountpoint = self.fresh("mnt")
                drop_caches()
                user.run("browse", mountpoint, "--daemon")
                try:
                    snapshot = mountpoint / os.readlink(mountpoint / "latest")
                    if listing == "find":
                        out[f"find_{name}"], _ = run_command(["find", snapshot, "-ls"], ENV)
                        drop_caches()
                        out[f"cp_{name}"] = self._copy(snapshot, source, name)
                        out[f"browse_{name}_rss"] = _browse_peak_mib(user, mountpoint)
                    else:
                        out[f"ls_{name}"], _ = run_command(["ls", "-lR", snapshot], ENV)
                finally:
                    user.run("umount", mountpoint)
        return out

    def _copy(self, snapshot: Path, source: Path, name: str) -> float:
        """`cp -a` out of a mounted snapshot, compared with the source."""
        target = self.fresh(f"cp-{name}")
        if name == "file":
            seconds, _ = run_command(["cp", "-a", snapshot / "big.bin", target], ENV)
            assert_same_tree(source / "big.bin", target / "big.bin")
        else:
            seconds, _ = run_command(["cp", "-a", snapshot, target / "tree"], ENV)
            assert_same_tree(source, target / "tree", ignore=(GRAVEYARD,), top_mode=False)
        return seconds

    def _restic_copies(self) -> dict:
        out = {}
        for name, source in self.data.items():
            restic = self.restic[name]
            for listing in ("find", "ls"):
                restic.env["RESTIC_CACHE_DIR"] = str(self.fresh("restic-cache"))
                mountpoint = self.fresh("restic-mnt")
                drop_caches()
                process = subprocess.Popen(["restic", "mount", str(mountpoint)], env=restic.env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    snapshot = _restic_snapshot(mountpoint, source)
                    if listing == "find":
                        out[f"restic_find_{name}"], _ = run_command(["find", snapshot, "-ls"], ENV)
                        drop_caches()
                        out[f"restic_cp_{name}"] = self._copy(snapshot, source, name)
                    else:
                        out[f"restic_ls_{name}"], _ = run_command(["ls", "-lR", snapshot], ENV)
                finally:
                    subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
                    try:
                        process.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        process.send_signal(signal.SIGKILL)
                        process.wait()
        return out


def _restic_snapshot(mountpoint: Path, source: Path) -> Path:
    """The source directory inside a `restic mount`, once the mount shows it."""
    snapshot = mountpoint / "snapshots" / "latest" / str(source).lstrip("/")
    deadline = time.monotonic() + 60
    while not (mountpoint / "snapshots").is_dir():
        if time.monotonic() > deadline:
            raise SystemExit("restic mount did not come up in 60 s")
        time.sleep(0.05)
    return snapshot


def _browse_peak_mib(user: CloudfsUser, mountpoint: Path) -> float:
    states = Path(user.env["XDG_STATE_HOME"]) / "cloudfs"
    return peak_rss_mib(StateDir(next(states.glob("browse-*"))).holder().pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where to work")
    parser.add_argument("--gib", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-restic", dest="restic", action="store_false")
    args = parser.parse_args()
    with_restic = args.restic and restic_available()
    if args.restic and not with_restic:
        print("restic could not be installed: its columns are skipped")
    work = Path(tempfile.mkdtemp(prefix="cloudfs-bench-restore-", dir=args.dir))
    server = locals3.start_rclone(work / "s3")
    try:
        server.client().create_bucket(Bucket=BUCKET)
        bench = Bench(work, server, args.gib, with_restic)
        bench.prepare()
        results: list[dict] = []
        for run in range(args.runs):
            figures = {**bench.restores(run), **bench.copies()}
            results.append(figures)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(figures.items())), flush=True)
            bench.clear_outputs()
        report(results, args, bench.files, with_restic)
    finally:
        locals3.stop(server.proc)
        shutil.rmtree(work, ignore_errors=True)


GOALS = {"restore_file": 0.40, "restore_tree": 0.60, "cp_file": 0.35, "cp_tree": 0.30}


def report(results: list[dict], args, files: int, with_restic: bool) -> None:
    def value(key):
        return statistics.median(r[key] for r in results) if key in results[0] else None

    def row(label, key, unit="s", goal=None):
        ours, theirs = value(key), value(f"restic_{key}")
        ratio = ours / theirs if theirs else None
        goal = goal or (f"≤ {GOALS[key]:.2f} " + ("met" if ratio and ratio <= GOALS[key] else "missed")
                        if key in GOALS and ratio else "")
        return [label, f"{ours:.2f} {unit}", f"{theirs:.2f} {unit}" if theirs else "–",
                f"{ratio:.2f}" if ratio else "–", goal]

    rows = [row(f"restore of the {args.gib} GiB file", "restore_file"),
            row(f"restore of the library tree ({files} files)", "restore_tree"),
            row(f"cp -a of the {args.gib} GiB file out of a fresh mount", "cp_file"),
            row("cp -a of the library tree out of a fresh mount", "cp_tree"),
            row("find -ls of the tree right after mounting", "find_tree", goal="≤ 1 s"),
            row("ls -lR of the tree right after mounting", "ls_tree", goal="≤ 1 s"),
            row("peak RSS of restore, file", "restore_file_rss", "MiB"),
            row("peak RSS of restore, tree", "restore_tree_rss", "MiB"),
            row("peak RSS of the browse mount, copying the file", "browse_file_rss", "MiB"),
            row("peak RSS of the browse mount, copying the tree", "browse_tree_rss", "MiB"),
            ["native cp -a (file / tree)", f"{value('native_file'):.2f} / {value('native_tree'):.2f} s", "",
             "", ""]]
    print(f"\nmedians of {args.runs} runs, page cache dropped and local caches empty before each step, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
          f"{'' if with_restic else ', restic skipped'}; `{Path(CLOUDFS).name}` and `restic` run whole")
    print_table(["row (whole commands)", "cloudfs", "restic 0.14", "cloudfs/restic", "goal"], rows)


if __name__ == "__main__":
    main()
