"""Commands that only talk to a running mount start fast: they import no boto3,
trio, cryptography or repository code (`cloudfs status` ~0.05 s instead of ~0.3–0.8 s).

Driven the way a user does: the installed `cloudfs` command, against a real
mount, with Python's own import log (PYTHONPROFILEIMPORTTIME) as the witness.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudfs.cli import COMMAND_MODULES, build_parser, command_named
from tests.live_fixtures import live  # noqa: F401 - fixture
from tests.snapshot_fixtures import protected  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)

INSTALLED = Path(sys.executable).parent / "cloudfs"
HEAVY = ("boto3", "botocore", "trio", "cryptography", "msgpack", "tqdm", "zstandard", "blake3",
         "pyfuse3", "cloudfs.repo", "cloudfs.store", "cloudfs.live", "cloudfs.daemon")


def imports_of(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the installed command; return its result and every module it imported."""
    result = subprocess.run([str(INSTALLED), *args], capture_output=True, text=True, timeout=60,
                            env={**(env or os.environ), "PYTHONPROFILEIMPORTTIME": "1"})
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:") and line.count("|") == 2}
    return result, modules


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_building_the_parser_imports_nothing_heavy():
    code = "import sys, cloudfs.cli; cloudfs.cli.build_parser(); print(' '.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    modules = set(result.stdout.split())
    assert "cloudfs.cli.repo_commands" in modules
    assert heavy(modules) == []


def test_a_command_is_parsed_by_its_own_module_alone():
    """`cloudfs restore` builds the restore parser only: the other 12 command
    modules are not read. The table that says which module adds which command
    must be true, in the order the full parser lists them."""
    listed = []
    for module_name, commands in COMMAND_MODULES.items():
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module_name).register(subparsers)
        assert tuple(subparsers.choices) == commands, module_name
        listed += commands
    full = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    assert list(full.choices) == listed
    assert command_named(["-v", "--log-format", "json", "restore", "latest", "/x"]) == "restore"
    assert command_named(["--help"]) is command_named(["restor"]) is command_named([]) is None

    help_text, modules = _help_and_modules("restore", "--help")
    assert "SNAPSHOT[:PATH]" in help_text
    assert "cloudfs.cli.browse_commands" in modules and "cloudfs.cli.repo_commands" not in modules
    help_text, modules = _help_and_modules("--help")
    assert "restore" in help_text and "cloudfs.cli.repo_commands" in modules


def _help_and_modules(*args: str) -> tuple[str, set[str]]:
    """cloudfs's main() with `args` in a new interpreter: what it printed, and the
    modules it had imported (importlib's imports, which -X importtime does not log)."""
    code = ("import sys, cloudfs.cli\ntry:\n    cloudfs.cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    return result.stdout, set(result.stderr.split())


def test_status_of_a_running_mount_imports_nothing_heavy(live):
    root = live.mount()
    result, modules = imports_of("status", "--json", str(root))
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"source"' in result.stdout
    assert heavy(modules) == []


def test_snapshot_wait_imports_nothing_heavy_and_commits(protected):
    root = protected.mount()
    (root / "note.txt").write_text("a small change\n")
    result, modules = imports_of("snapshot", "--wait", str(root), env=protected.env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("committed ")
    assert heavy(modules) == []
