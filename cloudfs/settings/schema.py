"""What the configuration file may say, key by key, and how each value is checked.

A checker takes the value as TOML typed it and returns it as cloudfs uses it
(seconds, bytes, an argument list), or raises ValueError saying what it should
be. `SHARED` keys may stand at the top of the file (defaults for every
directory) or in a `[directories.NAME]` table; `ENTRY_ONLY` keys only in the
latter. `RETENTION` keys belong in `[directories.NAME.retention]` (and at the
top, in `[retention]`): they are checked and kept for the retention work, and
nothing acts on them yet.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable

from cloudfs.settings.units import parse_address, parse_duration, parse_duration_or_off, parse_size

Checker = Callable[[object], object]


def text(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def absolute_path(value) -> str:
    path = os.path.expanduser(text(value))
    if not os.path.isabs(path):
        raise ValueError(f"must be an absolute path, not {value!r}")
    return os.path.normpath(path)


def _number_or_text(parse: Callable[[str], object]) -> Checker:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"must be a number or a string, not {_toml_type(value)}")
        return parse(str(value))
    return check


duration = _number_or_text(parse_duration)
duration_or_off = _number_or_text(parse_duration_or_off)
size = _number_or_text(parse_size)


def positive_integer(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a whole number of at least 1, not {value!r}")
    return value


def compression(value) -> str:
    from cloudfs.repo.config import parse_compression

    parse_compression(text(value))
    return value


def patterns(value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError("must be a list of patterns (strings)")
    return list(value)


def bits_per_byte(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 8:
        raise ValueError(f"must be a number of bits per byte above 0 and at most 8, not {value!r}")
    return float(value)


def boolean(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_toml_type(value)}")
    return value


def command(value) -> list[str]:
    """A command as a string (split like a shell would, without running one) or a list."""
    if isinstance(value, str):
        argv = shlex.split(value)
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        argv = list(value)
    else:
        raise ValueError("must be a command: a string or a list of strings")
    if not argv:
        raise ValueError("must name a command")
    return argv


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def environment_name(value) -> str:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ValueError("must be the name of an environment variable")
    return value


def address(value) -> tuple[str, int]:
    return parse_address(text(value))


def _toml_type(value) -> str:
    return {bool: "true/false", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


#: Keys allowed at the top of the file and in each [directories.NAME]: key -> checker.
SHARED: dict[str, Checker] = {
    "repository": text,
    "endpoint_url": text,
    "region": text,
    "profile": text,
    "ca_bundle": absolute_path,
    "password_file": absolute_path,
    "password_env": environment_name,
    "password_command": command,
    "interval": duration,
    "rescan_interval": duration_or_off,
    "snapshot_timeout": duration,
    "spool_size": size,
    "bandwidth_limit": size,
    "compression": compression,
    "exclude": patterns,
    "cache_dir": absolute_path,
    "allow_other": boolean,
    "required_targets": positive_integer,
    "tripwire": boolean,
    "tripwire_files": positive_integer,
    "tripwire_window": duration,
    "tripwire_entropy": bits_per_byte,
}

#: Keys only a [directories.NAME] table may hold.
ENTRY_ONLY: dict[str, Checker] = {
    "source": absolute_path,
    "mountpoint": absolute_path,
    "state_dir": absolute_path,
    "metrics": address,
}

PASSWORD_SOURCES = ("password_file", "password_env", "password_command")

# -- retention (checked and kept; the retention work acts on it) ----------------------------

PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")
_CALENDAR = re.compile(r"^(\d+[ymwdh])+$")


def keep_count(value) -> int | str:
    if value == "unlimited":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError('must be a count of at least 1, or "unlimited"')
    return value


def keep_window(value) -> str:
    compact = text(value).strip().lower()
    if not _CALENDAR.match(compact):
        raise ValueError(f"not a duration: {value!r} (e.g. 12h, 3d, 2w, 6m, 1y6m)")
    return compact


def keep_tags(value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError("must be a list of tags (strings)")
    return list(value)


RETENTION: dict[str, Checker] = {
    "keep_last": keep_count,
    **{f"keep_{period}": keep_count for period in PERIODS},
    "keep_within": keep_window,
    **{f"keep_{period}_within": keep_window for period in PERIODS},
    "keep_tag": keep_tags,
}
