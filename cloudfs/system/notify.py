"""Telling the service manager how the mount is doing: systemd's sd_notify protocol.

With `Type=notify`, systemd passes `$NOTIFY_SOCKET` (a Unix datagram socket; a
leading `@` means the abstract namespace) and waits for `READY=1` before it
starts the units ordered after this one. The protocol is one datagram of
newline-separated assignments (sd_notify(3)); without `$NOTIFY_SOCKET` (not
started by systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*assignments: str) -> bool:
    """Send e.g. "READY=1", "STATUS=…"; True if a service manager was told."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(assignments).encode())
    except OSError as error:
        log.warning("cannot notify the service manager at %s: %s", address, error)
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")


def stopping(status: str) -> bool:
    return notify("STOPPING=1", f"STATUS={status}")
