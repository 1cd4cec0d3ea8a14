"""docs/reference.md, the command reference, written from the argument parser.

`tools/reference` writes it; tests/test_reference.py fails when the committed
file differs from what `render(build_parser())` gives, so a new option cannot
land without its line in the reference. The text is the parser's own (help,
description, metavars, choices); what the parser cannot say (exit statuses,
environment, files) is written here once.

Option groups that several commands share (the repository options, the keep
rules, `--host`/`--source`) are written out once and referred to.
"""

from __future__ import annotations

import argparse
import re

from cloudfs.cli.parsertree import Command, metavar, takes_value, tree

HEADER = """\
# Command reference

<!-- Written by tools/reference from cloudfs' argument parser: edit the help texts
     in cloudfs/cli/, then run tools/reference. tests/test_reference.py checks it. -->

The same text as `cloudfs COMMAND --help`, in one page. How the commands fit
together: [operations.md](operations.md); the configuration file:
[configuration.md](configuration.md); what `--json` prints: [json.md](json.md);
every error message and what to do: [troubleshooting.md](troubleshooting.md).
"""

EXIT_STATUSES = [
    ("0", "success"),
    ("1", "the command failed (one line `cloudfs: error: …` on standard error, see "
          "[troubleshooting.md](troubleshooting.md)); or it ran and found something wrong: `check` "
          "found damage, `doctor` found something to fix, `restore` could not restore some files, "
          "`mount --all` could not mount an entry"),
    ("2", "usage: a wrong option or value, a mistake in the configuration file, a passphrase that "
          "cannot be read"),
    ("130", "interrupted (Ctrl-C)"),
]
ENVIRONMENT = [
    ("`CLOUDFS_REPO`", "the repository, where `--repo` is not given"),
    ("`CLOUDFS_PASSWORD`", "the passphrase (after `--password-file`, `--password-command` and the "
                           "configuration's `password_env`)"),
    ("`CLOUDFS_PASSWORD_FILE`", "a file holding the passphrase, where `--password-file` is not given"),
    ("`CLOUDFS_NEW_PASSWORD`", "the new passphrase of `key add` and `key passwd`"),
    ("`CLOUDFS_ENDPOINT_URL`", "the S3 endpoint, where `--endpoint-url` is not given (then "
                               "`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`)"),
    ("`CLOUDFS_CONFIG`", "the configuration file, where `--config` is not given"),
    ("`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, `AWS_REGION`, `AWS_CA_BUNDLE`",
     "S3 credentials and settings, as for every AWS tool"),
    ("`XDG_CONFIG_HOME`, `XDG_STATE_HOME`, `XDG_CACHE_HOME`",
     "where the configuration file, the mounts' state and the cache are (`~/.config`, "
     "`~/.local/state`, `~/.cache`)"),
    ("`NOTIFY_SOCKET`", "set by systemd for a `Type=notify` service: the mount says `READY=1` there "
                        "once it serves"),
]
FILES = [
    ("`/etc/cloudfs/config.toml` (root), `~/.config/cloudfs/config.toml`",
     "the configuration file ([configuration.md](configuration.md))"),
    ("`~/.local/state/cloudfs/<hash of SOURCE>/`",
     "a mount's journal, manifest, spool, control socket and `mount.log`"),
    ("`~/.cache/cloudfs/<repository id>/`",
     "index and snapshot objects as stored (encrypted); may be deleted"),
    ("`/etc/systemd/system/cloudfs@.service`",
     "written by `service install` ([operations.md](operations.md#at-boot-systemd))"),
]
DAEMON_STATUS = ("`mount --daemon` and `browse --daemon` return once the mount serves, with the\n"
                 "status the mount process would have had if it failed before that.\n")


def _footer() -> list[str]:
    return [*_table("Exit status", ("status", "meaning"), EXIT_STATUSES), DAEMON_STATUS,
            *_table("Environment", ("variable", "used for"), ENVIRONMENT),
            *_table("Files", ("path", "what"), FILES)]


def _table(title: str, columns: tuple[str, str], rows) -> list[str]:
    return [f"## {title}\n", f"| {columns[0]} | {columns[1]} |", "|---|---|",
            *(f"| {left} | {right} |" for left, right in rows), ""]


