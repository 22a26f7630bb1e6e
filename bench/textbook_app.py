"""The textbook handler: verify the HMAC, add one ORM row, commit, answer 200.

What a callback receiver written straight from the Flask and SQLAlchemy tutorials
does, as a reference for the service in the ingestion benchmark (bench/run.py): the
same signature check (webhook.ingest.signing.verify), the raw event stored in the same
callback_events table (same columns as the endpoint writes, same indexes), one
Session per request, one INSERT and one COMMIT per callback, a duplicate body caught
as an IntegrityError. No group commit, no hooks, no metrics, no projection.

Reads DATABASE_URL and SINCH_WEBHOOK_SECRETS as the service does. The pool holds one
connection per gunicorn thread (GUNICORN_THREADS, default 16), so no request opens
its own; that much tuning a tutorial would also mention.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime

from flask import Flask, Response, jsonify, request
from sqlalchemy import create_engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webhook.core.settings import normalize_database_url
from webhook.db.models import CallbackEvent
from webhook.ingest.parsers import detect_trigger
from webhook.ingest.signing import SignatureError, signature_headers, verify

SECRETS = [s for s in os.environ.get("SINCH_WEBHOOK_SECRETS", "").split(",") if s]
URL = normalize_database_url(os.environ["DATABASE_URL"])
if URL.startswith("sqlite"):
    engine = create_engine(URL, connect_args={"timeout": 30, "check_same_thread": False})
else:
    threads = int(os.environ.get("GUNICORN_THREADS", "16"))
    engine = create_engine(URL, pool_size=threads, max_overflow=5)

app = Flask(__name__)


@app.post("/sinch/callbacks")
def receive() -> tuple[Response, int] | Response:
    body = request.get_data()
    try:
        verify(body, request.headers, SECRETS, max_age_seconds=600)
    except SignatureError as err:
        return jsonify(error=f"signature_{err.reason}"), 401
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        return jsonify(error="invalid_body"), 400
    event = CallbackEvent(
        body=body,
        body_sha256=hashlib.sha256(body).hexdigest(),
        headers=signature_headers(request.headers),
        received_at=datetime.now(UTC),
        trigger=detect_trigger(payload),
        status="pending",
    )
    with Session(engine) as session:
        session.add(event)
        try:
            session.flush()  # INSERT ... RETURNING id
            event_id = event.id
            session.commit()
        except IntegrityError:
            session.rollback()
            return jsonify(outcome="duplicate")
    return jsonify(outcome="stored", event_id=event_id)


@app.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")
