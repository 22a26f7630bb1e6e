"""A real HTTP endpoint on 127.0.0.1 that records what it receives and answers from a script."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    body: bytes
    headers: dict[str, str]  # names lower-cased

    def get(self, name: str) -> str | None:  # what signing.verify reads headers with
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (to provoke a timeout)


class Receiver:
    """Answers each body with the next scripted Answer for it, then 200 for good."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: dict[str, list[Answer]] = defaultdict(list)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.received.append(
                        Received(body, {k.lower(): v for k, v in self.headers.items()})
                    )
                    queue = receiver.script[hashlib.sha256(body).hexdigest()]
                    answer = queue.pop(0) if queue else Answer()
                time.sleep(answer.delay)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass  # the client gave up waiting (timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                return None

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/callbacks"

    def answer(self, body: bytes, *answers: Answer) -> None:
        """Answer the next attempts at ``body`` with these, in order."""
        self.script[hashlib.sha256(body).hexdigest()].extend(answers)

    def bodies(self) -> list[bytes]:
        return [r.body for r in self.received]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def running_receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver
