"""A loopback TCP proxy that can fake a database outage (tests only).

The service connects to the proxy instead of PostgreSQL, so an outage never touches
the shared server. Modes:

- ``up``: forward both ways.
- ``refused``: existing connections are reset and new ones refused (the port is
  closed), as when the server is down.
- ``blackhole``: existing connections stay open but nothing passes, and new ones
  are accepted by the kernel and then never answered, as in a network partition.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time

UP, REFUSED, BLACKHOLE = "up", "refused", "blackhole"


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = UP
        self.port = 0
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ control

    def start(self) -> TcpProxy:
        self._listen()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._close_listener()
        self._reset_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def refuse(self) -> None:
        """Reset every open connection and close the port."""
        self.mode = REFUSED
        self._close_listener()
        self._reset_all()

    def blackhole(self) -> None:
        """Stop passing bytes; keep connections open; leave new ones unanswered."""
        self.mode = BLACKHOLE

    def restore(self) -> None:
        """Forward again (reopening the same port if it was closed)."""
        if self._listener is None:
            self._listen()
        self.mode = UP

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    # ------------------------------------------------------------ internals

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(0.05)
        self.port = sock.getsockname()[1]
        self._listener = sock

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            sock.close()

    def _reset_all(self) -> None:
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            listener = self._listener
            if listener is None or self.mode != UP:
                # Refused: the port is closed. Blackhole: connections wait in the
                # backlog, so the client's connect succeeds and then hears nothing.
                time.sleep(0.02)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            try:
                server = socket.create_connection(self.target, timeout=3)
            except OSError:
                _reset(client)
                continue
            pair = (client, server)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        sel = selectors.DefaultSelector()
        try:
            self._forward(pair, sel)
        except (OSError, ValueError):
            pass  # a socket was reset under us (an outage began): this pair is done
        finally:
            sel.close()
            with self._lock:
                self._pairs.discard(pair)
            for sock in pair:
                _reset(sock)

    def _forward(
        self, pair: tuple[socket.socket, socket.socket], sel: selectors.BaseSelector
    ) -> None:
        client, server = pair
        for sock in pair:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        while not self._stopped.is_set():
            with self._lock:
                if pair not in self._pairs:
                    return
            if self.mode != UP:
                time.sleep(0.02)  # hold the bytes: nothing passes either way
                continue
            for key, _ in sel.select(timeout=0.05):
                src = key.fileobj
                assert isinstance(src, socket.socket)
                dst = server if src is client else client
                data = src.recv(65536)
                if not data:
                    return
                dst.setblocking(True)
                dst.sendall(data)
                dst.setblocking(False)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