def render(parser: argparse.ArgumentParser) -> str:
    root = tree(parser)
    shared = _shared_groups(root)
    out = [HEADER, "## Synopsis\n", f"    {_synopsis(root)}\n", _text(parser.description), "",
           "## Commands\n", "| command | what it does |", "|---|---|"]
    for command in root.walk():
        if command.path and not command.subcommands:
            out.append(f"| [`{command.name}`](#{_anchor(command.name)}) | {_escape(command.summary)} |")
    out.append("")
    out += _options_section("Global options", root.groups(), {})
    for command in root.walk():
        if command.path and not command.subcommands:
            out += _command(command, shared)
    out.append("## Options shared by several commands\n")
    for title, actions in shared.values():
        out.append(f"### {_shared_heading(title)}\n")
        if "(" in title:
            out.append(_text(title[title.index("(") + 1:title.rindex(")")]).capitalize() + ".\n")
        out += [f"- {_option(action)}: {_help(action)}" for action in actions] + [""]
    out += _footer()
    return "\n".join(out)


def _command(command: Command, shared: dict) -> list[str]:
    lines = [f"## {command.name}\n", _text(command.summary[:1].upper() + command.summary[1:]) + ".", "",
             f"    {_synopsis(command)}\n"]
    if command.parser.description:
        lines += [_text(command.parser.description), ""]
    if command.positionals:
        lines.append("Arguments:\n")
        for action in command.positionals:
            lines.append(f"- `{metavar(action)}`: {_help(action)}")
        lines.append("")
    lines += _options_section("Options", command.groups(), shared, level=None)
    return lines


def _options_section(title: str, groups, shared: dict, level: str | None = "##") -> list[str]:
    lines = [f"{level} {title}\n" if level else f"{title}:\n"]
    for group_title, actions in groups:
        key = _group_key(group_title, actions)
        if key in shared:
            heading = _shared_heading(shared[key][0])
            lines.append(f"- the {heading[0].lower()}{heading[1:]}: see [{heading}](#{_anchor(heading)})")
            continue
        if group_title not in ("options", title):
            lines.append(f"- *{group_title}*:")
            indent = "  "
        else:
            indent = ""
        for action in actions:
            if "-h" not in action.option_strings or title == "Global options":
                lines.append(f"{indent}- {_option(action)}: {_help(action)}")
    lines.append("")
    return lines


def _shared_groups(root: Command) -> dict:
    """(title, option strings) -> (title, actions) of every titled group that more
    than one command has."""
    seen: dict = {}
    for command in root.walk():
        if not command.path:
            continue
        for title, actions in command.groups():
            if title != "options":
                seen.setdefault(_group_key(title, actions), []).append(actions)
    return {key: (key[0], found[0]) for key, found in seen.items() if len(found) > 1}


def _shared_heading(title: str) -> str:
    title = title.split(" (")[0]
    return f"{title[0].upper()}{title[1:]} options"


def _group_key(title: str, actions) -> tuple:
    return (title, tuple(s for action in actions for s in action.option_strings))


def _option(action: argparse.Action) -> str:
    names = ", ".join(action.option_strings)
    return f"`{names} {metavar(action)}`" if takes_value(action) else f"`{names}`"


def _synopsis(command: Command) -> str:
    parts = [command.name]
    if command.options:
        parts.append("[OPTIONS]")
    if command.subcommands:
        parts.append("COMMAND")
    for action in command.positionals:
        name = metavar(action)
        parts.append({"?": f"[{name}]", "*": f"[{name} ...]", "+": f"{name} [{name} ...]"}.get(action.nargs, name))
    return " ".join(parts)


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "--json" in action.option_strings and not text:
        return "print the result as JSON ([json.md](json.md))"
    if action.choices and action.metavar and not isinstance(action.choices, dict):
        text = f"{text} (one of: {', '.join(map(str, action.choices))})" if text else \
            f"one of: {', '.join(map(str, action.choices))}"
    if "%(" in text:
        text = text % {"default": action.default, "prog": "cloudfs"}
    return _escape(text) or "—"


def _text(text: str | None) -> str:
    return _escape(" ".join((text or "").split()))


def _escape(text: str) -> str:
    """Markdown-safe: keep `code` spans, escape the table bar and stray asterisks."""
    return text.replace("|", "\\|").replace("*", "\\*").replace("\\*`", "*`")


def _anchor(title: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    """python -m cloudfs.cli.reference FILE [--check]: write FILE, or with --check
    exit 1 if it is not what would be written."""
    import sys
    from pathlib import Path

    from cloudfs.cli import build_parser

    args = sys.argv[1:] if argv is None else argv
    path, check = Path(args[0]), "--check" in args[1:]
    text = render(build_parser())
    if check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            print(f"{path} is stale: run tools/reference", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
