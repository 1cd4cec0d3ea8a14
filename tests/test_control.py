"""The control socket: one JSON request, one JSON answer, owner-only."""

import os
import stat
import threading

import pytest
import trio

from cloudfs import control
from cloudfs.control import server as control_server
from cloudfs.cli.daemon_commands import format_status
from cloudfs.errors import CloudfsError, UsageError


def serve_in_background(state_dir, handlers):
    """Run control.serve in a trio loop on a thread until stop() is called."""
    ready, stopper = threading.Event(), {}

    async def main():
        async with trio.open_nursery() as nursery:
            stopper["cancel"] = nursery.cancel_scope.cancel
            stopper["token"] = trio.lowlevel.current_trio_token()
            await nursery.start(control_server.serve, state_dir, handlers)
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)

    def stop():
        trio.from_thread.run_sync(stopper["cancel"], trio_token=stopper["token"])
        thread.join(10)

    return stop


def test_requests_get_answers_and_errors_are_one_line(tmp_path):
    calls = []

    async def status(request):
        calls.append(request)
        return {"pending_files": 3}

    async def refuse(request):
        raise UsageError("not now")

    stop = serve_in_background(tmp_path, {"status": status, "snapshot": refuse})
    try:
        assert control.request(tmp_path, "status") == {"pending_files": 3}
        assert calls == [{"op": "status"}]
        with pytest.raises(CloudfsError, match="^not now$"):
            control.request(tmp_path, "snapshot", wait=True)
        with pytest.raises(CloudfsError, match="unknown operation 'nope'"):
            control.request(tmp_path, "nope")
        mode = os.stat(control.socket_path(tmp_path)).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    finally:
        stop()
    assert not control.socket_path(tmp_path).exists()
    with pytest.raises(control.DaemonUnreachable):
        control.request(tmp_path, "status")


def test_status_reads_like_a_report():
    now = 1_800_000_000 * 10**9
    text = format_status({
        "source": "/data", "mountpoint": "/data", "repository": "s3://b/p",
        "pending_files": 4, "pending_bytes": 3 << 20, "oldest_change_ns": now - 120 * 10**9,
        "spool_bytes": 0, "spool_limit": 1 << 30, "next_snapshot_ns": now + 180 * 10**9,
        "upload": {"last_snapshot": "snapshots/x", "last_snapshot_time_ns": now - 600 * 10**9,
                   "uploading": False, "bytes_stored": 5 << 20, "upload_rate": 100 << 20,
                   "store_ok": False, "store_error": "cannot reach it", "store_error_since_ns": now - 60 * 10**9},
    }, now)
    assert "4 files, 3.0 MiB, oldest change 2 min ago (RPO)" in text
    assert "unreachable since 60 s ago: cannot reach it" in text
    assert "next snapshot  in 3 min" in text and "snapshots/x" in text


def test_a_state_directory_with_a_long_path_still_has_a_working_socket(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(control.socket_path(deep))) > 108

    async def status(request):
        return {"deep": True}

    stop = serve_in_background(deep, {"status": status})
    try:
        assert control.request(deep, "status") == {"deep": True}
    finally:
        stop()
