"""tools/bench crypto: what sealing a chunk costs, against raw AES-256-GCM.

For 64 MiB of random and of text-like data (Python's standard library source),
cut into blocks of the repository's default block size, it times the write path
of one chunk — keyed BLAKE3 id, zstd (kept only if smaller), AES-256-GCM seal —
on one thread and on two (into a chunk in a temporary file, as the packer
builds them), and raw AES-256-GCM over the same buffer, and prints
medians and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, print_table, stopwatch  # noqa: E402

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from cloudfs.crypto import MasterKey  # noqa: E402
from cloudfs.repo.chunk import BlobKind, ChunkBuilder  # noqa: E402
from cloudfs.repo.config import DEFAULT_BLOCK_SIZE  # noqa: E402

SIZE = 64 << 20


def text_like(size: int) -> bytes:
    """The standard library's .py files, concatenated until `size` bytes."""
    parts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        data = path.read_bytes()
        parts.append(data)
        total += len(data)
        if total >= size:
            break
    data = b"".join(parts)
    return (data * (size // max(len(data), 1) + 1))[:size]


def seal_blocks(master: MasterKey, buffer: memoryview, block_size: int, level: int | None) -> int:
    """One chunk's worth of blocks sealed into a chunk (a temporary file, as the packer does)."""
    builder = ChunkBuilder(master)
    for start in range(0, len(buffer), block_size):
        block = buffer[start:start + block_size]
        builder.add(master.blob_id(block), BlobKind.DATA, block, level)
    chunk = builder.finish()
    chunk.close()
    return len(chunk)


def pipeline(master: MasterKey, data: bytes, block_size: int, threads: int, level: int | None) -> int:
    """Seal `data` on `threads` threads, each into a chunk of its own."""
    view = memoryview(data)
    share = len(data) // threads
    with ThreadPoolExecutor(threads) as pool:
        sizes = pool.map(lambda i: seal_blocks(master, view[i * share:(i + 1) * share], block_size, level),
                         range(threads))
        return sum(sizes)


def raw_aes_gcm(data: bytes, block_size: int) -> None:
    """AES-256-GCM alone over the same buffer, block by block."""
    aead, view = AESGCM(os.urandom(32)), memoryview(data)
    for start in range(0, len(data), block_size):
        aead.encrypt(os.urandom(12), view[start:start + block_size], b"")


def cbc_hmac(data: bytes, block_size: int) -> None:
    """The naive alternative, made safe: AES-256-CBC then HMAC-SHA256, block by block."""
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, mac_key, view = os.urandom(32), os.urandom(32), memoryview(data)
    for start in range(0, len(data), block_size):
        encryptor = Cipher(algorithms.AES(key), modes.CBC(os.urandom(16))).encryptor()
        ciphertext = encryptor.update(view[start:start + block_size]) + encryptor.finalize()
        mac = hmac.HMAC(mac_key, hashes.SHA256())
        mac.update(ciphertext)
        mac.finalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--block-kib", type=int, default=DEFAULT_BLOCK_SIZE >> 10)
    parser.add_argument("--level", type=int, default=1, help="zstd level (default 1)")
    args = parser.parse_args()
    block_size = args.block_kib << 10
    master = MasterKey.generate()
    inputs = {"random": os.urandom(SIZE), "text-like": text_like(SIZE)}
    rows = []
    for label, data in inputs.items():
        raw: list[float] = []
        for _ in range(args.runs):
            with stopwatch(raw):
                raw_aes_gcm(data, block_size)
        raw_rate = SIZE / median(raw) / 1e6
        rows.append([label, "raw AES-256-GCM", f"{raw_rate:,.0f}", "1.00", "-"])
        cbc: list[float] = []
        for _ in range(args.runs):
            with stopwatch(cbc):
                cbc_hmac(data, block_size)
        cbc_rate = SIZE / median(cbc) / 1e6
        rows.append([label, "AES-256-CBC + HMAC-SHA256", f"{cbc_rate:,.0f}", f"{cbc_rate / raw_rate:.3f}", "-"])
        for threads in (1, 2):
            times: list[float] = []
            for _ in range(args.runs):
                with stopwatch(times):
                    stored = pipeline(master, data, block_size, threads, args.level)
            rate = SIZE / median(times) / 1e6
            rows.append([label, f"hash+compress+seal, {threads} thread{'s' * (threads > 1)}",
                         f"{rate:,.0f}", f"{rate / raw_rate:.3f}", f"{stored / SIZE:.3f}"])
    print(f"64 MiB per input, {block_size >> 10} KiB blocks, zstd level {args.level}, "
          f"median of {args.runs} runs, {os.cpu_count()} cores")
    print_table(["data", "path", "MB/s", "ratio to raw", "stored/input"], rows)


if __name__ == "__main__":
    main()
