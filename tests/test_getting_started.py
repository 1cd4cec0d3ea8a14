"""docs/getting-started.md stays true to the commands: every `cloudfs …` line of its
shell blocks parses with today's argument parser, and every TOML block is a
configuration file that `cloudfs config check` accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cloudfs import settings
from cloudfs.cli import build_parser

pytestmark = pytest.mark.timeout(60)

GUIDE = Path(__file__).parent.parent / "docs" / "getting-started.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S)


def command_lines() -> list[str]:
    lines = []
    for block in blocks("sh"):
        for line in block.splitlines():
            line = re.split(r"\s+(#|>|\|)\s", line.strip())[0]
            if line.startswith("cloudfs "):
                lines.append(line)
    return lines


def test_there_is_something_to_check():
    assert len(command_lines()) >= 15 and len(blocks("toml")) == 3


@pytest.mark.parametrize("line", command_lines())
def test_every_command_of_the_guide_parses(line, capsys):
    try:
        build_parser().parse_args(shlex.split(line)[1:])
    except SystemExit as exit:        # --version exits 0; a mistake exits 2
        assert exit.code == 0, f"{line}: {capsys.readouterr().err}"


@pytest.mark.parametrize("number", range(3))
def test_every_configuration_of_the_guide_is_valid(number, tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(blocks("toml")[number])
    config = settings.load(path)
    assert list(config.directories) == ["documents"]
