"""The live mount against the same disk natively, and with journaling off.

    tools/bench live [--dir DIR] [--gib 2] [--runs 3] [--files 20000] [--random-writes 20000]
                     [--tripwire]

In one run, for each target (native directory, mount, mount with --no-journal):
sequential write of 1 MiB blocks with an fsync at the end, sequential read after
dropping the page cache, 4 KiB random writes into that file (fsync at the end),
and creating FILES files of 4 KiB in directories of 1,000. The targets take turns
within each run; medians over the runs are printed with ratios to native and the
cost of journaling (mount vs mount --no-journal). With --tripwire a fourth
target, mount --no-tripwire, gives the cost of the ransomware tripwire, and
every target also rewrites FILES/4 files of 4 KiB that existed before the
mount, in place with text (an existing file written at offset 0 is what the
tripwire judges), syncing at the end. Nothing is deleted until the end:
on this machine's disk (mounted with `discard`) deletions slow everything after them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLOUDFS = [sys.executable, "-m", "cloudfs"]
TARGETS = ("native", "mount", "mount --no-journal")
TRIPWIRE_TARGET = "mount --no-tripwire"
TEXT = (b"The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n" * 64)[:4096]
BLOCK = 1 << 20


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def sequential_write(path: Path, size: int) -> float:
    block = os.urandom(BLOCK)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // BLOCK):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size / (time.perf_counter() - start)


def sequential_read(path: Path) -> float:
    start = time.perf_counter()
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, BLOCK):
            total += len(chunk)
    finally:
        os.close(fd)
    return total / (time.perf_counter() - start)


def random_writes(path: Path, size: int, count: int, seed: int) -> float:
    rng = random.Random(seed)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(count)]
    block = os.urandom(4096)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in offsets:
            os.pwrite(fd, block, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return count / (time.perf_counter() - start)


def creates(directory: Path, count: int) -> float:
    data = b"c" * 4096
    start = time.perf_counter()
    for group in range(count // 1000):
        subdirectory = directory / f"d{group}"
        subdirectory.mkdir()
        for index in range(1000):
            fd = os.open(subdirectory / f"f{index}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.close(fd)
    return count / (time.perf_counter() - start)


def existing_files(directory: Path, count: int) -> list[Path]:
    """`count` files of 4 KiB made before mounting (the tripwire counts them as old)."""
    paths = []
    for group in range(max(1, count // 1000)):
        subdirectory = directory / f"old{group}"
        subdirectory.mkdir()
        for index in range(min(count, 1000)):
            path = subdirectory / f"f{index}"
            path.write_bytes(TEXT)
            paths.append(path)
    return paths


def rewrites(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_WRONLY)
        os.write(fd, TEXT)
        os.close(fd)
    os.sync()
    return len(paths) / (time.perf_counter() - start)


def daemon_cpu_seconds(state_dir: Path) -> float:
    """User + system CPU time the mount's daemon has used so far (0 for native)."""
    try:
        pid = json.loads((state_dir / "lock").read_text())["pid"]
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, KeyError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(target: str, base: Path, args, seed: int) -> dict[str, float]:
    source, state = base / "source", base / "state"
    source.mkdir(parents=True)
    old = existing_files(source, args.files // 4) if args.tripwire else []
    if target != "native":
        options = target.split()[1:]
        subprocess.run([*CLOUDFS, "mount", "--daemon", "--state-dir", str(state),
                        *options, str(source)], check=True, cwd=ROOT)
    try:
        size = int(args.gib * (1 << 30))
        cpu = daemon_cpu_seconds(state)
        results = {"seq write MB/s": sequential_write(source / "big", size) / 1e6}
        results["  daemon CPU ms/GiB written"] = (daemon_cpu_seconds(state) - cpu) * 1000 / args.gib
        drop_caches()
        results["seq read MB/s"] = sequential_read(source / "big") / 1e6
        results["4k random writes/s"] = random_writes(source / "big", size, args.random_writes, seed)
        cpu = daemon_cpu_seconds(state)
        results["creates/s"] = creates(source, args.files)
        results["  daemon CPU us/create"] = (daemon_cpu_seconds(state) - cpu) * 1e6 / args.files
        if old:
            cpu = daemon_cpu_seconds(state)
            results["rewrites/s"] = rewrites(old)
            results["  daemon CPU us/rewrite"] = (daemon_cpu_seconds(state) - cpu) * 1e6 / len(old)
        return results
    finally:
        if target != "native":
            subprocess.run([*CLOUDFS, "umount", str(source)], check=True, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to work (default: a new directory in /var/tmp)")
    parser.add_argument("--gib", type=float, default=2.0, help="size of the sequential file (default 2)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--random-writes", type=int, default=20000)
    parser.add_argument("--tripwire", action="store_true",
                        help="also mount --no-tripwire, and rewrite files that existed before the mount")
    args = parser.parse_args()
    targets = TARGETS + ((TRIPWIRE_TARGET,) if args.tripwire else ())
    work = Path(tempfile.mkdtemp(prefix="cloudfs-bench-", dir=args.dir or "/var/tmp"))
    print(f"working in {work} ({args.gib} GiB, {args.runs} runs, {args.files} files); "
          f"dropping caches: {'yes' if drop_caches() else 'not allowed'}", flush=True)
    samples: dict[str, dict[str, list[float]]] = {target: {} for target in targets}
    try:
        for run in range(args.runs):
            for target in targets:
                base = work / f"run{run}" / target.replace(" ", "")
                for metric, value in measure(target, base, args, seed=run).items():
                    samples[target].setdefault(metric, []).append(value)
                print(f"run {run + 1}/{args.runs} {target}: " + ", ".join(
                    f"{metric} {values[-1]:,.0f}" for metric, values in samples[target].items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metrics = list(samples["native"])
    medians = {target: {metric: median(samples[target][metric]) for metric in metrics} for target in targets}
    rows = []
    for metric in metrics:
        native, mounted, plain = (medians[target][metric] for target in TARGETS)
        untripped = [medians[TRIPWIRE_TARGET][metric]] if args.tripwire else []
        if "CPU" in metric:  # lower is better, and native has no daemon
            rows.append([metric, "-", f"{mounted:,.0f}", f"{plain:,.0f}", "-",
                         f"{(mounted / plain - 1) * 100:+.1f}%",
                         *(f"{untripped[0]:,.0f}" for _ in untripped),
                         *(f"{(mounted / untripped[0] - 1) * 100:+.1f}%" for _ in untripped)])
        else:
            rows.append([metric, f"{native:,.0f}", f"{mounted:,.0f}", f"{plain:,.0f}",
                         f"{mounted / native:.2f}x", f"{(1 - mounted / plain) * 100:+.1f}%",
                         *(f"{untripped[0]:,.0f}" for _ in untripped),
                         *(f"{(1 - mounted / untripped[0]) * 100:+.1f}%" for _ in untripped)])
    print()
    print_table(["metric (median)", "native", "mount", "mount --no-journal", "mount/native", "journaling cost",
                 *([TRIPWIRE_TARGET, "tripwire cost"] if args.tripwire else [])], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
