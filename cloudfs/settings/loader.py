"""Reading the configuration file: find it, parse it (tomllib), check every key.

Every mistake is one `UsageError` line naming the file, the line and the key:
`/etc/cloudfs/config.toml:12: [directories.docs] interval: not a duration: 'often'`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cloudfs.errors import UsageError
from cloudfs.settings.lines import KeyLines
from cloudfs.settings.schema import ENTRY_ONLY, PASSWORD_SOURCES, RETENTION, SHARED, Checker

SYSTEM_PATH = Path("/etc/cloudfs/config.toml")
DIRECTORIES = "directories"
RETENTION_TABLE = "retention"


def default_path() -> Path:
    """$CLOUDFS_CONFIG; for root /etc/cloudfs/config.toml; else
    $XDG_CONFIG_HOME/cloudfs/config.toml (~/.config by default)."""
    if os.environ.get("CLOUDFS_CONFIG"):
        return Path(os.environ["CLOUDFS_CONFIG"])
    if os.geteuid() == 0:
        return SYSTEM_PATH
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "cloudfs" / "config.toml"


@dataclass(frozen=True)
class Directory:
    """One protected directory: its settings (the file's defaults, then its own)."""

    name: str
    settings: dict = field(default_factory=dict)
    retention: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.settings["source"]

    @property
    def mountpoint(self) -> str:
        return self.settings.get("mountpoint") or self.source


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    defaults: dict
    directories: dict[str, Directory]

    def entry(self, name: str) -> Directory:
        try:
            return self.directories[name]
        except KeyError:
            known = ", ".join(self.directories) or "none"
            raise UsageError(f"{self.path}: no [directories.{name}] (directories: {known})") from None

    def protecting(self, path: str) -> Directory | None:
        """The entry whose source is `path` (after resolving links), if any."""
        real = os.path.realpath(path)
        return next((d for d in self.directories.values() if os.path.realpath(d.source) == real), None)


def load(path: Path | str | None = None, *, required: bool = True) -> ConfigFile | None:
    """The configuration at `path` (default: `default_path()`), checked. A missing
    default file is None unless `required`; a missing named file is an error."""
    explicit = path is not None
    path = Path(path) if explicit else default_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if explicit or required:
            raise UsageError(f"no configuration file at {path}") from None
        return None
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    try:
        text = data.decode()
        document = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise UsageError(f"{path} is not valid TOML: {error}") from None
    return _Checker(path, KeyLines(text)).config(document)


class _Checker:
    def __init__(self, path: Path, lines: KeyLines):
        self.path = path
        self.lines = lines

    def fail(self, where: tuple[str, ...], message: str) -> UsageError:
        line = self.lines.line_of(where)
        return UsageError(f"{self.path}{f':{line}' if line else ''}: {message}")

    def config(self, document: dict) -> ConfigFile:
        directories = document.pop(DIRECTORIES, {})
        if not isinstance(directories, dict):
            raise self.fail((DIRECTORIES,), f"{DIRECTORIES} must be a table of [{DIRECTORIES}.NAME]")
        defaults, retention = self.table((), document, SHARED)
        found = {name: self.directory(name, entry, defaults, retention)
                 for name, entry in directories.items()}
        self.no_two_protect_one(found)
        return ConfigFile(self.path, defaults, found)

    def directory(self, name: str, entry, defaults: dict, retention: dict) -> Directory:
        where = (DIRECTORIES, name)
        if not isinstance(entry, dict):
            raise self.fail(where, f"{DIRECTORIES}.{name} must be a table")
        own, own_retention = self.table(where, entry, {**SHARED, **ENTRY_ONLY})
        if "source" not in own:
            raise self.fail(where, f"[{DIRECTORIES}.{name}] needs source = \"/the/directory\"")
        settings = {key: value for key, value in defaults.items()
                    if not (key in PASSWORD_SOURCES and set(PASSWORD_SOURCES) & own.keys())}
        settings.update(own)
        return Directory(name, settings, {**retention, **own_retention})

    def table(self, where: tuple[str, ...], table: dict, allowed: dict[str, Checker]) -> tuple[dict, dict]:
        """Check the keys of one table; returns (settings, retention)."""
        label = f"[{'.'.join(where)}] " if where else ""
        settings, retention = {}, {}
        for key, value in table.items():
            if key == RETENTION_TABLE:
                retention = self.retention(where + (key,), value)
                continue
            if key not in allowed:
                known = ", ".join(sorted([*allowed, RETENTION_TABLE]))
                raise self.fail(where + (key,), f"{label}unknown setting {key!r} (known: {known})")
            try:
                settings[key] = allowed[key](value)
            except ValueError as error:
                raise self.fail(where + (key,), f"{label}{key}: {error}") from None
        given = [key for key in PASSWORD_SOURCES if key in settings]
        if len(given) > 1:
            raise self.fail(where + (given[1],), f"{label}give one of {', '.join(PASSWORD_SOURCES)}, "
                                                 f"not {' and '.join(given)}")
        return settings, retention

    def retention(self, where: tuple[str, ...], table) -> dict:
        label = f"[{'.'.join(where)}]"
        if not isinstance(table, dict):
            raise self.fail(where, f"{label} must be a table of keep_* rules")
        rules = {}
        for key, value in table.items():
            if key not in RETENTION:
                raise self.fail(where + (key,), f"{label} unknown rule {key!r} "
                                                f"(known: {', '.join(RETENTION)})")
            try:
                rules[key] = RETENTION[key](value)
            except ValueError as error:
                raise self.fail(where + (key,), f"{label} {key}: {error}") from None
        return rules

    def no_two_protect_one(self, directories: dict[str, Directory]) -> None:
        """Two entries may not protect the same directory (or one inside the other),
        nor mount at the same place, nor share a metrics address."""
        seen: dict[str, tuple[str, str]] = {}
        for name, entry in directories.items():
            for key, value in (("source", os.path.realpath(entry.source)),
                               ("mountpoint", os.path.realpath(entry.mountpoint))):
                for other_value, (other, other_key) in seen.items():
                    if other == name:
                        continue
                    if _same_or_inside(value, other_value):
                        raise self.fail((DIRECTORIES, name, key),
                                        f"[{DIRECTORIES}.{name}] {key} {value} overlaps {other_key} "
                                        f"{other_value} of [{DIRECTORIES}.{other}]: two entries "
                                        "would protect the same files")
                seen.setdefault(value, (name, key))
        addresses: dict[str, str] = {}
        for name, entry in directories.items():
            metrics = entry.settings.get("metrics")
            if metrics is None:
                continue
            if metrics in addresses:
                raise self.fail((DIRECTORIES, name, "metrics"),
                                f"[{DIRECTORIES}.{name}] metrics {metrics[0]}:{metrics[1]} is already "
                                f"[{DIRECTORIES}.{addresses[metrics]}]'s")
            addresses[metrics] = name


def _same_or_inside(path: str, other: str) -> bool:
    return path == other or path.startswith(other.rstrip("/") + "/") or other.startswith(path.rstrip("/") + "/")
