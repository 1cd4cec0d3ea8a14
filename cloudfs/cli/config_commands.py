"""`cloudfs config check`: read the configuration file and check every key, mounting nothing."""

from __future__ import annotations

from cloudfs.cli import configured
from cloudfs.cli.common import print_json


def register(subparsers) -> None:
    config = subparsers.add_parser("config", help="the configuration file",
                                   description="The configuration file names every protected "
                                               "directory and its settings (docs/configuration.md).")
    actions = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="check the configuration file without mounting anything",
        description="Parse the configuration file and check every key and value: unknown keys, "
                    "wrong types and two entries protecting the same directory are errors naming "
                    "the file, the line and the key. Nothing is mounted or contacted.")
    configured.config_option(check)
    check.add_argument("--json", action="store_true",
                       help="print the directories with their settings as JSON")
    check.set_defaults(run=run_check)


def run_check(args) -> int:
    config = configured.load_config(args)
    if args.json:
        print_json({"path": str(config.path), "defaults": config.defaults,
                    "directories": {name: {"settings": entry.settings, "retention": entry.retention}
                                    for name, entry in config.directories.items()}})
        return 0
    count = len(config.directories)
    print(f"{config.path}: ok, {count} director{'y' if count == 1 else 'ies'}")
    for name, entry in config.directories.items():
        where = "over itself" if entry.mountpoint == entry.source else f"on {entry.mountpoint}"
        repository = entry.settings.get("repository") or "no repository (journal only)"
        print(f"  {name}: {entry.source} {where} -> {repository}")
    return 0
