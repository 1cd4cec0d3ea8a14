"""The README's first command, run end to end as part of the suite."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_the_demo_runs_end_to_end():
    result = subprocess.run([str(ROOT / "tools" / "demo")], capture_output=True, text=True, timeout=580)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no errors found" in result.stdout
    assert "demo finished" in result.stdout
