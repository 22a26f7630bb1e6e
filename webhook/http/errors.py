"""Client errors as small JSON bodies, from one place. Never a secret, body or trace."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, **headers: str) -> Response:
    response = jsonify(error=code, message=message)
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        code = (err.name or "error").lower().replace(" ", "_")
        status = err.code or 500
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            return error_response(413, "body_too_large", f"body is larger than {limit} bytes",
                                  Connection="close")  # fmt: skip
        if status == 408:  # the rest of the body is not read: the connection cannot be reused
            return error_response(408, "body_timeout", "the body did not arrive in time",
                                  Connection="close")  # fmt: skip
        return error_response(status, code, err.description or err.name or "error")

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        # The traceback goes to the log, never to the client.
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")
