"""tools/bench seal: snapshots taken by the live mount, on the local S3 server.

    tools/bench seal [--gib 2] [--big-gib 8] [--runs 3] [--stall-gib 1] [--dir DIR]

Through a real `cloudfs mount --repo` (a daemon, as users run it):
  initial      the first, full snapshot of a GIB random file (mount to commit)
  incremental  after 16 scattered 64 KiB writes to that file through the mount:
               seal-to-commit (the daemon's clock), bytes read, bytes the store
               gained (its own directory); --big-gib repeats it on a bigger file
               (created before mounting) to show the cost does not grow
  stall        a writer's 4 KiB writes while STALL_GIB of dirty data is sealed
               and uploaded: O_DIRECT writes (each one a round trip to the
               daemon, so they see any stall of its loop) and buffered ones
               (what most programs do); p50/p99/max against before the seal
daemon RSS is sampled every 20 ms throughout; the peak of each phase is shown.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402

import trio  # noqa: E402

from cloudfs import control, crypto, locals3  # noqa: E402
from cloudfs.repo import Repository  # noqa: E402
from cloudfs.store import S3Options, S3Store  # noqa: E402

CLOUDFS = [sys.executable, "-m", "cloudfs"]
PASSWORD = "benchmark passphrase"
REGION = 64 << 10


class RssSampler:
    """Samples a process's resident memory in a thread; peak() per phase."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.samples.append((time.monotonic(), int(line.split()[1]) * 1024))
            except OSError:
                return

    def peak(self, since: float) -> int:
        return max((rss for at, rss in self.samples if at >= since), default=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Bench:
    def __init__(self, work: Path, server):
        self.work = work
        self.server = server
        self.source = work / "source"
        self.mountpoint = work / "mnt"
        self.state = work / "state"
        self.source.mkdir()
        self.mountpoint.mkdir()
        os.environ.update({k: v for k, v in server.env().items() if k.startswith("AWS_")})
        client = server.client()
        client.create_bucket(Bucket="bench")
        store = S3Store("bench", "repo", S3Options(endpoint_url=server.endpoint))
        trio.run(lambda: Repository.init(store, PASSWORD.encode(), kdf=crypto.tune_kdf(0.05), use_cache=False))
        self.env = dict(server.env(), CLOUDFS_REPO="s3://bench/repo", CLOUDFS_PASSWORD=PASSWORD,
                        XDG_CACHE_HOME=str(work / "cache"))
        self.rss: RssSampler | None = None

    def cloudfs(self, *args: str) -> None:
        subprocess.run([*CLOUDFS, *args], check=True, env=self.env)

    def mount(self) -> None:
        self.cloudfs("mount", "--daemon", "--interval", "3600", "--state-dir", str(self.state),
                     str(self.source), str(self.mountpoint))
        pid = json.loads((self.state / "lock").read_text())["pid"]
        self.rss = RssSampler(pid)

    def umount(self) -> None:
        if self.rss:
            self.rss.stop()
        subprocess.run([*CLOUDFS, "umount", str(self.mountpoint)], env=self.env, capture_output=True)

    def request(self, op: str, **arguments) -> dict:
        return control.request(self.state, op, timeout=None, **arguments)

    def stored_bytes(self) -> int:
        root = self.server.data_dir / "bench" / "repo"
        return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        for _ in range(size // (64 << 20)):
            handle.write(os.urandom(64 << 20))
        handle.write(os.urandom(size % (64 << 20)))


def scatter(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(16):
            os.pwrite(fd, os.urandom(REGION), rng.randrange(0, size - REGION))
        os.fsync(fd)
    finally:
        os.close(fd)


def incremental(bench: Bench, name: str, size: int, runs: int) -> list[dict]:
    results = []
    for run in range(runs):
        scatter(bench.mountpoint / name, size, seed=run)
        stored = bench.stored_bytes()
        started = time.perf_counter()
        bench.request("snapshot", wait=True)
        client_s = time.perf_counter() - started
        entry = bench.request("status")["history"][-1]
        results.append({"seal_to_commit_s": entry["seal_to_commit_s"], "client_s": client_s,
                        "read": entry["bytes_read"], "stored": bench.stored_bytes() - stored,
                        "stall_ms": entry["stall_ms"]})
    return results


def stall(bench: Bench, gib: float, kind: str) -> dict:
    """Latencies of one writer's 4 KiB writes into a GIB file while it is sealed and
    uploaded, against before. `kind` "buffered" is what most programs do (each write
    still asks the daemon for security.capability); "direct" (O_DIRECT) makes every
    write a round trip through the daemon's loop. One writer per round: two on one
    file would wait for each other's inode lock, not for the daemon."""
    size = int(gib * (1 << 30))
    path = bench.mountpoint / f"dirty-{kind}.bin"
    with open(path, "wb") as handle:
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def writer() -> None:
        fd = os.open(path, os.O_WRONLY | (os.O_DIRECT if kind == "direct" else 0))
        buffer = mmap.mmap(-1, 4096)
        buffer.write(os.urandom(4096))
        rng = random.Random(kind)
        try:
            while not stop.is_set():
                offset = rng.randrange(size // 4096) * 4096
                started = time.perf_counter()
                os.pwrite(fd, buffer, offset)
                samples.append((started, time.perf_counter() - started))
                time.sleep(0.001)
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(2.0)
    asked_at = time.perf_counter()
    bench.request("snapshot")
    sealed_at = time.perf_counter()
    bench.request("flush")
    committed_at = time.perf_counter()
    stop.set()
    thread.join()
    entry = bench.request("status")["history"][-1]
    return {"seal_to_commit_s": entry["seal_to_commit_s"], "stall_ms": entry["stall_ms"],
            "flush_ms": entry["flush_ms"], "cow_copies": entry["cow_copies"], "cow_bytes": entry["cow_bytes"],
            "before": percentiles([lat for at, lat in samples if at < asked_at]),
            "sealing": percentiles([lat for at, lat in samples if asked_at <= at <= sealed_at]),
            "during": percentiles([lat for at, lat in samples if sealed_at < at <= committed_at]),
            "all": percentiles([lat for at, lat in samples if asked_at <= at <= committed_at]),
            "writes": sum(1 for at, _ in samples if asked_at <= at <= committed_at)}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    return {"p50": statistics.median(ordered) * 1000, "p99": ordered[int(len(ordered) * 0.99) - 1] * 1000,
            "max": ordered[-1] * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--big-gib", type=float, default=0, help="also a file this big (flat cost)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stall-gib", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, help="where to work (default: a new directory in /var/tmp)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cloudfs-bench-seal-", dir=args.dir or "/var/tmp"))
    server = bench = None
    try:
        server = locals3.start_rclone(work / "s3")
        bench = Bench(work, server)
        run(bench, args)
    finally:
        if bench is not None:
            bench.umount()
        if server is not None:
            locals3.stop(server.proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run(bench: Bench, args) -> None:
    files = {"file.bin": int(args.gib * (1 << 30))}
    if args.big_gib:
        files["big.bin"] = int(args.big_gib * (1 << 30))
    for name, size in files.items():
        write_random_file(bench.source / name, size)
    total = sum(files.values())
    started = time.perf_counter()
    bench.mount()
    bench.request("flush")
    initial_s = time.perf_counter() - started
    rss_initial = bench.rss.peak(0)

    rows = [["initial full snapshot", f"{total / 2**30:g} GiB", f"{initial_s:.1f} s",
             f"{total / initial_s / 1e6:.0f} MB/s", "", f"{rss_initial / 2**20:.0f}"]]
    phase = time.monotonic()
    for name, size in files.items():
        results = incremental(bench, name, size, args.runs)
        median = lambda key: statistics.median(r[key] for r in results)  # noqa: E731
        rows.append([f"16 x 64 KiB in {size / 2**30:g} GiB", f"read {median('read') / 2**20:.2f} MiB",
                     f"{median('seal_to_commit_s') * 1000:.0f} ms (client {median('client_s') * 1000:.0f} ms)",
                     f"stored {median('stored') / 2**10:.0f} KiB", f"stall {median('stall_ms'):.2f} ms",
                     f"{bench.rss.peak(phase) / 2**20:.0f}"])
    print(f"local rclone S3, {os.cpu_count()} cores, runs {args.runs} (medians)")
    print_table(["scenario", "size / read", "time", "rate / stored", "seal stall", "daemon RSS MiB"], rows)
    print()
    table = []
    for kind in ("buffered", "direct"):
        phase = time.monotonic()
        figures = stall(bench, args.stall_gib, kind)
        row = [f"4 KiB {kind} writes"]
        for window in ("before", "sealing", "during", "all"):
            figure = figures[window]
            row.append(f"{figure['p50']:.2f} / {figure['p99']:.1f} / {figure['max']:.0f}")
        row += [str(figures["writes"]), f"{figures['flush_ms']:.1f} + {figures['stall_ms']:.2f}",
                f"{figures['seal_to_commit_s']:.1f} s", f"{figures['cow_copies']}",
                f"{bench.rss.peak(phase) / 2**20:.0f}"]
        table.append(row)
    print(f"a writer while {args.stall_gib:g} GiB of dirty data is sealed and uploaded "
          "(latency p50 / p99 / max, ms):")
    print_table(["writer", "before", "request to sealed", "sealed to committed", "request to committed",
                 "writes", "flush + seal ms", "to commit", "COW copies", "RSS MiB"], table)


if __name__ == "__main__":
    sys.exit(main())
