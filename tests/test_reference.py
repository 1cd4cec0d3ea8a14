"""docs/reference.md is what tools/reference writes from the argument parser today."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudfs.cli import build_parser
from cloudfs.cli.parsertree import tree
from cloudfs.cli.reference import render

pytestmark = pytest.mark.timeout(60)

REFERENCE = Path(__file__).parent.parent / "docs" / "reference.md"


def test_the_committed_reference_is_current():
    assert REFERENCE.read_text() == render(build_parser()), \
        "docs/reference.md is stale: run tools/reference and commit it"


def test_every_command_and_option_is_in_it():
    text = REFERENCE.read_text()
    for command in tree(build_parser()).walk():
        if command.path and not command.subcommands:
            assert f"\n## {command.name}\n" in text
        for action in command.options:
            assert f"`{', '.join(action.option_strings)}" in text, action.option_strings
