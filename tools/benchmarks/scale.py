"""tools/bench scale: many small files through the commands a user runs, against restic.

    tools/bench scale [--files 1000000] [--dirs 1000] [--blobs 16000000] [--runs 3]
                      [--dir /var/tmp] [--no-restic]

Data: FILES files of 100-3,000 random bytes in DIRS directories, one of which
holds 10,000 of them (for `ls -l`), written by helper processes with
os.write; every run writes a tree of its own (other bytes, another path), so
no run deduplicates against an earlier one. The repository, on one local
`rclone serve s3`, first gets BLOBS synthetic blobs in index objects (the
generator of tools/bench index, sealed with the repository's key), so that
its local index is the size of a large repository's; that index is built
once, before anything is timed (its time is printed).

Each run, with the page cache dropped before every step, times whole
commands as a user runs them:

  first        `cloudfs mount --repo --daemon` until the first
               `cloudfs snapshot --wait` returns; the daemon's peak RSS
               (VmHWM), and its RSS 5 s later (steady)
  incremental  10 files edited through the mount, then `cloudfs snapshot
               --wait`; the bytes the store gained (data, trees, index,
               snapshot object)
  remount      `cloudfs umount`, then `cloudfs mount` until it returns (the
               mount answers) and until `status` says `reconciled`; peak RSS
  find         a fresh `cloudfs browse --daemon` (no blob cache), `find -H
               latest` over the run's snapshot; the browse daemon's peak RSS
  ls -l        another fresh browse mount, `ls -l` of the 10,000-entry directory
  restore      `cloudfs restore latest --source SRC TARGET`; its peak RSS

and, where restic is installed (apt-get is tried), in the same run on the
same server: `restic backup` of the tree, again after the 10 edits, and
`restic restore` (times and peak RSS). Medians over the runs are printed
against the goals of issue 10.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup import Restic, drop_caches, restic_available  # noqa: E402
from common import print_table  # noqa: E402
from index import sealed_objects  # noqa: E402
from whole import run_command  # noqa: E402

import trio  # noqa: E402

from cloudfs import control, locals3  # noqa: E402
from cloudfs.repo import Repository  # noqa: E402
from cloudfs.store import S3Options, S3Store  # noqa: E402
from cloudfs.system.statedir import StateDir  # noqa: E402

CLOUDFS = [sys.executable, "-m", "cloudfs"]
PASSWORD = "benchmark passphrase"
BIG_DIRECTORY = 10_000        # entries of the directory `ls -l` lists
EDITS = 10
PUTS_AT_ONCE = 8


# -- the tree ---------------------------------------------------------------------------------


def directory_sizes(files: int, dirs: int) -> list[int]:
    """How many files each directory gets: the first BIG_DIRECTORY, the rest even."""
    big = min(BIG_DIRECTORY, files)
    rest, others = files - big, max(1, dirs - 1)
    return [big] + [rest // others + (1 if index < rest % others else 0) for index in range(others)]


def write_directories(root: Path, first: int, sizes: list[int], seed: int) -> None:
    """Directories first, first+1, ... with `sizes` files each (a helper process)."""
    rng = random.Random(seed * 1_000_003 + first)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for number, count in enumerate(sizes, first):
        directory = root / f"d{number:04d}"
        directory.mkdir()
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for index in range(count):
                fd = os.open(f"f{index:05d}.dat", flags, 0o644, dir_fd=dir_fd)
                os.write(fd, rng.randbytes(rng.randint(100, 3000)))
                os.close(fd)
        finally:
            os.close(dir_fd)


def make_tree(root: Path, files: int, dirs: int, seed: int, helpers: int = 2) -> float:
    """FILES files in DIRS directories under `root`, by `helpers` processes; seconds."""
    started = time.perf_counter()
    root.mkdir(parents=True)
    sizes = directory_sizes(files, dirs)
    share = (len(sizes) + helpers - 1) // helpers
    processes = [subprocess.Popen([sys.executable, __file__, "--write-tree", str(root), str(first),
                                   json.dumps(sizes[first:first + share]), str(seed)])
                 for first in range(0, len(sizes), share)]
    for process in processes:
        if process.wait():
            raise SystemExit("writing the tree failed")
    return time.perf_counter() - started


# -- measuring commands ------------------------------------------------------------------------------


def memory_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stored_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


class Bench:
    def __init__(self, work: Path, server, args):
        self.work, self.server, self.args = work, server, args
        self.bucket_dir = server.data_dir / "scale"
        self.env = dict(server.env(), CLOUDFS_REPO="s3://scale/repo", CLOUDFS_PASSWORD=PASSWORD,
                        XDG_CACHE_HOME=str(work / "cache"), XDG_STATE_HOME=str(work / "xdg-state"))
        os.environ.update({k: v for k, v in server.env().items() if k.startswith("AWS_")})

    def cloudfs(self, *args) -> tuple[float, float]:
        return run_command([*CLOUDFS, *map(str, args)], self.env)

    def blob_cache(self) -> Path:
        found = list((self.work / "cache").glob("cloudfs/*/blobs"))
        return found[0] if found else self.work / "no-blob-cache"

    # -- once -------------------------------------------------------------------------------------

    def prepare(self) -> None:
        self.server.client().create_bucket(Bucket="scale")
        self.cloudfs("init")
        started = time.perf_counter()
        count = trio.run(self._store_synthetic_index)
        print(f"{self.args.blobs:,} synthetic blobs in {count} index objects: "
              f"{time.perf_counter() - started:.0f} s to write", flush=True)
        drop_caches()
        seconds, rss = self.cloudfs("snapshots")
        print(f"local index built from them (`cloudfs snapshots`): {seconds:.1f} s, {rss:.0f} MiB", flush=True)

    async def _store_synthetic_index(self) -> int:
        store = S3Store("scale", "repo", S3Options(endpoint_url=self.server.endpoint))
        repo = await Repository.open(store, PASSWORD.encode(), use_cache=False)
        limiter, count = trio.Semaphore(PUTS_AT_ONCE), 0
        try:
            async with trio.open_nursery() as nursery:
                for name, data in sealed_objects(repo.master, self.args.blobs):
                    await limiter.acquire()
                    nursery.start_soon(self._put, store, name, data, limiter)
                    count += 1
        finally:
            await repo.close()
        return count

    @staticmethod
    async def _put(store, name: str, data: bytes, limiter) -> None:
        try:
            await store.put(name, data)
        finally:
            limiter.release()

    # -- one run ----------------------------------------------------------------------------------------

    def run(self, number: int, restic: Restic | None) -> dict:
        source = self.work / f"run{number}" / "source"
        seconds = make_tree(source, self.args.files, self.args.dirs, seed=number)
        print(f"run {number}: {self.args.files:,} files written in {seconds:.0f} s", flush=True)
        mountpoint, state = self.work / f"run{number}" / "mnt", self.work / f"run{number}" / "state"
        mountpoint.mkdir()
        figures: dict = {}
        try:
            figures.update(self._first(source, mountpoint, state))
            if restic:
                figures.update(self._restic_backup(restic, source, "restic_first"))
            edited = self._edit(mountpoint)
            figures.update(self._incremental(mountpoint, edited))
            if restic:
                figures.update(self._restic_backup(restic, source, "restic_incremental"))
            figures.update(self._remount(source, mountpoint, state))
        finally:
            subprocess.run([*CLOUDFS, "umount", str(mountpoint)], env=self.env, capture_output=True)
        figures.update(self._browse(source, number))
        figures.update(self._restore(source, number))
        if restic:
            figures.update(self._restic_restore(restic, source, number))
        shutil.rmtree(self.work / f"run{number}", ignore_errors=True)
        print(f"run {number}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(figures.items())), flush=True)
        return figures

    def _mount(self, source: Path, mountpoint: Path, state: Path) -> None:
        self.cloudfs("mount", "--daemon", "--interval", "3600", "--state-dir", state, source, mountpoint)

    def _first(self, source: Path, mountpoint: Path, state: Path) -> dict:
        drop_caches()
        started = time.perf_counter()
        self._mount(source, mountpoint, state)
        self.cloudfs("snapshot", "--wait", mountpoint)
        seconds = time.perf_counter() - started
        pid = _lock_pid(state)
        peak = memory_mib(pid, "VmHWM")
        time.sleep(5)
        return {"first_s": seconds, "first_peak_mib": peak, "first_steady_mib": memory_mib(pid, "VmRSS")}

    def _edit(self, mountpoint: Path) -> int:
        """Append to 10 files in 10 directories, through the mount."""
        edited = 0
        directories = sorted(path for path in mountpoint.iterdir() if path.name.startswith("d"))
        for directory in directories[1:EDITS + 1] or directories[:1]:
            with open(directory / "f00000.dat", "ab") as handle:
                edited += handle.write(os.urandom(100))
        return edited

    def _incremental(self, mountpoint: Path, edited: int) -> dict:
        before = stored_bytes(self.bucket_dir)
        drop_caches()
        seconds, _ = self.cloudfs("snapshot", "--wait", mountpoint)
        return {"incremental_s": seconds, "incremental_stored_kib": (stored_bytes(self.bucket_dir) - before) / 1024,
                "edited_kib": edited / 1024}

    def _remount(self, source: Path, mountpoint: Path, state: Path) -> dict:
        self.cloudfs("umount", mountpoint)
        drop_caches()
        started = time.perf_counter()
        self._mount(source, mountpoint, state)
        answering = time.perf_counter() - started
        while not control.request(state, "status").get("reconciled"):
            time.sleep(0.02)
        reconciled = time.perf_counter() - started
        pid = _lock_pid(state)
        return {"remount_s": answering, "remount_reconciled_s": reconciled,
                "remount_peak_mib": memory_mib(pid, "VmHWM")}

    def _browse(self, source: Path, number: int) -> dict:
        out = {}
        for what in ("find", "ls"):
            shutil.rmtree(self.blob_cache(), ignore_errors=True)
            mountpoint = self.work / f"browse{number}-{what}"
            mountpoint.mkdir()
            drop_caches()
            self.cloudfs("browse", mountpoint, "--daemon", "--source", source)
            try:
                latest = mountpoint / "latest"
                command = ["find", "-H", latest] if what == "find" else ["ls", "-l", latest / "d0000"]
                out[f"{what}_s"], _ = run_command(command, self.env)
                out[f"{what}_peak_mib"] = memory_mib(self._browse_pid(), "VmHWM")
            finally:
                self.cloudfs("umount", mountpoint)
        return out

    def _browse_pid(self) -> int:
        """The running browse mount's process (the one holding its state directory)."""
        for state in Path(self.env["XDG_STATE_HOME"]).glob("cloudfs/browse-*"):
            holder = StateDir(state).holder()
            if holder is not None:
                return holder.pid
        raise SystemExit("no browse mount is running")

    def _restore(self, source: Path, number: int) -> dict:
        target = self.work / f"restored{number}"
        drop_caches()
        seconds, peak = self.cloudfs("restore", "latest", target, "--source", source, "--no-progress")
        shutil.rmtree(target, ignore_errors=True)
        return {"restore_s": seconds, "restore_peak_mib": peak}

    def _restic_backup(self, restic: Restic, source: Path, key: str) -> dict:
        drop_caches()
        seconds, peak = run_command(["restic", "backup", "--quiet", str(source)], restic.env)
        return {f"{key}_s": seconds, f"{key}_peak_mib": peak}

    def _restic_restore(self, restic: Restic, source: Path, number: int) -> dict:
        target = self.work / f"restic-restored{number}"
        drop_caches()
        seconds, peak = run_command(["restic", "restore", "latest", "--path", str(source), "--target",
                                     str(target)], restic.env)
        shutil.rmtree(target, ignore_errors=True)
        return {"restic_restore_s": seconds, "restic_restore_peak_mib": peak}


