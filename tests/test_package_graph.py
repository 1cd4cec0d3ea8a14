"""Imports flow one way: each part of cloudfs imports only the parts below it.

The table is docs/architecture.md's, as data. Every import counts, including
the ones inside functions that dodge a cycle at import time: a lazy import is
still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

PACKAGE = Path(__file__).parent.parent / "cloudfs"

BASE = {"errors", "fsutil", "sqlitedb", "malloc"}
#: part -> the parts it may import (besides itself).
MAY_IMPORT = {
    "errors": set(),
    "fsutil": set(),
    "sqlitedb": set(),
    "malloc": set(),
    "locals3": set(),
    "system": BASE,
    "crypto": BASE,
    "store": BASE,
    "repo": BASE | {"crypto", "store"},
    "snapshot": BASE | {"repo"},
    "live": BASE | {"system", "snapshot"},
    "uploader": BASE | {"repo", "snapshot", "store"},
    "check": BASE | {"repo", "crypto", "snapshot"},
    "browse": BASE | {"system", "repo", "snapshot"},
    "restore": BASE | {"repo", "snapshot", "browse"},
    "control": BASE | {"system"},
    "settings": BASE | {"repo"},
    "metrics": BASE,
    "doctor": BASE | {"system", "store"},
    "alerts": BASE | {"live", "repo", "snapshot", "store"},
    "daemon": BASE | {"system", "live", "uploader", "control", "repo", "snapshot", "store", "alerts"},
    "mountproc": BASE | {"system", "live", "daemon", "control", "metrics"},
    "cli": None,         # the top: wires everything
    "__main__": {"cli"},
}


def part_of(module: str) -> str:
    """cloudfs.live.fs -> live; cloudfs.daemon -> daemon; cloudfs -> cloudfs."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cloudfs"


def imported_parts(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cloudfs":
            if node.module == "cloudfs":
                found |= {part_of(f"cloudfs.{alias.name}") for alias in node.names}
            else:
                found.add(part_of(node.module))
        elif isinstance(node, ast.Import):
            found |= {part_of(alias.name) for alias in node.names if alias.name.split(".")[0] == "cloudfs"}
    return found


def module_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)


def test_every_part_imports_only_the_parts_below_it():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(module_of(path))
        if part == "cloudfs":
            continue   # the package's own __init__: the version only
        assert part in MAY_IMPORT, f"{part} is not in the table: add it here and to docs/architecture.md"
        allowed = MAY_IMPORT[part]
        if allowed is None:
            continue
        for target in imported_parts(path) - {part, "cloudfs"} - allowed:
            wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {target}")
    assert not wrong, "imports against the flow:\n  " + "\n  ".join(wrong)


def test_the_table_names_only_parts_that_exist():
    existing = {path.stem if path.is_file() else path.name
                for path in PACKAGE.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()}
    assert set(MAY_IMPORT) <= existing
