"""The command line meets the configuration file: `--config`, and settings as options.

A command that reads the file calls `load_config(args)`; `apply(args, settings)`
fills every option the command line (or a `CLOUDFS_*` variable) left unset from
the file, so options given there always win. The argparse types here parse
sizes, durations and addresses with the same functions as the file
(`cloudfs.settings`), imported when they run: this module, like every command
module, imports only the standard library at the top.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

#: configuration key -> the attribute argparse gives the option (where they differ)
ATTRIBUTES = {"repository": "repo"}
PASSWORD_SOURCES = ("password_file", "password_env", "password_command")
#: configuration key -> the type argparse gives the option (where it is not the file's)
TYPES = {"cache_dir": Path}
#: keys of an entry that are not options of every command that reads it
NOT_OPTIONS = {"source", "mountpoint"}


def config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="the configuration file (default $CLOUDFS_CONFIG, else "
                             "/etc/cloudfs/config.toml for root, $XDG_CONFIG_HOME/cloudfs/config.toml "
                             "for others)")


def load_config(args, *, required: bool = True):
    """The configuration file `--config` names, or the default one (None if that is
    missing and not `required`)."""
    from cloudfs import settings

    return settings.load(args.config, required=required)


def apply(args, values: dict) -> None:
    """Set every option of `args` that is still unset from `values` (configuration keys)."""
    passphrase_given = any(getattr(args, key, None) for key in PASSWORD_SOURCES)
    for key, value in values.items():
        if key in NOT_OPTIONS or (key in PASSWORD_SOURCES and passphrase_given):
            continue
        attribute = ATTRIBUTES.get(key, key)
        if getattr(args, attribute, None) in (None, []):
            setattr(args, attribute, TYPES.get(key, lambda same: same)(value))


def _argument_type(parse_name: str):
    def convert(text: str):
        from cloudfs import settings

        try:
            return getattr(settings, parse_name)(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse_name.removeprefix("parse_")
    return convert


size = _argument_type("parse_size")
duration = _argument_type("parse_duration")
duration_or_off = _argument_type("parse_duration_or_off")
address = _argument_type("parse_address")


def names_an_entry(config, target: str | None) -> bool:
    """Whether `target` is a [directories.NAME] of `config` rather than a path."""
    return config is not None and target is not None and os.sep not in target and target in config.directories