def _lock_pid(state: Path) -> int:
    return json.loads((Path(state) / "lock").read_text())["pid"]


# -- the report ----------------------------------------------------------------------------------------

#: (label, key, goal, test of the goal on the medians and the file count; None: no goal)
ROWS = [
    ("first snapshot, s", "first_s", "≤ 0.5 × restic", lambda m, n: _ratio(m, "first_s", "restic_first_s") <= 0.5),
    ("  daemon peak RSS, MiB", "first_peak_mib", "≤ 120 (250 k), ≤ 150 (1 M)",
     lambda m, n: m["first_peak_mib"] <= (120 if n <= 250_000 else 150)),
    ("  daemon RSS 5 s after, MiB", "first_steady_mib", "≤ 100 (1 M)",
     lambda m, n: m["first_steady_mib"] <= 100 if n >= 1_000_000 else None),
    ("incremental after 10 edits, s (whole command)", "incremental_s", "≤ 0.5 s",
     lambda m, n: m["incremental_s"] <= 0.5),
    ("  store gained, KiB", "incremental_stored_kib", "∝ changed directories", None),
    ("remount until answering, s", "remount_s", "≤ 3 s", lambda m, n: m["remount_s"] <= 3),
    ("remount until reconciled, s", "remount_reconciled_s", "", None),
    ("  daemon peak RSS, MiB", "remount_peak_mib", "≤ 100", lambda m, n: m["remount_peak_mib"] <= 100),
    ("browse: find over latest/, s", "find_s", "≤ 6 s (250 k)",
     lambda m, n: m["find_s"] <= 6 if n <= 250_000 else None),
    ("  browse daemon peak RSS, MiB", "find_peak_mib", "≤ 150", lambda m, n: m["find_peak_mib"] <= 150),
    ("browse: ls -l of 10,000 entries, s", "ls_s", "≤ 0.5 s", lambda m, n: m["ls_s"] <= 0.5),
    ("restore, s", "restore_s", "≤ 0.5 × restic",
     lambda m, n: _ratio(m, "restore_s", "restic_restore_s") <= 0.5),
    ("  restore peak RSS, MiB", "restore_peak_mib", "≤ 200", lambda m, n: m["restore_peak_mib"] <= 200),
]
RESTIC = {"first_s": "restic_first_s", "first_peak_mib": "restic_first_peak_mib",
          "incremental_s": "restic_incremental_s", "restore_s": "restic_restore_s",
          "restore_peak_mib": "restic_restore_peak_mib"}


