"""The ceiling: a bare Flask app that reads the JSON body and answers 200.

No signature check, no database: the fastest any Flask service on this machine can
answer a callback, under the same gunicorn settings as the real service.
"""

from __future__ import annotations

import orjson
from flask import Flask, Response, request

app = Flask(__name__)


@app.post("/sinch/callbacks")
def receive() -> Response:
    payload = orjson.loads(request.get_data(cache=False))
    return Response(orjson.dumps({"outcome": "ok", "keys": len(payload)}), 200,
                    mimetype="application/json")  # fmt: skip


@app.get("/healthz")
def healthz() -> Response:
    return Response(b'{"status":"ok"}', 200, mimetype="application/json")
