"""Run the `cloudfs` command the way a user does: a subprocess with an environment."""

from __future__ import annotations

import subprocess
import sys


def cloudfs(*args: str, env: dict, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloudfs", *args], env=env, input=input,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single line a failing command printed; fails the test if it printed more."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("cloudfs: error: "), lines[0]
    return lines[0]
