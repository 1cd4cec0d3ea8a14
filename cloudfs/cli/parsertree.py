"""The command tree of an argparse parser, for what is generated from it: the
bash completion (`cloudfs completion bash`) and the command reference
(`tools/reference`, docs/reference.md).

argparse keeps its tree in private attributes (`_actions`, `_choices_actions`,
`_action_groups`); this module is the one place that reads them, so a change
of argparse breaks one module, and tests/test_completion.py and
tests/test_reference.py say so at once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field


@dataclass
class Command:
    """One parser of the tree: `cloudfs`, `cloudfs key`, `cloudfs key add`, ..."""

    path: tuple[str, ...]            # () for the program itself
    parser: argparse.ArgumentParser
    summary: str = ""                # the help its parent's list gives it
    subcommands: list[Command] = field(default_factory=list)

    @property
    def name(self) -> str:
        return " ".join((self.parser.prog.split()[0], *self.path))

    @property
    def options(self) -> list[argparse.Action]:
        return [action for action in self.parser._actions if action.option_strings]

    @property
    def positionals(self) -> list[argparse.Action]:
        return [action for action in self.parser._actions
                if not action.option_strings and not isinstance(action, argparse._SubParsersAction)]

    def groups(self) -> list[tuple[str, list[argparse.Action]]]:
        """(title, options) of each option group with options, in the order of --help."""
        found = []
        for group in self.parser._action_groups:
            actions = [action for action in group._group_actions if action.option_strings]
            if actions:
                found.append((group.title or "options", actions))
        return found

    def walk(self):
        """This command and every command below it, depth first, in the parser's order."""
        yield self
        for sub in self.subcommands:
            yield from sub.walk()


def tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), summary: str = "") -> Command:
    command = Command(path, parser, summary)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                command.subcommands.append(tree(sub, (*path, name), summaries.get(name, "")))
    return command


def takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def metavar(action: argparse.Action) -> str:
    """How --help names the action's value (or the positional itself)."""
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest
