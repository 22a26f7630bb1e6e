"""Reading a request body within a size limit and a time limit.

A client that announces a body and then sends it a byte at a time would hold a worker
thread for as long as it likes: gunicorn only times out connections that have sent
nothing yet. So the body is read here, in pieces, each wait bounded:

- the whole body must arrive within ``timeout`` seconds; and
- after a short ``grace``, it must keep arriving at ``min_rate`` bytes per second on
  average (the rule of Apache's mod_reqtimeout): a body trickled a byte a second
  frees its thread after about ``grace`` seconds, not ``timeout``.

A body over ``limit`` bytes is refused whether it has a Content-Length or is chunked.
Under gunicorn each wait is a socket timeout (``gunicorn.socket``); elsewhere (the
test client, `flask run`) the body is simply read.
"""

from __future__ import annotations

import socket
import time
from typing import Any

CHUNK = 64 * 1024


class BodyTooLarge(Exception):
    """The body is larger than the limit."""


class BodyTimeout(Exception):
    """The body did not arrive in time (too slowly)."""


def read_body(
    environ: dict[str, Any], limit: int, timeout: float, min_rate: float, grace: float
) -> bytes:
    """The request body; BodyTooLarge past ``limit``, BodyTimeout when it comes too slowly."""
    length = environ.get("CONTENT_LENGTH")
    declared = int(length) if length and length.isdigit() else None
    if declared is not None and declared > limit:
        raise BodyTooLarge
    stream = environ["wsgi.input"]
    sock: socket.socket | None = environ.get("gunicorn.socket")
    previous = sock.gettimeout() if sock is not None else None
    started = time.monotonic()
    parts: list[bytes] = []
    received = 0
    wanted = declared if declared is not None else limit + 1
    try:
        while received < wanted:
            left = _remaining(started, received, timeout, min_rate, grace)
            late = left <= MIN_WAIT  # past its time: only what has arrived already counts
            if sock is not None:
                sock.settimeout(left)
            try:
                chunk = stream.read(min(CHUNK, wanted - received))
            except TimeoutError:
                raise BodyTimeout from None
            except OSError as err:  # gunicorn wraps some socket errors
                if "timed out" in str(err):
                    raise BodyTimeout from None
                raise
            if not chunk:
                break
            parts.append(chunk)
            received += len(chunk)
            if received > limit:
                raise BodyTooLarge
            if late and received < wanted and sock is not None:
                raise BodyTimeout  # still incomplete after its time
    finally:
        if sock is not None:
            sock.settimeout(previous)
    return b"".join(parts)


# The least a read may wait: bytes already in the socket's buffer are always taken, so a
# thread that was kept off the CPU for a while does not refuse a body that had arrived.
MIN_WAIT = 0.05


def _remaining(started: float, received: int, timeout: float, min_rate: float,
               grace: float) -> float:  # fmt: skip
    """Seconds the next read may wait: the earlier of the total deadline and the rate's."""
    by_rate = started + grace + received / min_rate if min_rate > 0 else started + timeout
    return max(min(started + timeout, by_rate) - time.monotonic(), MIN_WAIT)


def request_body() -> bytes:
    """The current request's body under the service's limits.

    Past MAX_CONTENT_LENGTH: 413 (RequestEntityTooLarge), chunked bodies included. Too
    slow: 408 (RequestTimeout), and the connection is closed.
    """
    from flask import request
    from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

    from webhook.core.state import state

    http = state().settings.http
    try:
        return read_body(request.environ, http.max_content_length,
                         http.body_read_timeout_seconds, http.body_min_bytes_per_second,
                         GRACE_SECONDS)  # fmt: skip
    except BodyTooLarge:
        raise RequestEntityTooLarge from None
    except BodyTimeout:
        raise RequestTimeout from None


# Before the minimum rate applies: a body's first bytes may take a round trip or two.
GRACE_SECONDS = 0.5