def _ratio(medians: dict, ours: str, theirs: str) -> float:
    return medians[ours] / medians[theirs] if theirs in medians else float("nan")


def report(results: list[dict], args) -> None:
    medians = {key: statistics.median(r[key] for r in results) for key in results[0]}
    rows = []
    for label, key, goal, met in ROWS:
        theirs = medians.get(RESTIC.get(key, ""))
        verdict = {None: "", True: "met", False: "missed"}[None if met is None else met(medians, args.files)]
        rows.append([label, f"{medians[key]:.2f}", "–" if theirs is None else f"{theirs:.2f}",
                     "–" if theirs is None else f"{medians[key] / theirs:.2f}", goal, verdict])
    print(f"\n{args.files:,} files in {args.dirs:,} directories, {args.blobs:,} synthetic blobs in the index; "
          f"medians of {len(results)} run(s); page cache dropped before each step; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print_table(["measure", "cloudfs", "restic", "ratio", "goal", ""], rows)


# -- the driver ------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--write-tree":
        root, first, sizes, seed = sys.argv[2:]
        write_directories(Path(root), int(first), json.loads(sizes), int(seed))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--dirs", type=int, default=1_000)
    parser.add_argument("--blobs", type=int, default=16_000_000, help="synthetic blobs in the index")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp", help="where to work (default /var/tmp)")
    parser.add_argument("--no-restic", dest="restic", action="store_false")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cloudfs-bench-scale-", dir=args.dir))
    os.environ["XDG_STATE_HOME"] = str(work / "xdg-state")
    server = locals3.start_rclone(work / "s3")
    try:
        bench = Bench(work, server, args)
        bench.prepare()
        restic = None
        if args.restic and restic_available():
            server.client().create_bucket(Bucket="restic")
            restic = Restic(server, "restic", work / "restic-cache")
        elif args.restic:
            print("restic could not be installed: its columns are skipped")
        results = [bench.run(number, restic) for number in range(1, args.runs + 1)]
        report(results, args)
    finally:
        subprocess.run(["sh", "-c", f"grep -o '{work}[^ ]*' /proc/mounts | xargs -r -n1 fusermount3 -u -z"],
                       capture_output=True)
        locals3.stop(server.proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
