"""A TCP proxy in front of the S3 server that injects faults, one per new connection.

Faults, taken in order from `plan` as connections arrive (then plain forwarding):
  "reset"     read the request, then reset the connection (RST)
  "503"       read the request head, answer HTTP 503 SlowDown, close
  "500"       read the request head, answer HTTP 500 InternalError, close
  "stall"     accept and never answer (the client's read timeout fires)
  ("cut", n)  forward, but reset the connection after n bytes from the client
"""

from __future__ import annotations

import socket
import struct
import threading

from cloudfs.locals3 import free_port

ERROR_BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
              b"<Message>injected</Message></Error>")


class FaultyProxy:
    def __init__(self, target_port: int, plan=()):
        self.target_port = target_port
        self.plan = list(plan)
        self.port = free_port()
        self.connections = 0
        self.faults_injected = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_faults(self, *faults) -> None:
        with self._lock:
            self.plan.extend(faults)

    def drop_connections(self) -> None:
        """Break every open connection, so the next requests need new ones (and meet the
        plan). Shut down before closing: a close alone neither wakes the thread blocked
        reading the socket nor tells the peer while that read holds it, and the client
        would wait for its read timeout (a black hole, which "stall" makes on purpose)."""
        for sock in list(self._sockets):
            _shut_down(sock)
            _reset(sock)
        self._sockets.clear()

    def close(self) -> None:
        """Stop listening and break every connection, so clients fail at once
        instead of waiting for their read timeout."""
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for sock in list(self._sockets):
            _shut_down(sock)
            _close_quietly(sock)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                fault = self.plan.pop(0) if self.plan else None
                if fault is not None:
                    self.faults_injected += 1
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client, fault), daemon=True).start()

    def _serve(self, client: socket.socket, fault) -> None:
        try:
            if fault == "reset":
                client.recv(65536)
                _reset(client)
            elif fault in ("503", "500"):
                _read_head(client)
                code = b"SlowDown" if fault == "503" else b"InternalError"
                body = ERROR_BODY.replace(b"{code}", code)
                client.sendall(b"HTTP/1.1 " + fault.encode() + b" Error\r\nContent-Type: application/xml\r\n"
                               b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                               + b"\r\n\r\n" + body)
                _close_quietly(client)
            elif fault == "stall":
                self._stopping.wait()
                _close_quietly(client)
            else:
                cut_after = fault[1] if isinstance(fault, tuple) and fault[0] == "cut" else None
                self._forward(client, cut_after)
        except OSError:
            _close_quietly(client)

    def _forward(self, client: socket.socket, cut_after: int | None) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        self._sockets.append(upstream)
        done = threading.Event()

        def pump(source, sink, limit):
            sent = 0
            try:
                while not done.is_set():
                    data = source.recv(65536)
                    if not data:
                        break
                    if limit is not None and sent + len(data) >= limit:
                        sink.sendall(data[: max(0, limit - sent)])
                        _reset(client)
                        break
                    sink.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            finally:
                done.set()
                _close_quietly(sink)
                _close_quietly(source)

        threading.Thread(target=pump, args=(upstream, client, None), daemon=True).start()
        pump(client, upstream, cut_after)


def _read_head(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            return
        data += part


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    _close_quietly(sock)


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
