"""tools/bench index: the blob index on disk, SQLite (cloudfs's local index) against LMDB.

    tools/bench index [--blobs 16000000] [--engines sqlite,lmdb] [--runs 3] [--dir DIR]
                      [--paths 1000000]

Each engine runs in a process of its own (its peak RSS is its own), on a
synthetic index of BLOBS blobs (ids are keyed hashes of a counter, so any id
can be made again without keeping the list):

- inserts: the blobs arrive as chunks of 1,000, each added as it would be
  after its upload (SQLite: `BlobIndex.add_object` of one chunk, the real
  code; LMDB: one write transaction); inserts/s overall and over the last
  tenth (the rate at full size);
- lookups: 100,000 random present ids and as many absent, one call each, and
  in batches of 500 (`BlobIndex.get_many`); the median of RUNS rounds;
- bytes per blob on disk, after a checkpoint;
- build: a fresh index from BLOBS blobs in sealed index objects of 16 chunks
  of 1,000 blobs, as the repository stores them (written once into DIR),
  read one at a time (SQLite: `absorb_objects`, what a new machine does);
  wall-clock and CPU seconds (CPU: what it would take on an idle machine);
- a manifest-shaped table: PATHS entries in PATHS/1000 directories, inserted
  in batches of 1,000, then looked up by (parent, name), listed by parent,
  and found by inode;
- peak RSS (VmHWM) of the engine's process, and its resident file pages at
  the end (mapped database pages count in RSS).

LMDB is installed with pip into the benchmark's environment if missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, print_table  # noqa: E402

CHUNK_BLOBS = 1000           # blobs per chunk (64 MiB of 64 KiB blocks)
OBJECT_CHUNKS = 16           # chunks per index object (the packer's index_every)
LOOKUPS = 100_000
BATCH = 500
DIR_ENTRIES = 1000
_PACKED = struct.Struct("<IBIII")   # LMDB value: chunk number, kind, offset, length, raw length


def blob_id(number: int) -> bytes:
    return hashlib.blake2b(number.to_bytes(8, "little"), digest_size=32).digest()


def chunk_id(number: int) -> bytes:
    return hashlib.blake2b(number.to_bytes(8, "little"), digest_size=32, person=b"chunk").digest()


def synthetic_chunk(number: int, first_blob: int, count: int):
    from cloudfs.repo.chunk import BlobKind, BlobLocation
    from cloudfs.repo.index import ChunkInfo

    cid = chunk_id(number)
    blobs = tuple(BlobLocation(blob_id(first_blob + i), BlobKind(i % 7 == 0), cid, 8 + i * 65_564, 65_564,
                               65_536) for i in range(count))
    return ChunkInfo(cid, 8 + count * 65_564 + 4096, hashlib.sha256(cid).digest(), blobs)


def chunks_of(blobs: int):
    for number, first in enumerate(range(0, blobs, CHUNK_BLOBS)):
        yield synthetic_chunk(number, first, min(CHUNK_BLOBS, blobs - first))


# -- the engines ----------------------------------------------------------------------------


class SqliteEngine:
    """cloudfs's own local index (cloudfs/repo/localindex.py)."""

    def __init__(self, directory: Path):
        from cloudfs.repo.localindex import INDEX_FILE, BlobIndex

        self.path = directory / INDEX_FILE
        self.index = BlobIndex(self.path, b"benchmark-repo-1")

    def add_chunk(self, chunk) -> None:
        self.index.add_object(f"index/{chunk.chunk_id.hex()[:32]}", [chunk])

    def get(self, blob: bytes):
        return self.index.get(blob)

    def get_many(self, blobs: list[bytes]) -> int:
        return len(self.index.get_many(blobs))

    def build(self, names: list[str], fetch) -> None:
        import trio

        from cloudfs.repo.indexload import absorb_objects

        trio.run(absorb_objects, self.index, names, fetch, {})

    def disk_bytes(self) -> int:
        self.index._run(lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        return sum(p.stat().st_size for p in self.path.parent.iterdir())

    def close(self) -> None:
        self.index.close()


class LmdbEngine:
    """The same operations on LMDB: blob id -> packed location, chunk ids by number."""

    def __init__(self, directory: Path):
        import lmdb

        directory.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(directory / "index.lmdb"), map_size=1 << 40, max_dbs=4, subdir=False,
                             readahead=False, metasync=False, lock=True)
        self.blobs = self.env.open_db(b"blobs")
        self.chunks = self.env.open_db(b"chunks")
        self.numbers = 0
        self.path = directory

    def add_chunk(self, chunk) -> None:
        with self.env.begin(write=True) as txn:
            self._put_chunk(txn, chunk.to_list())

    def _put_chunk(self, txn, listed: list) -> None:
        """One chunk as an index object lists it: [chunk_id, size, sha256, entries]."""
        chunk_id, _, _, entries = listed
        number = self.numbers
        self.numbers += 1
        txn.put(struct.pack(">I", number), chunk_id, db=self.chunks)
        rows = sorted((blob, _PACKED.pack(number, kind, offset, length, raw))
                      for blob, kind, offset, length, raw in entries)
        txn.cursor(db=self.blobs).putmulti(rows, overwrite=False)

    def get(self, blob: bytes):
        with self.env.begin() as txn:
            packed = txn.get(blob, db=self.blobs)
            if packed is None:
                return None
            number, kind, offset, length, raw = _PACKED.unpack(packed)
            return txn.get(struct.pack(">I", number), db=self.chunks), kind, offset, length, raw

    def get_many(self, blobs: list[bytes]) -> int:
        with self.env.begin() as txn:
            return sum(txn.get(blob, db=self.blobs) is not None for blob in blobs)

    def build(self, names: list[str], fetch) -> None:
        import trio

        async def load():
            for name in names:
                chunks = await fetch(name)
                with self.env.begin(write=True) as txn:
                    for chunk in chunks:
                        self._put_chunk(txn, chunk)
        trio.run(load)

    def disk_bytes(self) -> int:
        self.env.sync(True)
        return sum(p.stat().st_size for p in self.path.iterdir())

    def close(self) -> None:
        self.env.close()


