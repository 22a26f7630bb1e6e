"""Per-request bookkeeping: a request id on every response, and for each callback
one log line and two metric updates.

The callback route only leaves its append result in ``g.append_result``; everything
else is derived here from the response status, so the route stays small.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, has_request_context, request

from webhook.core.logs import log_callback, log_flow_exchange, request_id_from
from webhook.http.metrics import (
    REJECT_REASONS,
    flow_action_label,
    observe_callback,
    observe_flow_exchange,
)
from webhook.ingest.append import AppendResult

CALLBACK_ENDPOINT = "callbacks.receive_callback"
REQUEST_ID_HEADER = "X-Request-Id"
NO_TRIGGER = "none"


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)


def _start() -> None:
    g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    g.request_started = time.perf_counter()


def current_request_id() -> str | None:
    """The id of the request being served, if any."""
    return g.get("request_id") if has_request_context() else None


def _finish(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    if request.endpoint != CALLBACK_ENDPOINT:
        return response
    seconds = time.perf_counter() - g.get("request_started", time.perf_counter())
    status = response.status_code
    result: AppendResult | None = g.pop("append_result", None)
    error: str | None = None
    if status == 200 and result is not None:
        trigger, outcome, reason = result.trigger, result.outcome, ""
    else:
        trigger = NO_TRIGGER
        reason = REJECT_REASONS.get(status, f"http_{status}")
        outcome = "rejected" if status in REJECT_REASONS else "error"
        # Our own error code (e.g. signature_mismatch), never the message text.
        payload = response.get_json(silent=True) if response.is_json else None
        code = payload.get("error") if isinstance(payload, dict) else None
        error = code if isinstance(code, str) else None
    observe_callback(trigger, outcome, reason, seconds)
    log_callback(
        request_id=request_id,
        trigger=trigger,
        outcome=outcome,
        status=result.status if result else None,
        event_id=result.event_id if result else None,
        http_status=status,
        duration_ms=seconds * 1000,
        error=error,
        cause=g.pop("storage_cause", None),
    )
    return response


def record_flow_exchange(
    action: object,
    http_status: int,
    seconds: float,
    screen: str | None = None,
    error: str | None = None,
) -> None:
    """Metrics and one log line for a Flows data endpoint request (call once per request)."""
    observe_flow_exchange(action, http_status, seconds)
    log_flow_exchange(
        request_id=current_request_id(),
        action=flow_action_label(action),
        http_status=http_status,
        duration_ms=seconds * 1000,
        screen=screen,
        error=error,
    )
