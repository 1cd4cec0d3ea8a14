"""systemd units for protected directories: the templates, and installing them.

- `cloudfs@.service`: one protected directory of the configuration file per
  instance (`cloudfs@documents` mounts `[directories.documents]`), Type=notify:
  ready once the mount answers; `systemctl stop` sends SIGTERM, which takes a
  final snapshot (at most `snapshot_timeout`) and unmounts.
- `cloudfs-maintenance@.service` and `.timer`: the repository's upkeep with the
  maintenance role's credentials (its own environment file), weekly.
- `cloudfs-drill@.service` and `.timer`: a recovery drill of the repository
  (`cloudfs drill NAME`, the mount's own credentials: it only reads), monthly.

`install()` writes them, a drop-in for the instance (the mounts it needs first,
the units it comes before), and enables the instance the way `systemctl enable`
does: a link in the `.wants/` directory of the target its [Install] names.
tools/systemd/ holds the templates as written for /usr/local/bin/cloudfs and
/etc/cloudfs/config.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cloudfs.fsutil import make_directories, replace_durably

MOUNT = "cloudfs@.service"
MAINTENANCE = "cloudfs-maintenance@.service"
MAINTENANCE_TIMER = "cloudfs-maintenance@.timer"
DRILL = "cloudfs-drill@.service"
DRILL_TIMER = "cloudfs-drill@.timer"
DROP_IN = "cloudfs.conf"

_MOUNT_TEXT = """\
# cloudfs: one protected directory of {config} per instance:
#   systemctl enable --now cloudfs@NAME.service    mounts [directories.NAME]
# Written by `cloudfs service install NAME`, which also writes a drop-in
# (cloudfs@NAME.service.d/{drop_in}) with the mounts it needs and the units it
# comes before. Services that use the directory: Requires= and After=
# cloudfs@NAME.service (docs/operations.md, "At boot").
[Unit]
Description=cloudfs: protect the directory %i
{network}After=local-fs.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={cloudfs} mount %i --config {config}
# SIGTERM takes a final snapshot (at most snapshot_timeout, default 30 s), then
# unmounts: keep this longer than snapshot_timeout.
TimeoutStopSec=5min
KillMode=mixed
Restart=on-failure
RestartSec=10s

[Install]
WantedBy={wanted_by}
"""

_MAINTENANCE_TEXT = """\
# cloudfs: upkeep of the repository of [directories.%i] of {config}:
# `cloudfs maintenance` forgets by the repository's policy, prunes (deleting what
# the previous week's run marked), then checks. Run it on one machine per repository.
# The maintenance role's credentials, which may delete where the mount's may
# not, go in the environment file (AWS_ACCESS_KEY_ID=..., AWS_SECRET_ACCESS_KEY=...).
[Unit]
Description=cloudfs: maintenance of the repository of %i
{network}
[Service]
Type=oneshot
EnvironmentFile=-{environment_dir}/maintenance-%i.env
ExecStart={cloudfs} maintenance %i --config {config}
Nice=10
IOSchedulingClass=idle
"""

_TIMER_TEXT = """\
# cloudfs: weekly upkeep of the repository of [directories.%i]
[Unit]
Description=cloudfs: weekly maintenance of the repository of %i

[Timer]
OnCalendar=weekly
RandomizedDelaySec=1h
Persistent=true

[Install]
WantedBy=timers.target
"""

_DRILL_TEXT = """\
# cloudfs: a recovery drill of the repository of [directories.%i] of {config}:
# `cloudfs drill` restores a sample of the latest snapshot from each target into
# a scratch directory (removed after), and keeps the projected time to restore
# everything (RTO) for `cloudfs status`. It only reads: the mount's credentials do.
[Unit]
Description=cloudfs: recovery drill of the repository of %i
{network}
[Service]
Type=oneshot
ExecStart={cloudfs} drill %i --config {config}
Nice=10
"""

_DRILL_TIMER_TEXT = """\
# cloudfs: monthly recovery drill of the repository of [directories.%i]
[Unit]
Description=cloudfs: monthly recovery drill of the repository of %i

[Timer]
OnCalendar=monthly
RandomizedDelaySec=6h
Persistent=true

[Install]
WantedBy=timers.target
"""

_NETWORK = "Wants=network-online.target\nAfter=network-online.target\n"


@dataclass(frozen=True)
class UnitSettings:
    cloudfs: str                 # the cloudfs command, an absolute path
    config: str                  # the configuration file, an absolute path
    user: bool = False           # a user's units (systemctl --user) instead of the system's

    @property
    def wanted_by(self) -> str:
        return "default.target" if self.user else "multi-user.target"


def templates(settings: UnitSettings) -> dict[str, str]:
    """File name -> text of the unit templates."""
    values = dict(cloudfs=settings.cloudfs.replace("%", "%%"), config=_exec_word(settings.config), drop_in=DROP_IN,
                  wanted_by=settings.wanted_by,
                  network="" if settings.user else _NETWORK,
                  environment_dir="%E/cloudfs" if settings.user else "/etc/cloudfs")
    return {MOUNT: _MOUNT_TEXT.format(**values),
            MAINTENANCE: _MAINTENANCE_TEXT.format(**values),
            MAINTENANCE_TIMER: _TIMER_TEXT.format(**values),
            DRILL: _DRILL_TEXT.format(**values),
            DRILL_TIMER: _DRILL_TIMER_TEXT.format(**values)}


def _exec_word(text: str) -> str:
    """`text` as one word of an ExecStart= line: % escaped, quoted if it has a space."""
    escaped = text.replace("%", "%%")
    return f'"{escaped}"' if any(c.isspace() for c in escaped) else escaped


def drop_in(needs_mounted: list[str], before: list[str]) -> str:
    """The instance's drop-in: `RequiresMountsFor=` what must be mounted before the
    mount starts, `Before=` the units that use the protected directory."""
    lines = ["# Written by `cloudfs service install`.", "[Unit]"]
    if needs_mounted:
        lines.append("RequiresMountsFor=" + " ".join(needs_mounted))
    if before:
        lines.append("Before=" + " ".join(before))
    return "\n".join(lines) + "\n"


def default_unit_dir(user: bool) -> Path:
    if not user:
        return Path("/etc/systemd/system")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "systemd" / "user"


def install(unit_dir: Path, name: str, settings: UnitSettings, instance_drop_in: str,
            enable: bool = True) -> list[Path]:
    """Write the templates and the drop-in of instance `name`; with `enable`, link the
    instance and its timers into their targets' .wants/. Returns the paths written."""
    written = []
    for file_name, text in templates(settings).items():
        written.append(_write(unit_dir / file_name, text))
    written.append(_write(unit_dir / f"cloudfs@{name}.service.d" / DROP_IN, instance_drop_in))
    if enable:
        written.append(_link(unit_dir / f"{settings.wanted_by}.wants" / f"cloudfs@{name}.service",
                             unit_dir / MOUNT))
        for timer in (MAINTENANCE_TIMER, DRILL_TIMER):
            written.append(_link(unit_dir / "timers.target.wants" / timer.replace("@", f"@{name}"),
                                 unit_dir / timer))
    return written


def reload_manager(user: bool) -> bool:
    """`systemctl daemon-reload` if systemd runs here; whether it did."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return False
    subprocess.run(["systemctl", *(["--user"] if user else []), "daemon-reload"], check=False)
    return True


def _write(path: Path, text: str) -> Path:
    make_directories(path.parent, 0o755)
    replace_durably(path, text.encode(), mode=0o644)
    return path


def _link(link: Path, target: Path) -> Path:
    make_directories(link.parent, 0o755)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)
    return link
