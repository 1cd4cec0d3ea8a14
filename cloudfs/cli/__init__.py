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

# Modules that add subcommands (each has register(subparsers)), and the commands
# each adds: a command is parsed with its own module's parser alone, so a cold
# start reads one of them instead of all 13 (tests/test_cli_startup.py keeps
# the table true). In this order the full parser lists them.
COMMAND_MODULES = {
    "cloudfs.cli.repo_commands": ("init", "key", "snapshots", "check", "repair"),
    "cloudfs.cli.mount_commands": ("mount", "umount", "changes"),
    "cloudfs.cli.browse_commands": ("browse", "restore"),
    "cloudfs.cli.daemon_commands": ("status", "snapshot", "flush", "rescan", "alerts"),
    "cloudfs.cli.retention_commands": ("forget", "policy", "pin", "unpin"),
    "cloudfs.cli.prune_commands": ("prune",),
    "cloudfs.cli.config_commands": ("config",),
    "cloudfs.cli.service_commands": ("service", "maintenance"),
    "cloudfs.cli.doctor_commands": ("doctor",),
    "cloudfs.cli.lock_commands": ("locks",),
    "cloudfs.cli.completion_commands": ("completion",),
    "cloudfs.cli.target_commands": ("targets",),
    "cloudfs.cli.drill_commands": ("drill",),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of `command` alone (with the global options)."""
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
    for module_name, commands in COMMAND_MODULES.items():
        if command is None or command in commands:
            importlib.import_module(module_name).register(subparsers)
    return parser


def command_named(argv: list[str]) -> str | None:
    """The command `argv` names, if it is one (else None: the full parser is needed,
    for --help, a mistyped command or none at all)."""
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--log-format":
            next(arguments, None)
        elif not argument.startswith("-"):
            return argument if any(argument in commands for commands in COMMAND_MODULES.values()) else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_named(argv)).parse_args(argv)
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
