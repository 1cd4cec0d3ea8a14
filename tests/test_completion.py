"""`cloudfs completion bash`: the script is sourced in a real bash, which is asked to
complete a few command lines the way readline would (COMP_WORDS, COMP_CWORD), and
COMPREPLY is compared with what the argument parser says."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")]


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    result = subprocess.run([sys.executable, "-m", "cloudfs", "completion", "bash"],
                            capture_output=True, text=True, timeout=30, check=True)
    path = tmp_path_factory.mktemp("completion") / "cloudfs.bash"
    path.write_text(result.stdout)
    return path


def complete(script, cwd, *words: str) -> list[str]:
    """What bash offers for the last of `words` (the word under the cursor)."""
    program = (f"source {script}\n"
               "COMP_WORDS=(\"$@\"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMPREPLY=()\n"
               "_cloudfs\n"
               "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = subprocess.run(["bash", "--norc", "-c", program, "bash", *words], cwd=cwd,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return sorted(line for line in result.stdout.splitlines() if line)


def test_subcommands_and_their_actions(script, tmp_path):
    top = complete(script, tmp_path, "cloudfs", "")
    assert {"mount", "snapshots", "restore", "key", "completion", "doctor"} <= set(top)
    assert complete(script, tmp_path, "cloudfs", "sn") == ["snapshot", "snapshots"]
    assert complete(script, tmp_path, "cloudfs", "key", "") == ["add", "list", "passwd", "remove"]
    assert complete(script, tmp_path, "cloudfs", "-v", "policy", "s") == ["set", "show"]


def test_options_of_the_command_typed_so_far(script, tmp_path):
    assert complete(script, tmp_path, "cloudfs", "mount", "--da") == ["--daemon"]
    assert "--read-data" in complete(script, tmp_path, "cloudfs", "check", "--")
    assert "--read-data" not in complete(script, tmp_path, "cloudfs", "snapshots", "--")
    assert complete(script, tmp_path, "cloudfs", "--log") == ["--log-format"]


def test_choices_of_an_option(script, tmp_path):
    assert complete(script, tmp_path, "cloudfs", "--log-format", "") == ["json", "text"]
    assert complete(script, tmp_path, "cloudfs", "--log-format", "=", "j") == ["json"]
    assert complete(script, tmp_path, "cloudfs", "init", "--s3-checksum", "m") == ["md5"]
    assert complete(script, tmp_path, "cloudfs", "completion", "") == ["bash"]


def test_paths_where_a_path_is_wanted(script, tmp_path):
    (tmp_path / "documents").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "config.toml").write_text("")
    (tmp_path / "documents" / "report.odt").write_text("")
    # a file for --config, directories for SOURCE and TARGET, nothing for a snapshot's name
    assert complete(script, tmp_path, "cloudfs", "mount", "--config", "") == ["config.toml", "data", "documents"]
    assert complete(script, tmp_path, "cloudfs", "mount", "--config", "c") == ["config.toml"]
    assert complete(script, tmp_path, "cloudfs", "mount", "d") == ["data", "documents"]
    assert complete(script, tmp_path, "cloudfs", "mount", "--interval", "5", "documents", "da") == ["data"]
    assert complete(script, tmp_path, "cloudfs", "restore", "") == []
    assert complete(script, tmp_path, "cloudfs", "restore", "latest", "") == ["data", "documents"]
    assert complete(script, tmp_path, "cloudfs", "mount", "--password-file", "documents/") == [
        "documents/report.odt"]
    # an option's value is not taken for a positional argument
    assert complete(script, tmp_path, "cloudfs", "restore", "--jobs", "4", "latest", "do") == ["documents"]
