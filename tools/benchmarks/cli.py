"""tools/bench cli: how long the commands that talk to a running mount take, whole.

    tools/bench cli [--runs 15] [--files 2000] [--dir DIR]

Through the installed `cloudfs` command, against a real `cloudfs mount --repo`
on the local S3 server (a tree of --files small files, first snapshot taken):
  status         `cloudfs status`
  snapshot       `cloudfs snapshot --wait` right after one small file was edited
                 through the mount (seal, upload, commit, all of it)
  flush          `cloudfs flush` with nothing pending
Peers in the same run: `python -c pass` (the interpreter's own start) and
`python -c "import boto3, trio"` (what the commands used to import).
Each is run warm (the usual case) and, for status, after dropping the page
cache (cold: every module read from disk). Medians over --runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from whole import drop_caches  # noqa: E402
from common import median, print_table  # noqa: E402

from cloudfs import locals3  # noqa: E402

INSTALLED = str(Path(sys.executable).parent / "cloudfs")
PASSWORD = "benchmark passphrase"


def timed(command: list[str], env: dict, runs: int, before=None) -> float:
    times = []
    for _ in range(runs):
        if before:
            before()
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return median(times)


def make_tree(root: Path, files: int) -> None:
    for index in range(files):
        directory = root / f"d{index % 50:02d}"
        directory.mkdir(exist_ok=True)
        (directory / f"f{index}.txt").write_bytes(os.urandom(64).hex().encode() * (index % 20 + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cloudfs-bench-cli-", dir=args.dir))
    server = locals3.start_rclone(work / "s3")
    source, state = work / "source", work / "state"
    source.mkdir()
    make_tree(source, args.files)
    server.client().create_bucket(Bucket="bench")
    env = dict(server.env(), CLOUDFS_REPO="s3://bench/repo", CLOUDFS_PASSWORD=PASSWORD,
               XDG_CACHE_HOME=str(work / "cache"))
    try:
        subprocess.run([INSTALLED, "init", "--kdf-time", "0.5"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([INSTALLED, "mount", "--daemon", "--interval", "1h", "--state-dir", str(state),
                        str(source)], env=env, check=True)
        subprocess.run([INSTALLED, "flush", str(source)], env=env, check=True, stdout=subprocess.DEVNULL)
        edited = source / "d00" / "f0.txt"
        counter = iter(range(1 << 30))

        def edit():
            edited.write_text(f"edit {next(counter)}\n")

        rows = [
            ("python -c pass", timed([sys.executable, "-c", "pass"], env, args.runs)),
            ("python -c 'import boto3, trio'", timed([sys.executable, "-c", "import boto3, trio"], env, args.runs)),
            ("cloudfs status", timed([INSTALLED, "status", str(source)], env, args.runs)),
            ("cloudfs status (page cache dropped)",
             timed([INSTALLED, "status", str(source)], env, max(3, args.runs // 3), before=drop_caches)),
            ("cloudfs flush (nothing pending)", timed([INSTALLED, "flush", str(source)], env, args.runs)),
            ("cloudfs snapshot --wait (1 file edited)",
             timed([INSTALLED, "snapshot", "--wait", str(source)], env, args.runs, before=edit)),
        ]
        print(f"{args.files} files mounted over SOURCE, median of {args.runs} runs")
        print_table(["command (whole, as typed)", "median s"], [[name, f"{seconds:.3f}"] for name, seconds in rows])
    finally:
        subprocess.run([INSTALLED, "umount", str(source)], env=env, capture_output=True)
        locals3.stop(server.proc)


if __name__ == "__main__":
    main()
