"""`cloudfs doctor`: check the machine, the configuration and every store it names."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

from cloudfs.cli import configured
from cloudfs.cli.common import print_json, repository_options
from cloudfs.errors import CloudfsError

PASSWORD_SOURCES = ("password_file", "password_command", "password_env")
DEFAULT_SPOOL = 1 << 30


def register(subparsers) -> None:
    doctor = subparsers.add_parser(
        "doctor", parents=[repository_options()],
        help="check this machine, the configuration and the stores, and say what to fix",
        description="Check /dev/fuse and fusermount3, the configuration file, each directory's "
                    "source and the free space for its state directory and spool, where its "
                    "passphrase comes from, and each repository's store: reachable with these "
                    "credentials, the clock against the store's, versioning and Object Lock. One "
                    "line per finding with what to do; exit status 1 if anything must be fixed. "
                    "Nothing is written.")
    doctor.add_argument("names", nargs="*", metavar="NAME",
                        help="only these [directories.NAME] of the configuration file (default: all)")
    configured.config_option(doctor)
    doctor.add_argument("--json", action="store_true", help="the findings as JSON")
    doctor.set_defaults(run=run_doctor)


def run_doctor(args) -> int:
    from cloudfs import doctor

    findings = doctor.machine() + _checked_configuration(args)
    if args.json:
        print_json([{"level": f.level, "subject": f.subject, "message": f.message} for f in findings])
    else:
        for finding in findings:
            print(finding.line())
    failed = sum(f.level == doctor.FAIL for f in findings)
    if not args.json:
        print(f"{failed} to fix" if failed else "nothing to fix", file=sys.stderr)
    return 1 if failed else 0


def _checked_configuration(args) -> list:
    from cloudfs import doctor

    from cloudfs.settings import default_path

    path = default_path() if args.config is None else Path(args.config)
    if not path.exists() and not args.repo:
        return [doctor.Finding(doctor.FAIL, "configuration", f"no configuration file at {path}: write one "
                                                             "(docs/configuration.md), or name a repository "
                                                             "with --repo")]
    try:
        config = configured.load_config(args, required=False)
    except CloudfsError as error:
        return [doctor.Finding(doctor.FAIL, "configuration", f"{error}: fix it (cloudfs config check)")]
    findings, checked = [], set()
    if config is not None:
        findings.append(doctor.Finding(doctor.OK, "configuration",
                                       f"{config.path} is valid ({len(config.directories)} directories)"))
        for name in args.names or config.directories:
            try:
                entry = config.entry(name)
            except CloudfsError as error:
                findings.append(doctor.Finding(doctor.FAIL, "configuration", str(error)))
                continue
            entry_args = copy.copy(args)
            configured.apply(entry_args, entry.settings)
            findings += _directory(name, entry, entry_args)
            findings += _repository(entry_args, checked)
    if args.repo:
        findings += _repository(args, checked)
    return findings


def _directory(name: str, entry, args) -> list:
    from cloudfs import doctor
    from cloudfs.system.statedir import default_state_dir

    state_dir = Path(args.state_dir) if getattr(args, "state_dir", None) else default_state_dir(Path(entry.source))
    spool = entry.settings.get("spool_size") or DEFAULT_SPOOL
    return doctor.directory(name, entry.source, state_dir, spool) + [_passphrase(name, args)]


def _passphrase(name: str, args):
    """Where the passphrase comes from, and whether it can be read (it is not shown)."""
    from cloudfs import doctor
    from cloudfs.cli.common import read_passphrase

    given = [key for key in PASSWORD_SOURCES if getattr(args, key, None)]
    if not given and "CLOUDFS_PASSWORD" not in os.environ:
        return doctor.Finding(doctor.WARN, name, "no passphrase source: a mount would ask on a terminal, and "
                                                 "a service cannot; set password_file, password_env or "
                                                 "password_command")
    try:
        read_passphrase(args)
    except CloudfsError as error:
        return doctor.Finding(doctor.FAIL, name, f"{error}: fix {given[0] if given else 'CLOUDFS_PASSWORD'}")
    return doctor.Finding(doctor.OK, name, f"passphrase from {given[0] if given else 'CLOUDFS_PASSWORD'} "
                                           "(not checked against the repository)")


def _repository(args, checked: set) -> list:
    from cloudfs import doctor
    from cloudfs.cli.common import open_store_from

    key = (args.repo, args.endpoint_url, args.profile, args.region)
    if not args.repo or key in checked:
        return []
    checked.add(key)
    try:
        store = open_store_from(args)
    except CloudfsError as error:
        return [doctor.Finding(doctor.FAIL, args.repo, str(error))]
    return doctor.repository(args.repo, store)
