"""Where a key sits in a TOML file: tomllib says what a file holds, not on which line.

`KeyLines(text).line_of(("directories", "docs", "interval"))` is the line that
defines that key, or of the nearest table or key above it that the file writes
down (a key inside an inline table is reported at its table's line). Good
enough to point a person at the right place; not a TOML parser: a line inside
a multi-line string that looks like `key = ...` may be taken for a key.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGNMENT = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_PART = re.compile(r"""[A-Za-z0-9_-]+|"([^"]*)"|'([^']*)'""")

Path = tuple[str, ...]


def _dotted(text: str) -> Path:
    return tuple(match.group(1) if match.group(1) is not None else
                 match.group(2) if match.group(2) is not None else match.group(0)
                 for match in _PART.finditer(text))


class KeyLines:
    """The line number (1-based) of every table header and key assignment in a TOML text."""

    def __init__(self, text: str):
        self._lines: dict[Path, int] = {}
        table: Path = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                table = _dotted(header.group(1))
                self._lines.setdefault(table, number)
                continue
            assignment = _ASSIGNMENT.match(line)
            if assignment:
                self._lines.setdefault(table + _dotted(assignment.group(1)), number)

    def line_of(self, path: Path) -> int | None:
        """The line of `path`, or of its nearest ancestor the file writes down."""
        for end in range(len(path), 0, -1):
            if path[:end] in self._lines:
                return self._lines[path[:end]]
        return None
