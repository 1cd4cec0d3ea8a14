"""cloudfs restore and the snapshot mount against restic 0.14, on the same S3 server.

    tools/bench restore [--dir DIR] [--gib 2] [--runs 3] [--no-restic]

Data: one file of GIB GiB of random bytes, and Python's standard library
without site-packages (7,733 files here). Each is backed up once into a
cloudfs repository (the uploader's scan) and into a restic repository, both on
one `rclone serve s3`. Then in every run, with the page cache dropped and a
fresh local cache before each measurement:

- restore of the big file: `cloudfs restore` / `restic restore`
- `cp -a` of the big file out of `cloudfs browse` / `restic mount`
- `cp -a` of the library tree out of each mount (and natively, from disk)
- first listing: `find -ls` (and, on another fresh mount, `ls -lR`, which also
  asks for two xattrs per file) of the library snapshot right after the mount
  is ready
- peak memory (VmHWM / max RSS) of the browse daemon and of the restore

Medians over the runs are printed with the ratio cloudfs/restic. Nothing is
deleted until the end (deleting on this disk, mounted with `discard`, slows
what follows). restic is installed with apt-get if missing; --no-restic skips
its columns.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, print_table  # noqa: E402

import trio  # noqa: E402

from cloudfs import locals3  # noqa: E402
from cloudfs.browse.names import Catalog  # noqa: E402
from cloudfs.system.statedir import StateDir  # noqa: E402
from cloudfs.repo import Repository  # noqa: E402
from cloudfs.store import S3Options, open_store  # noqa: E402
from cloudfs.uploader import snapshot_directory  # noqa: E402

CLOUDFS = [sys.executable, "-m", "cloudfs"]
PASSWORD = "benchmark passphrase"


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def timed(command: list, env: dict, **kwargs) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, **kwargs)
    elapsed = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{result.stdout}{result.stderr}")
    return elapsed


def timed_child(command: list, env: dict) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of a command."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{command} failed: {process.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss


def library_tree(destination: Path) -> int:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    shutil.copytree(stdlib, destination, symlinks=True, ignore=shutil.ignore_patterns("site-packages"))
    return sum(len(files) for _, _, files in os.walk(destination))


class Bench:
    def __init__(self, work: Path, server, gib: int, with_restic: bool):
        self.work, self.server, self.gib, self.with_restic = work, server, gib, with_restic
        self.big_dir, self.tree_dir = work / "data" / "big", work / "data" / "stdlib"
        self.env = server.env()
        self.env.update(CLOUDFS_REPO="s3://cloudfs-bench/repo", CLOUDFS_PASSWORD=PASSWORD,
                        RESTIC_PASSWORD=PASSWORD,
                        RESTIC_REPOSITORY=f"s3:{server.endpoint}/restic-bench")
        self.counter = 0

    def fresh(self, name: str) -> Path:
        self.counter += 1
        path = self.work / "out" / f"{self.counter:03d}-{name}"
        path.mkdir(parents=True)
        return path

    def cloudfs_env(self) -> dict:
        """A fresh local cache and state for each measurement (a cold start)."""
        fresh = self.fresh("cache")
        return {**self.env, "XDG_CACHE_HOME": str(fresh / "cache"), "XDG_STATE_HOME": str(fresh / "state")}

    # -- setting up ------------------------------------------------------------------

    def prepare(self) -> None:
        self.big_dir.mkdir(parents=True)
        with open(self.big_dir / "big.bin", "wb") as handle:
            for _ in range(self.gib * 1024):
                handle.write(os.urandom(1 << 20))
        self.files = library_tree(self.tree_dir)
        print(f"data: {self.gib} GiB file; library tree of {self.files} files", flush=True)
        timed([*CLOUDFS, "init", "--create-bucket"], self.env)
        started = time.perf_counter()
        self.big_snapshot, self.tree_snapshot = trio.run(self._cloudfs_backups)
        print(f"cloudfs backups: {time.perf_counter() - started:.1f} s", flush=True)
        if self.with_restic:
            self.server.client().create_bucket(Bucket="restic-bench")
            timed(["restic", "init"], self.env)
            started = time.perf_counter()
            self.restic_big = self._restic_backup(self.big_dir)
            self.restic_tree = self._restic_backup(self.tree_dir)
            print(f"restic backups: {time.perf_counter() - started:.1f} s", flush=True)

    async def _cloudfs_backups(self):
        for key, value in self.env.items():
            if key.startswith(("AWS_", "CLOUDFS_")):
                os.environ[key] = value
        store = open_store(self.env["CLOUDFS_REPO"], S3Options(endpoint_url=self.server.endpoint))
        repo = await Repository.open(store, PASSWORD.encode(), use_cache=False)
        try:
            big = await snapshot_directory(repo, self.big_dir)
            tree = await snapshot_directory(repo, self.tree_dir)
            catalog = Catalog(await repo.snapshots())
            return catalog.time_name(big), catalog.time_name(tree)
        finally:
            await repo.close()

    def _restic_backup(self, directory: Path) -> str:
        result = subprocess.run(["restic", "backup", "--json", "--host", "bench", str(directory)],
                                env={**self.env, "RESTIC_CACHE_DIR": str(self.fresh("restic-cache"))},
                                capture_output=True, text=True, check=True)
        summary = [json.loads(line) for line in result.stdout.splitlines() if '"summary"' in line][-1]
        return summary["snapshot_id"]

    # -- measurements -------------------------------------------------------------------------

    def restore_big(self) -> dict:
        out = {}
        drop_caches()
        seconds, rss = timed_child([*CLOUDFS, "restore", f"{self.big_snapshot}:big.bin",
                                    self.fresh("restore") / "big.bin", "--no-progress"], self.cloudfs_env())
        out["cloudfs"], out["cloudfs_rss_mib"] = seconds, rss / 1024
        if self.with_restic:
            drop_caches()
            out["restic"], _ = timed_child(
                ["restic", "restore", self.restic_big, "--target", str(self.fresh("restic-restore"))],
                {**self.env, "RESTIC_CACHE_DIR": str(self.fresh("restic-cache"))})
        return out

    def copies(self) -> dict:
        out = {}
        drop_caches()
        out["native_big"] = timed(["cp", "-a", str(self.big_dir / "big.bin"), str(self.fresh("native"))], self.env)
        drop_caches()
        out["native_tree"] = timed(["cp", "-a", str(self.tree_dir), str(self.fresh("native"))], self.env)
        out.update(self._cloudfs_copies())
        if self.with_restic:
            out.update(self._restic_copies())
        return out

    def _cloudfs_copies(self) -> dict:
        out = {}
        mountpoint = self.fresh("mnt")
        for what in ("tree", "big"):
            env = self.cloudfs_env()
            drop_caches()
            timed([*CLOUDFS, "browse", str(mountpoint), "--daemon"], env)
            try:
                tree = str(mountpoint / self.tree_snapshot)
                if what == "tree":
                    out["cloudfs_find"] = timed(["find", tree, "-ls"], env)
                    drop_caches()
                    out["cloudfs_tree"] = timed(["cp", "-a", tree, str(self.fresh("cloudfs-tree"))], env)
                else:
                    out["cloudfs_listing"] = timed(["ls", "-lR", tree], env)
                    out["cloudfs_big"] = timed(["cp", "-a", str(mountpoint / self.big_snapshot / "big.bin"),
                                                str(self.fresh("cloudfs-big"))], env)
                out[f"cloudfs_{what}_rss_mib"] = _peak_rss_mib(env, mountpoint)
            finally:
                timed([*CLOUDFS, "umount", str(mountpoint)], env)
        return out

    def _restic_copies(self) -> dict:
        out = {}
        mountpoint = self.fresh("restic-mnt")
        env = {**self.env, "RESTIC_CACHE_DIR": str(self.fresh("restic-cache"))}
        for what in ("tree", "big"):
            drop_caches()
            process = subprocess.Popen(["restic", "mount", str(mountpoint)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                snapshot = self.restic_tree if what == "tree" else self.restic_big
                folder = mountpoint / "ids" / snapshot[:8]
                deadline = time.monotonic() + 60
                while not (mountpoint / "ids").is_dir() and time.monotonic() < deadline:
                    time.sleep(0.05)
                tree = mountpoint / "ids" / self.restic_tree[:8] / str(self.tree_dir).lstrip("/")
                if what == "tree":
                    out["restic_find"] = timed(["find", str(tree), "-ls"], env)
                    drop_caches()
                    out["restic_tree"] = timed(["cp", "-a", str(tree), str(self.fresh("restic-tree"))], env)
                else:
                    out["restic_listing"] = timed(["ls", "-lR", str(tree)], env)
                    source = folder / str(self.big_dir / "big.bin").lstrip("/")
                    out["restic_big"] = timed(["cp", "-a", str(source), str(self.fresh("restic-big"))], env)
            finally:
                subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
        return out


def _peak_rss_mib(env: dict, mountpoint: Path) -> float:
    states = Path(env["XDG_STATE_HOME"]) / "cloudfs"
    holder = StateDir(next(states.glob("browse-*"))).holder()
    for line in Path(f"/proc/{holder.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ensure_restic() -> bool:
    if shutil.which("restic"):
        return True
    result = subprocess.run(["apt-get", "install", "-y", "-qq", "restic"], capture_output=True)
    return result.returncode == 0 and shutil.which("restic") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/var/tmp", help="where to work (default /var/tmp)")
    parser.add_argument("--gib", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-restic", dest="restic", action="store_false")
    args = parser.parse_args()
    with_restic = args.restic and ensure_restic()
    if args.restic and not with_restic:
        print("restic could not be installed: its columns are skipped")
    work = Path(tempfile.mkdtemp(prefix="cloudfs-bench-restore-", dir=args.dir))
    server = locals3.start_rclone(work / "s3")
    try:
        server.client().create_bucket(Bucket="cloudfs-bench")
        bench = Bench(work, server, args.gib, with_restic)
        bench.prepare()
        results: list[dict] = []
        for run in range(args.runs):
            figures = {**bench.restore_big(), **bench.copies()}
            results.append(figures)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(figures.items())), flush=True)
        report(results, args, bench.files, with_restic)
    finally:
        locals3.stop(server.proc)
        shutil.rmtree(work, ignore_errors=True)


def report(results: list[dict], args, files: int, with_restic: bool) -> None:
    def value(key):
        return median([r[key] for r in results]) if key in results[0] else None

    def cell(seconds):
        return "–" if seconds is None else f"{seconds:.2f}"

    def ratio(ours, theirs):
        return "–" if ours is None or theirs is None else f"{ours / theirs:.2f}"

    rows = [
        [f"restore of the {args.gib} GiB file, s", cell(value("cloudfs")), cell(value("restic")),
         ratio(value("cloudfs"), value("restic")), "≤ 0.33"],
        [f"cp -a of the {args.gib} GiB file from the mount, s", cell(value("cloudfs_big")),
         cell(value("restic_big")), ratio(value("cloudfs_big"), value("restic_big")), "≤ 0.25"],
        [f"cp -a of the library tree ({files} files) from the mount, s", cell(value("cloudfs_tree")),
         cell(value("restic_tree")), ratio(value("cloudfs_tree"), value("restic_tree")), "≤ 0.25"],
        ["find -ls of the tree right after mounting, s", cell(value("cloudfs_find")),
         cell(value("restic_find")), ratio(value("cloudfs_find"), value("restic_find")), "≤ 1 s"],
        ["ls -lR of the tree right after mounting, s", cell(value("cloudfs_listing")),
         cell(value("restic_listing")), ratio(value("cloudfs_listing"), value("restic_listing")), "≤ 1 s"],
        ["native cp -a (file / tree), s", f"{cell(value('native_big'))} / {cell(value('native_tree'))}",
         "", "", ""],
        ["peak RSS, MiB: restore / mount (file) / mount (tree)",
         f"{value('cloudfs_rss_mib'):.0f} / {value('cloudfs_big_rss_mib'):.0f} / "
         f"{value('cloudfs_tree_rss_mib'):.0f}", "", "", ""],
    ]
    print(f"\nmedian of {args.runs} runs, page cache dropped and local caches empty before each, "
          f"{os.cpu_count()} cores{'' if with_restic else ', restic skipped'}")
    print_table(["measurement", "cloudfs", "restic 0.14", "cloudfs/restic", "goal"], rows)


if __name__ == "__main__":
    main()
