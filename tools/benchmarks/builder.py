"""tools/bench builder: the snapshot API in one process, against restic, on one local S3 server.

No command line, no mount: the builder, the packer and the store as a library
call them (what to profile, e.g. with py-spy, when a whole command's row moves).
`tools/bench backup` times the same work as users run it. Scenarios, each
timed for cloudfs and (where installed) restic 0.14+ in the same run against
the same `rclone serve s3`:
  initial-file   first backup of a directory holding one 2 GiB random file
  initial-tree   first backup of the Python standard library (without
                 site-packages: 7,733 files here, as in tools/bench restore)
  incremental    after overwriting 16 scattered 64 KiB regions of the 2 GiB
                 file: time, bytes read from disk, bytes uploaded
With --big-gib N the incremental is repeated on an N GiB file, to show that
its cost does not grow with the file.

cloudfs is driven through its snapshot API with the changed regions given as
the journal would give them (the live mount's seal adds only its own flip).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, print_table  # noqa: E402
from whole import PASSWORD, Restic, copy_stdlib, drop_caches, restic_available, write_random_file  # noqa: E402

import trio  # noqa: E402

from cloudfs import crypto, locals3  # noqa: E402
from cloudfs.repo import Repository  # noqa: E402
from cloudfs.snapshot.rules import PathChanges  # noqa: E402
from cloudfs.store import S3Options, S3Store  # noqa: E402
from cloudfs.uploader import snapshot_directory  # noqa: E402

REGION = 64 << 10


class CountingS3(S3Store):
    """The real S3 store, counting the bytes it sends."""

    sent = 0

    async def put(self, name, data, *, exclusive=False, sha256=None):
        CountingS3.sent += len(data)
        await super().put(name, data, exclusive=exclusive, sha256=sha256)


def scatter_regions(path: Path, count: int, seed: int) -> list[tuple[int, int]]:
    size = path.stat().st_size
    rng = random.Random(seed)
    regions = sorted(rng.randrange(0, size - REGION) for _ in range(count))
    with open(path, "r+b") as handle:
        for offset in regions:
            os.pwrite(handle.fileno(), os.urandom(REGION), offset)
        os.fsync(handle.fileno())
    return [(offset, offset + REGION) for offset in regions]


class Cloudfs:
    def __init__(self, server, bucket: str):
        self.store = CountingS3(bucket, "cloudfs", S3Options(endpoint_url=server.endpoint))
        self.repo = trio.run(lambda: Repository.init(self.store, PASSWORD.encode(),
                                                     kdf=crypto.tune_kdf(0.05), use_cache=False))
        self.last = {}

    def backup(self, path: Path, changes: PathChanges | None = None) -> tuple[float, dict]:
        previous = self.last.get(path)
        sent_before = CountingS3.sent
        start = time.perf_counter()
        snapshot = trio.run(lambda: snapshot_directory(self.repo, path, previous=previous,
                                                       changes=changes))
        elapsed = time.perf_counter() - start
        self.last[path] = snapshot
        return elapsed, {**snapshot.stats, "sent": CountingS3.sent - sent_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file-gib", type=float, default=2.0)
    parser.add_argument("--big-gib", type=float, default=0, help="also an incremental on a file this big")
    parser.add_argument("--runs", type=int, default=3, help="incremental runs (medians)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-restic", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cloudfs-bench-", dir=args.workdir))
    server = locals3.start_rclone(work / "s3")
    try:
        run_scenarios(args, work, server)
    finally:
        locals3.stop(server.proc)
        shutil.rmtree(work, ignore_errors=True)


def run_scenarios(args, work: Path, server) -> None:
    os.environ.update({k: v for k, v in server.env().items() if k.startswith("AWS_")})
    client = server.client()
    client.create_bucket(Bucket="bench")
    with_restic = not args.no_restic and restic_available()
    restic = Restic(server, "bench", work / "restic-cache") if with_restic else None
    ours = Cloudfs(server, "bench")
    rows = []

    file_dir = work / "file"
    file_dir.mkdir()
    big = file_dir / "random.bin"
    write_random_file(big, int(args.file_gib * (1 << 30)))
    tree = work / "stdlib"
    files = copy_stdlib(tree)
    tree_bytes = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())

    drop_caches()
    ours_time, _ = ours.backup(file_dir)
    drop_caches()
    theirs = restic.backup(file_dir) if restic else None
    rows.append(row(f"initial: {args.file_gib:g} GiB random file", ours_time, theirs))

    drop_caches()
    ours_time, _ = ours.backup(tree)
    drop_caches()
    theirs = restic.backup(tree) if restic else None
    rows.append(row(f"initial: stdlib tree ({files} files, {tree_bytes / 2**20:.0f} MiB)", ours_time, theirs))

    incremental_rows(args, ours, restic, file_dir, big, rows, f"{args.file_gib:g} GiB")
    if args.big_gib:
        big_dir = work / "bigfile"
        big_dir.mkdir()
        huge = big_dir / "huge.bin"
        write_random_file(huge, int(args.big_gib * (1 << 30)))
        ours.backup(big_dir)
        incremental_rows(args, ours, None, big_dir, huge, rows, f"{args.big_gib:g} GiB")

    print(f"local rclone S3, {os.cpu_count()} cores; cloudfs block size "
          f"{ours.repo.config.block_size >> 10} KiB; restic {'0.14 (apt)' if restic else 'not run'}")
    print_table(["scenario", "cloudfs s", "restic s", "cloudfs/restic", "read MiB", "sent KiB"], rows)


def incremental_rows(args, ours, restic, directory, path, rows, label) -> None:
    times, reads, sents, theirs = [], [], [], []
    for run in range(args.runs):
        regions = scatter_regions(path, 16, seed=run)
        drop_caches()
        elapsed, stats = ours.backup(directory, PathChanges(data={path.name.encode(): regions}))
        times.append(elapsed)
        reads.append(stats["bytes_read"])
        sents.append(stats["sent"])
        if restic:
            drop_caches()
            theirs.append(restic.backup(directory))
    rows.append(row(f"incremental: 16 x 64 KiB in {label}", median(times),
                    median(theirs) if theirs else None, median(reads) / 2**20, median(sents) / 1024))


def row(label, ours, theirs, read_mib=None, sent_kib=None) -> list[str]:
    return [label, f"{ours:.2f}", f"{theirs:.2f}" if theirs else "-",
            f"{ours / theirs:.2f}" if theirs else "-",
            f"{read_mib:.2f}" if read_mib is not None else "-",
            f"{sent_kib:.0f}" if sent_kib is not None else "-"]


if __name__ == "__main__":
    main()
