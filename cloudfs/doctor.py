"""`cloudfs doctor`: is this machine ready to protect its directories, and what to do if not.

Each check returns findings: one line each, with what to do. FAIL means a
mount or a backup would not work until it is fixed (the command exits 1);
WARN means it works but something is risky or missing; OK says what was
checked. The checks contact each store once per question and never write.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cloudfs.errors import AccessDenied, BucketNotFound, MountError, StoreUnavailable
from cloudfs.store.local import LocalStore
from cloudfs.store.probe import BucketFacts, probe
from cloudfs.store.s3 import S3Store
from cloudfs.store.wrapper import StoreWrapper
from cloudfs.system import fuseproc

OK, WARN, FAIL = "ok", "warn", "fail"
SKEW_WARN = 30.0          # seconds: worth fixing before it grows
SKEW_FAIL = 15 * 60.0     # S3 refuses requests signed further off than this


@dataclass(frozen=True)
class Finding:
    level: str
    subject: str          # what was checked: "machine", a directory's name, a repository
    message: str          # what was found, and what to do

    def line(self) -> str:
        return f"{self.level.upper():<4}  {self.subject}: {self.message}"


def machine() -> list[Finding]:
    """/dev/fuse and fusermount3."""
    findings = []
    try:
        fuseproc.check_fuse_device()
        findings.append(Finding(OK, "machine", "/dev/fuse opens"))
    except MountError as error:
        findings.append(Finding(FAIL, "machine", str(error)))
    if shutil.which("fusermount3"):
        findings.append(Finding(OK, "machine", "fusermount3 is installed"))
    elif os.geteuid() == 0:
        findings.append(Finding(WARN, "machine", "fusermount3 is missing (root mounts without it; other "
                                                 "users need it): install fuse3"))
    else:
        findings.append(Finding(FAIL, "machine", "fusermount3 is missing, and mounting as a user needs it: "
                                                 "install fuse3"))
    return findings


def directory(name: str, source: str, state_dir: Path, spool_size: int) -> list[Finding]:
    """SOURCE, and room for the state directory and its spool."""
    findings = []
    if not os.path.isdir(source):
        findings.append(Finding(FAIL, name, f"{source} is not a directory: create it, or fix source"))
    existing = _nearest_existing(state_dir)
    if not os.access(existing, os.W_OK | os.X_OK):
        findings.append(Finding(FAIL, name, f"cannot write the state directory {state_dir} ({existing} is "
                                            "not writable): fix its permissions, or set state_dir"))
        return findings
    stat = os.statvfs(existing)
    free = stat.f_bavail * stat.f_frsize
    if free < spool_size:
        findings.append(Finding(FAIL, name, f"{_gib(free)} free for the state directory {state_dir}, less "
                                            f"than the spool may need ({_gib(spool_size)}): free space, "
                                            "lower spool_size, or move state_dir"))
    else:
        findings.append(Finding(OK, name, f"state directory {state_dir}: {_gib(free)} free "
                                          f"(spool up to {_gib(spool_size)})"))
    return findings


def repository(subject: str, store, clock=time.time) -> list[Finding]:
    """A repository's store: reachable, credentials, clock, versioning, Object Lock."""
    while isinstance(store, StoreWrapper):   # the writer's view, a bandwidth limit: look beneath
        store = store.inner
    if isinstance(store, LocalStore):
        return _local(subject, store)
    if isinstance(store, S3Store):
        return _s3(subject, store, probe(store, clock))
    return [Finding(WARN, subject, f"cannot check a store of kind {type(store).__name__}")]


def _local(subject: str, store: LocalStore) -> list[Finding]:
    root = Path(store.root)
    if not (root / "config").is_file():
        return [Finding(FAIL, subject, f"no cloudfs repository at {root}: mount the disk, fix repository, "
                                       "or create one with cloudfs init")]
    if not os.access(root, os.W_OK | os.X_OK):
        return [Finding(FAIL, subject, f"{root} is not writable: fix its permissions")]
    return [Finding(OK, subject, f"repository at {root} is there and writable")]


def _s3(subject: str, store: S3Store, facts: BucketFacts) -> list[Finding]:
    findings = [_clock(subject, store, facts.skew_seconds)] if facts.skew_seconds is not None else []
    if facts.error is not None:
        return findings + [Finding(FAIL, subject, f"{facts.error}: {_remedy(facts.error)}")]
    findings.append(Finding(OK, subject, f"bucket {store.bucket!r} at {store.endpoint} answers "
                                         "with these credentials"))
    if facts.has_repository is False:
        findings.append(Finding(FAIL, subject, f"no cloudfs repository at {store.location}: fix repository, "
                                               "or create one with cloudfs init"))
    findings.append(_versioning(subject, store, facts.versioning))
    findings.append(_object_lock(subject, store, facts.object_lock))
    return findings


def _clock(subject: str, store: S3Store, skew: float) -> Finding:
    if abs(skew) < SKEW_WARN:
        return Finding(OK, subject, f"clock within {abs(skew):.0f} s of {store.endpoint}'s")
    direction = "behind" if skew > 0 else "ahead of"
    text = f"this machine's clock is {_duration(abs(skew))} {direction} {store.endpoint}'s"
    if abs(skew) >= SKEW_FAIL:
        return Finding(FAIL, subject, f"{text}, and S3 refuses requests signed more than 15 minutes off: "
                                      "synchronise the clock (timedatectl set-ntp true)")
    return Finding(WARN, subject, f"{text}: synchronise the clock (timedatectl set-ntp true) before "
                                  "it reaches 15 minutes, when S3 refuses every request")


def _versioning(subject: str, store: S3Store, state: str | None) -> Finding:
    if state == "Enabled":
        return Finding(OK, subject, f"bucket {store.bucket!r} keeps versions")
    if state is None:
        return Finding(WARN, subject, f"{store.endpoint} does not say whether bucket {store.bucket!r} "
                                      "keeps versions: check it in the server's own tools")
    return Finding(WARN, subject, f"versioning is {state.lower()} on bucket {store.bucket!r}: an object "
                                  "deleted with stolen credentials is gone; enable versioning, or Object Lock")


def _object_lock(subject: str, store: S3Store, state: str | None) -> Finding:
    if state is None:
        return Finding(WARN, subject, f"{store.endpoint} does not support or report Object Lock on bucket "
                                      f"{store.bucket!r}: backups are as safe as its credentials")
    if state == "off":
        return Finding(WARN, subject, f"no Object Lock on bucket {store.bucket!r}: credentials that can "
                                      "delete can destroy every backup; create the bucket with Object "
                                      "Lock enabled (most servers cannot turn it on later)")
    return Finding(OK, subject, f"Object Lock is {state} on bucket {store.bucket!r}")


def _remedy(error) -> str:
    if isinstance(error, BucketNotFound):
        return "check the bucket name, or create it (cloudfs init --create-bucket)"
    if isinstance(error, AccessDenied):
        return "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the profile) and the bucket policy"
    if isinstance(error, StoreUnavailable):
        return "check the endpoint, the network and the firewall"
    return "the message above names what failed"


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gib(count: int) -> str:
    return f"{count / (1 << 30):.1f} GiB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
