"""HTTP endpoints: Sinch callbacks and health checks."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, g, jsonify, request

from webhook.core.state import state
from webhook.db.deadline import clear_deadline, set_deadline
from webhook.db.errors import UNAVAILABLE_ERRORS, StorageUnavailable
from webhook.db.migrate import current_revision
from webhook.http.body import request_body
from webhook.http.errors import error_response
from webhook.ingest.append import append
from webhook.ingest.body import InvalidBody, load_body
from webhook.ingest.signing import SignatureError, signature_headers, verify

bp = Blueprint("callbacks", __name__)


@bp.before_app_request
def _bound_database_waits() -> None:
    # Every request's database work ends in time to answer 503 before gunicorn's timeout.
    g.database_deadline = set_deadline(state().settings.database.timeout_seconds)


@bp.teardown_app_request
def _end_database_bound(_exc: BaseException | None) -> None:
    clear_deadline(g.pop("database_deadline", None))


@bp.post("/sinch/callbacks")
def receive_callback() -> Response:
    """Verify and store one Sinch callback; 200 only after the commit.

    The event is stored ``pending``; the projector folds it into the typed tables.
    """
    st = state()
    body = request_body()  # 413 past MAX_CONTENT_LENGTH, 408 when it comes too slowly
    signing = st.settings.callbacks
    if signing.secrets:
        try:
            verify(
                body,
                request.headers,
                [s.reveal() for s in signing.secrets],
                max_age_seconds=signing.signature_max_age_seconds,
            )
        except SignatureError as err:
            return error_response(401, f"signature_{err.reason}", err.message)
    try:
        payload = load_body(body)
    except InvalidBody as err:
        return error_response(400, "invalid_body", str(err))
    try:
        result = append(st.engine, body, payload, signature_headers(request.headers))
    except StorageUnavailable as err:
        g.storage_cause = err.cause  # for the log line (webhook/http/observe.py)
        if err.cause == "schema":
            return error_response(
                503,
                "schema_out_of_date",
                "the database has no schema yet; run `flowhooks db upgrade`",
                Retry_After=str(st.settings.http.retry_after_seconds),
            )
        return error_response(
            503,
            "storage_unavailable",
            "the callback could not be stored; retry later",
            Retry_After=str(st.settings.http.retry_after_seconds),
        )
    g.append_result = result  # for the log line and metrics (webhook/observe.py)
    answer = {"event_id": result.event_id, "outcome": result.outcome,
              "status": result.status, "trigger": result.trigger}  # fmt: skip
    return Response(orjson.dumps(answer), mimetype="application/json")


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """The database answers and its schema is at the latest migration.

    A projector that is behind does not make the service unready: callbacks are still
    stored. Alert on the lag metrics instead (README "Operations").
    """
    st = state()
    try:
        revision = current_revision(st.engine)  # None: no schema (or no SQLite file)
    except UNAVAILABLE_ERRORS:
        return error_response(
            503,
            "database_unavailable",
            "database is not reachable",
            Retry_After=str(st.settings.http.retry_after_seconds),
        )
    if revision != st.head_revision:
        at = f"is at {revision}" if revision else "has no schema"
        return error_response(
            503,
            "schema_out_of_date",
            f"the database {at}, expected {st.head_revision}; run `flowhooks db upgrade`",
        )
    return jsonify(status="ready", revision=revision)
