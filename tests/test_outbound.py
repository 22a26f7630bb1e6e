"""webhook.core.outbound (retries, Retry-After, pacing, bounded concurrency, one-line
errors) against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.sinch_stub import closed_port_url
from webhook.core.outbound import (
    GaveUp,
    Pacer,
    RetryPolicy,
    bounded_map,
    first_line,
    retry_after_seconds,
)

TIMEOUT = 2.0  # seconds; every request in this module is bounded by it


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Server:
    """Answers each request with the next scripted Answer (then 200), and records when
    requests arrived and how many were in flight at once."""

    def __init__(self) -> None:
        self.script: deque[Answer] = deque()
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with server.lock:
                    server.arrivals.append(time.monotonic())
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    answer = server.script.popleft() if server.script else Answer()
                try:
                    time.sleep(float(self.headers.get("X-Delay", answer.delay)))
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass  # the client stopped waiting (the timeout tests)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, format: str, *args: Any) -> None:
                return None

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                return None

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}/in"

    @property
    def requests(self) -> int:
        return len(self.arrivals)


@pytest.fixture
def server() -> Iterator[Server]:
    stub = Server()
    thread = threading.Thread(target=stub.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield stub
    stub.httpd.shutdown()
    stub.httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def sleeps() -> list[float]:
    return []


def policy(sleeps: list[float], **overrides: Any) -> RetryPolicy:
    base: dict[str, Any] = {"attempts": 4, "backoff": 0.1, "max_backoff": 1.0}
    return RetryPolicy(**{**base, **overrides}, sleep=sleeps.append)


def post(http: httpx.Client, server: Server) -> Any:
    return lambda: http.post(server.url, content=b"{}")


# ---------------------------------------------------------------- retries


def test_503_is_retried_with_backoff_then_succeeds(
    server: Server, http: httpx.Client, sleeps: list[float]
) -> None:
    server.script.extend([Answer(503), Answer(503)])
    response = policy(sleeps).send(post(http, server))
    assert response.status_code == 200
    assert server.requests == 3
    assert sleeps == [0.1, 0.2]  # exponential, no jitter asked for


def test_backoff_is_capped_and_jittered(
    server: Server, http: httpx.Client, sleeps: list[float]
) -> None:
    server.script.extend([Answer(500)] * 5)
    with pytest.raises(GaveUp):
        policy(sleeps, attempts=5, backoff=0.4, max_backoff=1.0, jitter=0.05).send(
            post(http, server)
        )
    assert len(sleeps) == 4
    assert 0.4 <= sleeps[0] <= 0.45 and 0.8 <= sleeps[1] <= 0.85
    assert sleeps[2:] == [1.0, 1.0]


def test_retries_run_out(server: Server, http: httpx.Client, sleeps: list[float]) -> None:
    server.script.extend([Answer(500), Answer(502), Answer(503), Answer(200)])
    with pytest.raises(GaveUp) as info:
        policy(sleeps, attempts=3).send(post(http, server))
    assert info.value.attempts == 3
    assert info.value.status == 503 and info.value.error is None
    assert not info.value.too_long
    assert server.requests == 3 and len(sleeps) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_4xx_other_than_429_is_not_retried(
    server: Server, http: httpx.Client, sleeps: list[float], status: int
) -> None:
    server.script.append(Answer(status))
    response = policy(sleeps).send(post(http, server))
    assert response.status_code == status
    assert server.requests == 1 and sleeps == []


def test_retry_after_seconds_is_honoured(
    server: Server, http: httpx.Client, sleeps: list[float]
) -> None:
    server.script.extend([Answer(429, {"Retry-After": "3"}), Answer(503, {"Retry-After": "0"})])
    response = policy(sleeps).send(post(http, server))
    assert response.status_code == 200
    assert sleeps == [3.0, 0.0]  # what the server asked, not the backoff
    assert server.requests == 3


def test_retry_after_is_really_waited_for(server: Server, http: httpx.Client) -> None:
    server.script.append(Answer(429, {"Retry-After": "1"}))
    started = time.monotonic()
    response = RetryPolicy(attempts=2, backoff=0).send(post(http, server))
    assert response.status_code == 200
    assert server.arrivals[1] - server.arrivals[0] >= 0.95
    assert time.monotonic() - started < 1 + TIMEOUT


def test_retry_after_http_date_is_honoured(
    server: Server, http: httpx.Client, sleeps: list[float]
) -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    server.script.extend([Answer(503, {"Retry-After": soon}), Answer(429, {"Retry-After": past})])
    response = policy(sleeps, max_retry_after=60).send(post(http, server))
    assert response.status_code == 200
    assert len(sleeps) == 2
    assert 25 < sleeps[0] <= 30  # the date's own value, less the time the test took
    assert sleeps[1] == 0.0  # a date already past: at once


def test_unusable_retry_after_falls_back_to_backoff(
    server: Server, http: httpx.Client, sleeps: list[float]
) -> None:
    server.script.append(Answer(503, {"Retry-After": "soon"}))
    assert policy(sleeps).send(post(http, server)).status_code == 200
    assert sleeps == [0.1]


def test_a_long_retry_after_is_shortened_to_the_limit(
    server: Server, http: httpx.Client, sleeps: list[float]
) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    server.script.extend(
        [Answer(429, {"Retry-After": "3600"}), Answer(503, {"Retry-After": later})]
    )
    p = policy(sleeps, max_retry_after=5.0, long_retry_after="shorten")
    assert p.send(post(http, server)).status_code == 200
    assert sleeps == [5.0, 5.0]


def test_a_long_retry_after_can_mean_give_up_at_once(
    server: Server, http: httpx.Client, sleeps: list[float]
) -> None:
    server.script.append(Answer(429, {"Retry-After": "3600"}))
    with pytest.raises(GaveUp) as info:
        policy(sleeps, max_retry_after=60, long_retry_after="give up").send(post(http, server))
    assert info.value.too_long and info.value.retry_after == 3600.0
    assert info.value.attempts == 1 and info.value.status == 429
    assert server.requests == 1 and sleeps == []


def test_connection_refused_is_retried(http: httpx.Client, sleeps: list[float]) -> None:
    url = closed_port_url()
    calls: list[int] = []

    def request() -> httpx.Response:
        calls.append(1)
        return http.post(url, content=b"{}")

    for idempotent in (True, False):  # nothing was sent: safe to retry either way
        calls.clear()
        with pytest.raises(GaveUp) as info:
            policy(sleeps, attempts=3).send(request, idempotent=idempotent)
        assert isinstance(info.value.error, httpx.ConnectError)
        assert info.value.status is None and info.value.attempts == 3 == len(calls)


def test_read_timeout_is_retried_only_when_idempotent(server: Server, sleeps: list[float]) -> None:
    with httpx.Client(timeout=0.2) as impatient:
        server.script.extend([Answer(200, delay=0.6), Answer(200)])
        response = policy(sleeps).send(post(impatient, server), idempotent=True)
        assert response.status_code == 200 and server.requests == 2

        server.script.append(Answer(200, delay=0.6))
        with pytest.raises(httpx.ReadTimeout):  # it may have been done: never twice
            policy(sleeps).send(post(impatient, server), idempotent=False)
        assert server.requests == 3


def test_retry_after_parsing() -> None:
    now = datetime(2026, 3, 10, 9, 0, 0, tzinfo=UTC)
    assert retry_after_seconds(" 7 ", now) == 7.0
    assert retry_after_seconds("Tue, 10 Mar 2026 09:00:12 GMT", now) == 12.0
    assert retry_after_seconds("Tue, 10 Mar 2026 08:00:00 GMT", now) == 0.0
    assert retry_after_seconds("-3", now) is None
    assert retry_after_seconds("1.5", now) is None  # delta-seconds are whole seconds
    assert retry_after_seconds("", now) is None
    assert retry_after_seconds(None, now) is None


# ---------------------------------------------------------------- pacing and fan-out


def test_pacer_spaces_calls_across_threads(server: Server, http: httpx.Client) -> None:
    pacer = Pacer(20)  # one start every 50 ms
    released: list[float] = []
    lock = threading.Lock()

    def send(_: int) -> int:
        pacer.wait()
        with lock:
            released.append(time.monotonic())
        return http.post(server.url, content=b"{}").status_code

    began = time.monotonic()
    assert bounded_map(send, range(8), workers=4) == [200] * 8
    # The k-th start is never before its slot, however the threads were scheduled.
    late = [t - began - k * 0.05 for k, t in enumerate(sorted(released))]
    assert min(late) >= 0, late
    assert server.arrivals[-1] - began >= 7 * 0.05


def test_pacer_does_not_save_idle_time_for_a_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        pacer.wait()
    assert slept == [0.25, 0.25]
    now[0] += 10
    pacer.wait()
    pacer.wait()
    assert slept == [0.25, 0.25, 0.25]


def test_pacer_without_a_rate_never_waits() -> None:
    pacer = Pacer(None, sleep=lambda s: pytest.fail(f"slept {s}"))
    for _ in range(100):
        pacer.wait()
    with pytest.raises(ValueError):
        Pacer(0)


def test_bounded_map_bounds_concurrency_and_keeps_order(server: Server, http: httpx.Client) -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def send(i: int) -> tuple[int, int]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            # Earlier items are answered more slowly, so they finish out of order.
            delay = {"X-Delay": str(0.02 * (12 - i))}
            return i, http.post(server.url, content=str(i).encode(), headers=delay).status_code
        finally:
            with lock:
                running -= 1

    seen: list[int] = []

    def note(result: tuple[int, int]) -> bool:
        seen.append(result[0])
        return False  # never stop

    results = bounded_map(send, range(12), workers=3, on_result=note)
    assert results == [(i, 200) for i in range(12)]
    assert most == 3 and server.max_in_flight <= 3
    assert sorted(seen) == list(range(12)) and seen != list(range(12))


def test_bounded_map_reads_items_lazily_and_stops_when_asked() -> None:
    taken: list[int] = []

    def items() -> Iterator[int]:
        for i in range(1000):
            taken.append(i)
            yield i

    def slow_square(i: int) -> int:
        time.sleep(0.01)
        return i * i

    results = bounded_map(slow_square, items(), workers=2, on_result=lambda r: r >= 9)
    assert results == [i * i for i in range(len(results))]  # in order, none missing
    assert len(results) >= 4
    assert len(taken) <= len(results) + 2 * 2 + 1  # read at most 2 * workers ahead


def test_bounded_map_raises_what_fn_raised_and_starts_no_more() -> None:
    started: list[int] = []

    def fn(i: int) -> int:
        started.append(i)
        if i == 3:
            raise RuntimeError("boom")
        time.sleep(0.01)
        return i

    with pytest.raises(RuntimeError, match="boom"):
        bounded_map(fn, range(100), workers=2)
    assert len(started) < 100


# ---------------------------------------------------------------- one-line errors


class Wrapped(Exception):
    """Like SQLAlchemy's DBAPIError: the driver's error in ``orig``."""

    def __init__(self, orig: BaseException) -> None:
        super().__init__(f"({type(orig).__name__}) {orig}\n[SQL: SELECT 1]")
        self.orig = orig


@pytest.mark.parametrize(
    ("err", "line"),
    [
        (ValueError("bad value\nTraceback-ish detail\nmore"), "bad value"),
        (ValueError("\n  leading blank lines\nsecond"), "leading blank lines"),
        (RuntimeError(""), "RuntimeError"),
        (KeyError(), "KeyError"),
        (Wrapped(ConnectionError("server closed the connection\nDETAIL: x")),
         "server closed the connection"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "[Errno 111] Connection refused"),
    ],
)  # fmt: skip
def test_first_line_is_one_line(err: BaseException, line: str) -> None:
    assert first_line(err) == line
    assert "\n" not in first_line(err)
