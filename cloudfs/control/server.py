"""The control socket's server, in the daemon's trio loop (see `cloudfs.control`)."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Awaitable, Callable

import trio

from cloudfs.control.client import ReachablePath, socket_path
from cloudfs.errors import CloudfsError

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20

Handler = Callable[[dict], Awaitable[dict]]


async def serve(state_dir: Path, handlers: dict[str, Handler],
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve requests until cancelled; each connection in its own task."""
    path = socket_path(state_dir)
    path.unlink(missing_ok=True)
    sock = trio.socket.from_stdlib_socket(_bound_owner_only(path))
    sock.listen(16)
    listener = trio.SocketListener(sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(lambda stream: _serve_connection(stream, handlers),
                                       [listener], handler_nursery=nursery)
    finally:
        path.unlink(missing_ok=True)


def _bound_owner_only(path: Path) -> socket.socket:
    """A Unix socket bound at `path` with mode 0600. The umask is changed and put back
    with no await in between: in the live mount's process it is 0 while handlers run."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        with ReachablePath(path) as address:
            sock.bind(address)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock


async def _serve_connection(stream: trio.SocketStream, handlers: dict[str, Handler]) -> None:
    async with stream:
        try:
            request = json.loads(await _read_line(stream))
            handler = handlers.get(request.get("op"))
            if handler is None:
                reply = {"ok": False, "error": f"unknown operation {request.get('op')!r}"}
            else:
                reply = {"ok": True, **await handler(request)}
        except CloudfsError as error:
            reply = {"ok": False, "error": str(error)}
        except (ValueError, AttributeError) as error:
            reply = {"ok": False, "error": f"bad request: {error}"}
        except trio.BrokenResourceError:
            return
        try:
            await stream.send_all(json.dumps(reply).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass   # the client went away (e.g. interrupted `cloudfs flush`)


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        part = await stream.receive_some(65536)
        if not part:
            break
        data += part
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    return data


