"""The ceiling without Flask: a plain WSGI callable that reads the body, parses the JSON
(orjson) and answers 200, under the same gunicorn settings.

Against bench/ceiling_app.py (the same with Flask) it shows what Flask itself costs
per request, and what gunicorn alone does (bench/run.py's profile phase).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
HEALTH = b'{"status":"ok"}'


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/healthz":
        body = HEALTH
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        payload = orjson.loads(environ["wsgi.input"].read(length))
        body = orjson.dumps({"outcome": "ok", "keys": len(payload)})
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])  # fmt: skip
    return [body]
