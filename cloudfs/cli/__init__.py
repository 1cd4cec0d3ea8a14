"""The `cloudfs` command: parse, call one function of a lower layer, report.

Each area registers its subcommands from its own module; this file only wires
them together and turns errors into one line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import sys

from cloudfs import __version__
from cloudfs.cli import logs
from cloudfs.errors import CloudfsError, first_cloudfs_error, leaf_errors

# Modules that add subcommands; each has register(subparsers).
COMMAND_MODULES = (
    "cloudfs.cli.repo_commands",
    "cloudfs.cli.mount_commands",
    "cloudfs.cli.browse_commands",
    "cloudfs.cli.daemon_commands",
    "cloudfs.cli.retention_commands",
    "cloudfs.cli.prune_commands",
    "cloudfs.cli.config_commands",
    "cloudfs.cli.service_commands",
    "cloudfs.cli.doctor_commands",
    "cloudfs.cli.lock_commands",
    "cloudfs.cli.completion_commands",
    "cloudfs.cli.target_commands",
    "cloudfs.cli.drill_commands",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="cloudfs",
        description="A filesystem that backs itself up: encrypted, incremental snapshots on S3.",
    )
    parser.add_argument("--version", action="version", version=f"cloudfs {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--log-format", choices=logs.FORMATS, default="text",
                        help="log lines as text or as one JSON object each (default text)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "opens_repository", False):
        from cloudfs.system.readahead import read_modules_ahead

        read_modules_ahead()     # from a cold disk, the imports to come wait less
    logs.configure(args.verbose, args.log_format)
    try:
        return args.run(args) or 0
    except (CloudfsError, BaseExceptionGroup) as raised:
        error = first_cloudfs_error(raised)
        if error is None:
            if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaf_errors(raised)):
                return _interrupted()    # Ctrl-C inside a trio nursery
            raise
        print(f"cloudfs: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return _interrupted()


def _interrupted() -> int:
    print("cloudfs: interrupted", file=sys.stderr)
    return 130
