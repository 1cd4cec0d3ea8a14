"""The daemon's control socket: `cloudfs status|snapshot|flush|rescan|stop` talk to a running mount.

A Unix stream socket `control.sock` in the mount's state directory (which is
0700, and the socket itself 0600: owner only). The protocol is one JSON object
per line: the client sends {"op": NAME, ...arguments}, the daemon answers
{"ok": true, ...result} or {"ok": false, "error": "one line"} when the operation
is done (a `flush` answers once everything sealed is committed).

`cloudfs.control` itself is the client, light enough for a command that only
asks a running mount (no trio, no boto3: `cloudfs status` starts in ~50 ms);
the daemon serves with `cloudfs.control.server`.
"""

from cloudfs.control.client import (
    CONTROL_NAME,
    DaemonUnreachable,
    ReachablePath,
    find_state_dir,
    request,
    socket_path,
)

__all__ = ["CONTROL_NAME", "DaemonUnreachable", "ReachablePath", "find_state_dir", "request", "socket_path"]
