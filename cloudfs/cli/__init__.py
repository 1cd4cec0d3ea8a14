"""The `cloudfs` command: parse, call one function of a lower layer, report.

Each area registers its subcommands from its own module; this file only wires
them together and turns errors into one line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cloudfs import __version__
from cloudfs.errors import CloudfsError, first_cloudfs_error

# Modules that add subcommands; each has register(subparsers).
COMMAND_MODULES = (
    "cloudfs.cli.repo_commands",
    "cloudfs.cli.mount_commands",
    "cloudfs.cli.browse_commands",
    "cloudfs.cli.daemon_commands",
    "cloudfs.cli.retention_commands",
    "cloudfs.cli.lock_commands",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="cloudfs",
        description="A filesystem that backs itself up: encrypted, incremental snapshots on S3.",
    )
    parser.add_argument("--version", action="version", version=f"cloudfs {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return args.run(args) or 0
    except (CloudfsError, BaseExceptionGroup) as raised:
        error = first_cloudfs_error(raised)
        if error is None:
            raise
        print(f"cloudfs: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("cloudfs: interrupted", file=sys.stderr)
        return 130