ENGINES = {"sqlite": SqliteEngine, "lmdb": LmdbEngine}


# -- the manifest-shaped workload -------------------------------------------------------------


def manifest_sqlite(directory: Path, paths: int, runs: int) -> dict:
    import sqlite3

    db = sqlite3.connect(directory / "manifest.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA cache_size = -16384")
    db.execute("CREATE TABLE entries (inode INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name BLOB NOT NULL, "
               "stat BLOB NOT NULL)")
    db.execute("CREATE UNIQUE INDEX by_parent ON entries (parent, name)")

    def insert(rows):
        db.execute("BEGIN")
        db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?)", rows)
        db.execute("COMMIT")

    def by_name(parent, name):
        return db.execute("SELECT inode, stat FROM entries WHERE parent = ? AND name = ?", (parent, name)).fetchone()

    def children(parent):
        return db.execute("SELECT name, inode, stat FROM entries WHERE parent = ? ORDER BY name",
                          (parent,)).fetchall()

    def by_inode(inode):
        return db.execute("SELECT parent, name, stat FROM entries WHERE inode = ?", (inode,)).fetchone()

    result = _manifest_workload(paths, runs, insert, by_name, children, by_inode)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    result["bytes_per_entry"] = (directory / "manifest.sqlite").stat().st_size / paths
    return result


def manifest_lmdb(directory: Path, paths: int, runs: int) -> dict:
    import lmdb

    path = directory / "manifest.lmdb"
    env = lmdb.open(str(path), map_size=1 << 40, max_dbs=4, subdir=False, readahead=False, metasync=False)
    entries, names = env.open_db(b"entries"), env.open_db(b"names")

    def insert(rows):
        with env.begin(write=True) as txn:
            for inode, parent, name, stat in rows:
                txn.put(inode.to_bytes(8, "big"), parent.to_bytes(8, "big") + stat + name, db=entries)
                txn.put(parent.to_bytes(8, "big") + name, inode.to_bytes(8, "big"), db=names)

    def by_name(parent, name):
        with env.begin() as txn:
            inode = txn.get(parent.to_bytes(8, "big") + name, db=names)
            return inode and txn.get(inode, db=entries)

    def children(parent):
        prefix = parent.to_bytes(8, "big")
        found = []
        with env.begin() as txn:
            cursor = txn.cursor(db=names)
            if cursor.set_range(prefix):
                for key, inode in cursor:
                    if not key.startswith(prefix):
                        break
                    found.append((key[8:], inode, txn.get(inode, db=entries)))
        return found

    def by_inode(inode):
        with env.begin() as txn:
            return txn.get(inode.to_bytes(8, "big"), db=entries)

    result = _manifest_workload(paths, runs, insert, by_name, children, by_inode)
    env.sync(True)
    env.close()
    result["bytes_per_entry"] = path.stat().st_size / paths
    return result


