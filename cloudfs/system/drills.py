"""The last recovery drill of each repository, kept on this machine: `cloudfs drill`
writes it, and a mount of the repository shows it in `cloudfs status` and its
metrics. A small JSON file per repository under the state home."""

from __future__ import annotations

import json
from pathlib import Path

from cloudfs.fsutil import make_directories, replace_durably
from cloudfs.system.statedir import state_home


def drill_path(repo_id_hex: str) -> Path:
    return state_home() / "drills" / f"{repo_id_hex}.json"


def save_drill(repo_id_hex: str, record: dict) -> None:
    path = drill_path(repo_id_hex)
    make_directories(path.parent)
    replace_durably(path, json.dumps(record, indent=1).encode())


def last_drill(repo_id_hex: str) -> dict | None:
    """The last drill's record, or None if none ran here (or it cannot be read)."""
    try:
        return json.loads(drill_path(repo_id_hex).read_text())
    except (OSError, ValueError):
        return None
