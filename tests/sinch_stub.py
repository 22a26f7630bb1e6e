"""A real HTTP server on 127.0.0.1 standing in for Sinch's auth and messages endpoints.

One server answers both ``POST /oauth2/token`` (client credentials, HTTP Basic) and
``POST /v1/projects/<project>/messages:send`` (Bearer token). It records every
request, and answers from a script of replies when one is queued, else like Sinch.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

PROJECT = "7f3c2a9e-5b1d-4c8e-9a61-2d4e8b0f13c7"
APP_ID = "01K94JHH80F86PQMSGMGZ6MS3E"
KEY_ID = "stub-key-id"
KEY_SECRET = "stub-key-secret"


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode())


class _QuietHandler(WSGIRequestHandler):
    """The stand-in's access log would mix into the CLI output the tests compare."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def sinch_error(code: int, status: str, message: str, details: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        err["details"] = details
    return {"error": err}


class SinchStub:
    def __init__(self, expires_in: int = 3600) -> None:
        self.expires_in = expires_in
        self.seen: list[Seen] = []
        self.token_script: deque[Reply] = deque()
        self.send_script: deque[Reply] = deque()
        self.valid_tokens: set[str] = set()
        # Replies for sends to particular WhatsApp numbers (e.g. a 400 for one CSV row).
        self.replies_for_identity: dict[str, Reply] = {}
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        self.url = ""

    # --- what tests look at
    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth2/token"

    def token_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/oauth2/token"]

    def send_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith("/messages:send")]

    def revoke_tokens(self) -> None:
        with self._lock:
            self.valid_tokens.clear()

    # --- the server
    def __call__(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        body = request.get_data()
        seen = Seen(request.method, request.path, {k.lower(): v for k, v in request.headers}, body)
        with self._lock:
            self.seen.append(seen)
            response = self._answer(seen)
        return response(environ, start_response)

    def _answer(self, seen: Seen) -> Response:
        if seen.method != "POST":
            return _json(Reply(405, sinch_error(405, "METHOD_NOT_ALLOWED", "POST only")))
        if seen.path == "/oauth2/token":
            return _json(self.token_script.popleft() if self.token_script else self._token(seen))
        if seen.path == f"/v1/projects/{PROJECT}/messages:send":
            return _json(self.send_script.popleft() if self.send_script else self._send(seen))
        return _json(Reply(404, sinch_error(404, "NOT_FOUND", f"no route {seen.path}")))

    def _token(self, seen: Seen) -> Reply:
        expected = "Basic " + base64.b64encode(f"{KEY_ID}:{KEY_SECRET}".encode()).decode()
        if seen.headers.get("authorization") != expected:
            return Reply(401, {"error": "invalid_client", "error_description": "Bad credentials"})
        if seen.form().get("grant_type") != ["client_credentials"]:
            return Reply(400, {"error": "unsupported_grant_type"})
        token = f"tok-{next(self._tokens)}"
        self.valid_tokens.add(token)
        return Reply(200, {"access_token": token, "expires_in": self.expires_in,
                           "scope": "", "token_type": "bearer"})  # fmt: skip

    def _send(self, seen: Seen) -> Reply:
        auth = seen.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.valid_tokens:
            return Reply(401, sinch_error(401, "UNAUTHENTICATED", "Invalid access token"))
        if seen.headers.get("content-type") != "application/json":
            return Reply(415, sinch_error(415, "UNSUPPORTED_MEDIA_TYPE", "JSON only"))
        sent = json.loads(seen.body)
        for ci in sent["recipient"].get("identified_by", {}).get("channel_identities", []):
            if ci["identity"] in self.replies_for_identity:
                return self.replies_for_identity[ci["identity"]]
        n = next(self._ids)
        return Reply(200, {"message_id": f"01STUBMSG{n:017d}",
                           "accepted_time": "2026-03-10T09:00:00.412Z"})  # fmt: skip


def _json(reply: Reply) -> Response:
    if isinstance(reply.body, str | bytes):
        body = reply.body
        mimetype = "text/plain"
    else:
        body = json.dumps(reply.body) if reply.body is not None else ""
        mimetype = "application/json"
    return Response(body, status=reply.status, headers=reply.headers, mimetype=mimetype)


@contextmanager
def running_stub(expires_in: int = 3600) -> Iterator[SinchStub]:
    """Serve a SinchStub on 127.0.0.1 (OS-chosen port) for the duration of the block."""
    stub = SinchStub(expires_in)
    server = make_server("127.0.0.1", 0, stub, threaded=True, request_handler=_QuietHandler)
    stub.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def dropping_server() -> Iterator[tuple[str, list[int]]]:
    """A TCP server on 127.0.0.1 that reads a request and closes without answering.

    Yields its URL and a list that grows by one per connection accepted.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    accepted: list[int] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.settimeout(2)
            with suppress(OSError):
                conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def closed_port_url() -> str:
    """A loopback URL nobody listens on (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
