"""Progress bars: a bar with its total (so a rate and an ETA) on standard error when
that is a terminal, and nothing when it is not (a log, a pipe, a service).

The terminal is a pseudo-terminal the test reads; the commands run as a user runs them.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios

import pytest

from tests.browse_fixtures import new_repo
from tests.live_fixtures import CLOUDFS

pytestmark = pytest.mark.timeout(120)


def on_a_terminal(args, env: dict) -> tuple[int, str, str]:
    """Run cloudfs with standard error on an 80-column terminal: (status, stdout, what the terminal showed)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen([*CLOUDFS, *map(str, args)], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:          # EIO: the command closed the terminal
            break
        if not data:
            break
        shown += data
    os.close(controller)
    stdout = process.communicate(timeout=60)[0].decode()
    return process.returncode, stdout, shown.decode(errors="replace")


@pytest.fixture
def repo(s3_env, tmp_path):
    repo = new_repo(s3_env, tmp_path)
    source = tmp_path / "source"
    source.mkdir()
    for index in range(20):
        (source / f"file-{index}").write_bytes(os.urandom(200_000))
    repo.take_snapshot(source)
    return repo


def test_check_read_data_and_restore_show_a_bar_with_a_total_on_a_terminal(repo, tmp_path):
    status, stdout, shown = on_a_terminal(["check", "--read-data"], repo.env())
    assert status == 0 and "no errors found" in stdout, shown
    assert "reading chunks: 100%" in shown and "/s]" in shown, shown     # a total, so a rate and an ETA
    status, stdout, shown = on_a_terminal(["restore", "latest", tmp_path / "out"], repo.env())
    assert status == 0 and stdout.startswith("restored"), shown
    assert "restoring: 100%" in shown and "/s]" in shown, shown


def test_no_bar_when_standard_error_is_not_a_terminal(repo, tmp_path):
    for args in (["check", "--read-data"], ["restore", "latest", tmp_path / "out"]):
        result = repo.cloudfs(*args)
        assert result.returncode == 0 and result.stderr == "", result.stderr
