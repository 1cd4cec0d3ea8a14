"""tools/bench drill: how close `cloudfs drill`'s projected RTO comes to a full restore.

    tools/bench drill [--runs 3] [--file-mib 400] [--sample 2%] [--dir /var/tmp]

Data: Python's standard library without site-packages, and a random file of
FILE_MIB MiB; three snapshots, each in a repository of its own on one
`rclone serve s3`: the library tree, the file, and both together (mixed). In
each run, for each: the page cache dropped, `cloudfs drill --sample SAMPLE`
(its projected RTO and its own time), the page cache dropped again, and
`cloudfs restore --no-cache latest` (a restore on a machine without cloudfs'
cache), timed whole as a user runs them. Medians over the runs; the issue's
goal is a projection within 30% of the restore.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from whole import CLOUDFS, CloudfsUser, copy_stdlib, drop_caches, tree_bytes, write_random_file  # noqa: E402

from cloudfs import locals3  # noqa: E402

BUCKET = "bench"
GOAL = 0.30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--file-mib", type=int, default=400)
    parser.add_argument("--sample", default="2%")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where to work")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cloudfs-bench-drill-", dir=args.dir))
    server = locals3.start_rclone(work / "s3")
    try:
        server.client().create_bucket(Bucket=BUCKET)
        users = back_up_data(work, server, args.file_mib)
        results = {name: [] for name in users}
        for run in range(args.runs):
            for name, user in users.items():
                results[name].append(measure(user, work, args.sample, f"{name}-{run}"))
                print(f"run {run + 1} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in results[name][-1].items()),
                      flush=True)
        report(results, args)
    finally:
        locals3.stop(server.proc)
        shutil.rmtree(work, ignore_errors=True)


def back_up_data(work: Path, server, file_mib: int) -> dict[str, CloudfsUser]:
    """The three data sets, each backed up (untimed) into a repository of its own."""
    data = work / "data"
    files = copy_stdlib(data / "tree" / "stdlib")
    write_random_file(_made(data / "file") / "random.bin", file_mib << 20)
    shutil.copytree(data / "tree" / "stdlib", data / "mixed" / "stdlib", symlinks=True)
    shutil.copy(data / "file" / "random.bin", data / "mixed" / "random.bin")
    print(f"data: library tree of {files} files, {tree_bytes(data / 'tree') / 2**20:.0f} MiB; "
          f"a {file_mib} MiB random file; both together", flush=True)
    users = {}
    for name in ("tree", "file", "mixed"):
        user = CloudfsUser(server, BUCKET, work / "home" / name)
        user.repository(name)
        source = str(data / name)
        user.run("mount", "--daemon", "--interval", "1h", source)
        user.run("flush", source)
        user.run("umount", source)
        users[name] = user
    return users


def _made(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def measure(user: CloudfsUser, work: Path, sample: str, label: str) -> dict[str, float]:
    drop_caches()
    started = time.perf_counter()
    result = subprocess.run([CLOUDFS, "drill", "--json", "--sample", sample, "--scratch", str(work)],
                            env=user.env, capture_output=True, text=True)
    drill_seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"cloudfs drill failed: {result.stderr}")
    [target] = json.loads(result.stdout)["targets"]
    drop_caches()
    restore_seconds, _ = user.run("restore", "--no-cache", "--no-progress", "latest", work / "restored" / label)
    shutil.rmtree(work / "restored" / label)
    model = target["model"] or {}
    return {"projected": target["rto_seconds"], "restore": restore_seconds, "drill": drill_seconds,
            "sample_mib": target["bytes"] / 2**20, "sample_files": target["files"],
            **{part: model.get(f"{part}_seconds", 0.0) for part in ("fixed", "small_files", "large_files")}}


def report(results: dict[str, list[dict]], args) -> None:
    rows = []
    for name, runs in results.items():
        def median(key):
            return statistics.median(run[key] for run in runs)

        error = median("projected") / median("restore") - 1
        rows.append([name, f"{median('restore'):.2f} s", f"{median('projected'):.2f} s", f"{error:+.0%}",
                     "met" if abs(error) <= GOAL else "missed", f"{median('drill'):.2f} s",
                     f"{median('sample_files'):.0f} files, {median('sample_mib'):.1f} MiB",
                     " + ".join(f"{median(part):.2f}" for part in ("fixed", "small_files", "large_files"))])
    print(f"\nmedians of {args.runs} runs, --sample {args.sample}:")
    print_table(["data", "full restore", "projected RTO", "error", f"±{GOAL:.0%}", "drill took", "sample",
                 "fixed + small + large"], rows)


if __name__ == "__main__":
    main()