def _manifest_workload(paths: int, runs: int, insert, by_name, children, by_inode) -> dict:
    """PATHS files in PATHS/1000 directories (inodes 2.. are directories, then files)."""
    directories = max(1, paths // DIR_ENTRIES)
    stat = bytes(48)
    started = time.perf_counter()
    insert([(2 + d, 1, b"dir-%06d" % d, stat) for d in range(directories)])
    inode = 2 + directories
    for d in range(directories):
        insert([(inode + i, 2 + d, b"file-%06d.txt" % i, stat) for i in range(DIR_ENTRIES)])
        inode += DIR_ENTRIES
    inserts = (directories * (DIR_ENTRIES + 1)) / (time.perf_counter() - started)
    rng = random.Random(7)
    rates = {"by_name": [], "children": [], "by_inode": []}
    for _ in range(runs):
        picks = [(2 + rng.randrange(directories), b"file-%06d.txt" % rng.randrange(DIR_ENTRIES))
                 for _ in range(LOOKUPS)]
        start = time.perf_counter()
        for parent, name in picks:
            by_name(parent, name)
        rates["by_name"].append(LOOKUPS / (time.perf_counter() - start))
        listed, start = 0, time.perf_counter()
        for _ in range(50):
            listed += len(children(2 + rng.randrange(directories)))
        rates["children"].append(listed / (time.perf_counter() - start))
        inodes = [2 + rng.randrange(inode - 2) for _ in range(LOOKUPS)]
        start = time.perf_counter()
        for number in inodes:
            by_inode(number)
        rates["by_inode"].append(LOOKUPS / (time.perf_counter() - start))
    return {"inserts": inserts, **{key: median(values) for key, values in rates.items()}}


# -- one engine, in its own process -------------------------------------------------------------


def measure(engine_name: str, blobs: int, runs: int, objects: Path, paths: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-index-{engine_name}-", dir=objects.parent))
    try:
        result = {"engine": engine_name}
        result.update(_inserts(ENGINES[engine_name](work / "inserted"), blobs, runs))
        result.update(_build(ENGINES[engine_name](work / "built"), objects))
        (work / "manifest").mkdir()
        manifest = manifest_sqlite if engine_name == "sqlite" else manifest_lmdb
        result["manifest"] = manifest(work / "manifest", paths, runs) if paths else {}
        result.update(_memory())
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _inserts(engine, blobs: int, runs: int) -> dict:
    timings = []
    for chunk in chunks_of(blobs):
        start = time.perf_counter()
        engine.add_chunk(chunk)
        timings.append((time.perf_counter() - start, len(chunk.blobs)))
    tail = timings[len(timings) * 9 // 10:]
    result = {"inserts": blobs / sum(t for t, _ in timings),
              "inserts_at_full_size": sum(n for _, n in tail) / sum(t for t, _ in tail),
              "bytes_per_blob": engine.disk_bytes() / blobs}
    rng = random.Random(1)
    rates = {"present": [], "absent": [], "present_batched": [], "absent_batched": []}
    for _ in range(runs):
        present = [blob_id(n) for n in rng.sample(range(blobs), min(blobs, LOOKUPS))]
        absent = [blob_id(n) for n in rng.sample(range(blobs, 2 * blobs + LOOKUPS), LOOKUPS)]
        for kind, ids in (("present", present), ("absent", absent)):
            start = time.perf_counter()
            hits = sum(engine.get(i) is not None for i in ids)
            rates[kind].append(len(ids) / (time.perf_counter() - start))
            assert hits == (len(ids) if kind == "present" else 0), (kind, hits)
            start = time.perf_counter()
            hits = sum(engine.get_many(ids[i:i + BATCH]) for i in range(0, len(ids), BATCH))
            rates[f"{kind}_batched"].append(len(ids) / (time.perf_counter() - start))
            assert hits == (len(ids) if kind == "present" else 0), (kind, hits)
    engine.close()
    return result | {key: median(values) for key, values in rates.items()}


def _build(engine, objects: Path) -> dict:
    from cloudfs.crypto import MasterKey
    from cloudfs.repo.index import open_index_listing

    master = MasterKey((objects / "master").read_bytes())
    names = sorted(f"index/{p.name}" for p in (objects / "index").iterdir())

    async def fetch(name: str):
        return open_index_listing(master, name, (objects / name).read_bytes())

    start, cpu = time.perf_counter(), time.process_time()
    engine.build(names, fetch)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    engine.close()
    return {"build_seconds": seconds, "build_cpu_seconds": cpu_seconds}


def _memory() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    kib = lambda key: int(status[key].split()[0])  # noqa: E731
    return {"peak_rss_mib": kib("VmHWM") / 1024, "file_rss_mib": kib("RssFile") / 1024}


# -- the sealed index objects, written once --------------------------------------------------------


def sealed_objects(master, blobs: int):
    """(name, sealed bytes) of index objects of OBJECT_CHUNKS chunks holding BLOBS
    synthetic blobs, sealed with `master` as a repository stores them."""
    from cloudfs.repo.index import seal_index

    batch, number = [], 0
    for chunk in chunks_of(blobs):
        batch.append(chunk)
        if len(batch) == OBJECT_CHUNKS:
            name = f"index/{number:032x}"
            yield name, seal_index(master, name, batch)
            batch, number = [], number + 1
    if batch:
        name = f"index/{number:032x}"
        yield name, seal_index(master, name, batch)


def write_objects(directory: Path, blobs: int) -> None:
    """BLOBS synthetic blobs in sealed index objects of OBJECT_CHUNKS chunks (reused if present)."""
    from cloudfs.crypto import MasterKey

    done = directory / f"done-{blobs}"
    if done.exists():
        return
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "index").mkdir(parents=True)
    master = MasterKey.generate()
    (directory / "master").write_bytes(master.secret)
    for name, data in sealed_objects(master, blobs):
        (directory / name).write_bytes(data)
    done.touch()


# -- the driver --------------------------------------------------------------------------------------


def ensure_lmdb() -> None:
    try:
        import lmdb  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "lmdb"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blobs", type=int, default=16_000_000)
    parser.add_argument("--paths", type=int, default=1_000_000, help="manifest entries (0: skip)")
    parser.add_argument("--engines", default="sqlite,lmdb")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    base = args.dir or Path(tempfile.gettempdir()) / "cloudfs-bench-index"
    objects = base / "objects"
    if args.child:
        print(json.dumps(measure(args.child, args.blobs, args.runs, objects, args.paths)))
        return
    engines = args.engines.split(",")
    if "lmdb" in engines:
        ensure_lmdb()
    started = time.perf_counter()
    write_objects(objects, args.blobs)
    print(f"{args.blobs:,} blobs in {len(list((objects / 'index').iterdir()))} index objects "
          f"({time.perf_counter() - started:.0f} s to write)", flush=True)
    results = []
    for engine in engines:
        command = [sys.executable, __file__, "--child", engine, "--blobs", str(args.blobs), "--runs",
                   str(args.runs), "--paths", str(args.paths), "--dir", str(base)]
        output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    report(results, args.blobs, args.paths)


def report(results: list[dict], blobs: int, paths: int) -> None:
    k = lambda value: f"{value / 1000:,.0f} k"  # noqa: E731
    print(f"\nblob index, {blobs:,} blobs (medians)")
    print_table(["engine", "inserts/s", "at full size", "get present", "get absent", "batched present",
                 "batched absent", "B/blob", "build s", "build CPU s", "peak RSS MiB", "file RSS MiB"],
                [[r["engine"], k(r["inserts"]), k(r["inserts_at_full_size"]), k(r["present"]), k(r["absent"]),
                  k(r["present_batched"]), k(r["absent_batched"]), f"{r['bytes_per_blob']:.1f}",
                  f"{r['build_seconds']:.1f}", f"{r.get('build_cpu_seconds', 0):.1f}", f"{r['peak_rss_mib']:.0f}",
                  f"{r['file_rss_mib']:.0f}"]
                 for r in results])
    if paths:
        print(f"\nmanifest-shaped, {paths:,} entries in {paths // DIR_ENTRIES:,} directories (per second)")
        print_table(["engine", "inserts", "by (parent, name)", "children listed", "by inode", "B/entry"],
                    [[r["engine"], k(m["inserts"]), k(m["by_name"]), k(m["children"]), k(m["by_inode"]),
                      f"{m['bytes_per_entry']:.1f}"] for r in results for m in [r["manifest"]]])


if __name__ == "__main__":
    main()
