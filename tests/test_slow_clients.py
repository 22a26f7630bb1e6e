"""Slow clients cannot stall the service: 40 sockets that trickle their bodies a byte a
second, and signed callbacks sent alongside them are still answered within 2 s
(webhook/http/body.py). Loopback only; every wait bounded."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from tests.helpers import SECRET, fixture_bytes, sign
from tests.service import Service
from webhook.db import migrate
from webhook.db.engine import make_engine

pytestmark = pytest.mark.slow
SLOW_SOCKETS = 40


@pytest.fixture
def fresh(backend: str, new_database_url: Callable[[str], str]) -> Iterator[tuple[str, Engine]]:
    url = new_database_url(backend)
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield url, engine
    engine.dispose()


def trickle(port: int, stop: threading.Event, answers: list[bytes]) -> None:
    """Announce a 100,000-byte body, then send it one byte a second."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = b"POST /sinch/callbacks HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"
        sock.sendall(head)
        sock.settimeout(1.0)
        while not stop.is_set():
            try:
                sock.sendall(b" ")
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return  # closed by the server: what we want
            if data:
                answers.append(data)
                return
            return


def test_slow_bodies_do_not_keep_signed_callbacks_waiting(
    fresh: tuple[str, Engine], tmp_path: Path
) -> None:
    url, _engine = fresh
    with Service(url, tmp_path / "gunicorn.log", secret=SECRET) as service:
        stop = threading.Event()
        answers: list[bytes] = []
        slow = [threading.Thread(target=trickle, args=(service.port, stop, answers), daemon=True)
                for _ in range(SLOW_SOCKETS)]  # fmt: skip
        for t in slow:
            t.start()
        time.sleep(0.3)  # every slow socket has announced its body and holds a thread
        took = []
        try:
            with httpx.Client(base_url=service.url, timeout=10) as client:
                for i in range(10):
                    body = fixture_bytes("message_delivery__delivered").replace(
                        b'"message_id"', f'"x{i}":1,"message_id"'.encode(), 1)  # fmt: skip
                    started = time.monotonic()
                    response = client.post("/sinch/callbacks", content=body, headers=sign(body))
                    took.append(time.monotonic() - started)
                    assert response.status_code == 200, response.text
        finally:
            stop.set()
            for t in slow:
                t.join(timeout=15)
        assert max(took) < 2.0, took
        # The slow ones were told why, or cut off: none was answered 200.
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:1]
        assert not any(t.is_alive() for t in slow)


def test_a_chunked_body_over_the_limit_is_refused_with_413(
    fresh: tuple[str, Engine], tmp_path: Path
) -> None:
    url, _engine = fresh
    env = {"MAX_CONTENT_LENGTH": "1000"}
    with Service(url, tmp_path / "gunicorn.log", secret=SECRET, env=env) as service:
        body = b"{" + b" " * 2000 + b"}"

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 300):
                yield body[start : start + 300]

        with httpx.Client(base_url=service.url, timeout=10) as client:
            response = client.post("/sinch/callbacks", content=chunks(), headers=sign(body))
        assert response.status_code == 413
        assert response.json()["error"] == "body_too_large"
