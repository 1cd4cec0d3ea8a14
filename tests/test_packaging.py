"""The built wheel installs into a fresh virtual environment and runs as the service runs it.

The wheel is built from a copy of the source (so no stale `build/` directory of the
checkout can slip into it), together with a wheelhouse of its dependencies that pip
collects from its configured index and cache; the new environment installs from
that wheelhouse only (`--no-index`), which takes seconds. Then the installed
`cloudfs` command, and nothing of the checkout, protects two configured
directories, each started with the ExecStart line of tools/systemd/cloudfs@.service
and stopped with SIGTERM, as systemd would.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import cloudfs
from cloudfs.snapshot.reader import TreeReader
from tests.config_fixtures import configured  # noqa: F401 - fixture
from tests.repo_helpers import PASSPHRASE
from tests.service_manager import ServiceManager
from tests.tree_helpers import capture_snapshot

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).parent.parent
SOURCE_FILES = ("pyproject.toml", "README.md", "cloudfs")


def run(*command, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))}:\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `cloudfs` command of a new virtual environment that has only the wheel and
    its dependencies."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    source.mkdir()
    for name in SOURCE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    wheelhouse = work / "wheelhouse"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", wheelhouse, source, timeout=600)
    wheels = list(wheelhouse.glob("cloudfs-*.whl"))
    assert [wheel.name for wheel in wheels] == [f"cloudfs-{cloudfs.__version__}-py3-none-any.whl"]

    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheelhouse,
        wheels[0], cwd=work)
    return venv / "bin" / "cloudfs"


def test_the_installed_command_is_the_wheel_s(installed, tmp_path):
    assert run(installed, "--version", cwd=tmp_path).stdout == f"cloudfs {cloudfs.__version__}\n"
    where = run(installed.parent / "python", "-c", "import cloudfs; print(cloudfs.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(installed.parent.parent)), where.stdout
    assert "complete -F _cloudfs cloudfs" in run(installed, "completion", "bash", cwd=tmp_path).stdout


def test_two_configured_directories_run_as_services_from_the_wheel(installed, configured, tmp_path):
    for name in ("documents", "data"):
        configured.add(name, mountpoint=name == "data", interval="1h",
                       password_command=["printf", "%s", PASSPHRASE.decode()])
    managers, processes, logs = {}, {}, {}
    for name in configured.entries:
        (tmp_path / f"service-{name}").mkdir()      # (the configured directories are in tmp_path too)
        managers[name] = ServiceManager(tmp_path / f"service-{name}")
        logs[name] = tmp_path / f"service-{name}" / "service.log"
        processes[name] = managers[name].start(configured, name, logs[name], cloudfs=installed)
    for name, manager in managers.items():
        ready = manager.next_message(timeout=60)
        assert ready.get("READY") == "1", logs[name].read_text()
        assert configured.is_mounted(name)
        (configured.mountpoint(name) / f"written-into-{name}").write_text(name)

    for name, process in processes.items():
        process.send_signal(signal.SIGTERM)
    for name, process in processes.items():
        assert process.wait(timeout=60) == 0, logs[name].read_text()
        assert not configured.is_mounted(name)
        repo = configured.repository(name)
        latest = configured.snapshots(name)[-1]
        assert latest.source == configured.entries[name]["source"]
        assert f"written-into-{name}".encode() in capture_snapshot(TreeReader(repo), latest.tree)["entries"]
