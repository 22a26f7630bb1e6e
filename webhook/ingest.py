"""Store a callback byte-exact and project it: one transaction, one commit.

Shared by the HTTP endpoint, import and replay, so every path dedupes and projects
the same way. The raw event is written first; a projection that fails (a parser
bug, a value the schema refuses) rolls the transaction back and the raw event is
stored again on its own as ``failed``: nothing authentic is lost. If the database
refuses even the event's envelope fields (say a NUL character in ``app_id`` on
PostgreSQL), the event is stored bare: body, digest, trigger, status and error.
A database that cannot be written raises StorageUnavailable, which the endpoint
answers with 503.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, exc

from webhook.callbacks import (
    UNKNOWN,
    Envelope,
    ParsedCallback,
    ParseError,
    detect_trigger,
    parse_callback,
    parse_envelope,
)
from webhook.models import CallbackEvent
from webhook.projections import apply_records, upsert_insert

PROCESSED, IGNORED, FAILED = "processed", "ignored", "failed"
STORED, DUPLICATE = "stored", "duplicate"

# Errors that mean "the database is not there right now", as opposed to "this row is bad".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.DisconnectionError,
    exc.TimeoutError,
    exc.ResourceClosedError,
)


class StorageUnavailable(Exception):
    """The database could not be written; nothing was stored. Retry later."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    outcome: str  # STORED or DUPLICATE
    event_id: int | None
    trigger: str
    status: str | None  # PROCESSED, IGNORED or FAILED; None for a duplicate
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What parsing decided for one body, before anything is written."""

    trigger: str
    parsed: ParsedCallback | None
    status: str
    error: str | None


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def classify(payload: Mapping[str, Any]) -> Outcome:
    """Parse a callback payload into records, or say why it cannot be."""
    try:
        parsed = parse_callback(payload)
    except ParseError as err:
        return Outcome(detect_trigger(payload), None, FAILED, str(err))
    except Exception as err:  # a parser bug must not lose the event
        return Outcome(detect_trigger(payload), None, FAILED, f"parser error: {_describe(err)}")
    status = IGNORED if parsed.trigger == UNKNOWN else PROCESSED
    return Outcome(parsed.trigger, parsed, status, None)


def _describe(err: BaseException) -> str:
    """A one-line description of an error that never includes SQL parameters."""
    orig = getattr(err, "orig", None) or err
    first_line = (str(orig).strip().splitlines() or [""])[0]
    # PostgreSQL text cannot hold NUL; the error must be storable whatever caused it.
    return f"{type(orig).__name__}: {first_line}"[:500].replace("\x00", "")


_BARE = Envelope(None, None, None, None, None)


def insert_event(
    conn: Connection,
    *,
    body: bytes,
    digest: str,
    headers: Mapping[str, str],
    received_at: datetime,
    payload: Mapping[str, Any],
    outcome: Outcome,
    bare: bool = False,
) -> int | None:
    """Insert the raw event; return its id, or None if this body is already stored.

    ``bare`` leaves out every field read from the payload or the headers, for an
    event whose fields the database refused.
    """
    if bare:
        envelope, stored_headers = _BARE, None
    else:
        envelope = outcome.parsed.envelope if outcome.parsed else parse_envelope(payload)
        stored_headers = dict(headers) or None
    stmt = (
        upsert_insert(conn, CallbackEvent)
        .values(
            body=body,
            body_sha256=digest,
            headers=stored_headers,
            received_at=received_at,
            trigger=outcome.trigger,
            app_id=envelope.app_id,
            project_id=envelope.project_id,
            event_time=envelope.event_time,
            correlation_id=envelope.correlation_id,
            status=outcome.status,
            error=outcome.error,
            processed_at=received_at,
        )
        .on_conflict_do_nothing(index_elements=["body_sha256"])
        .returning(CallbackEvent.id)
    )
    return conn.execute(stmt).scalar()


class _Refused(Exception):
    """The database refused a row (not an outage): ``stage`` says which one."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.stage = stage
        self.cause = cause


def ingest(
    engine: Engine,
    body: bytes,
    payload: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    received_at: datetime | None = None,
) -> IngestResult:
    """Store ``body`` (already verified, parsed to ``payload``) and project it; commit once."""
    received_at = received_at or datetime.now(UTC)
    digest = body_digest(body)
    outcome = classify(payload)
    fields: dict[str, Any] = {
        "body": body,
        "digest": digest,
        "headers": headers or {},
        "received_at": received_at,
        "payload": payload,
    }
    try:
        with engine.begin() as conn:
            try:
                event_id = insert_event(conn, outcome=outcome, **fields)
            except UNAVAILABLE_ERRORS:
                raise
            except Exception as err:
                raise _Refused("event", err) from err
            if event_id is None:
                return IngestResult(DUPLICATE, None, outcome.trigger, None)
            if outcome.parsed is not None and outcome.parsed.records:
                try:
                    apply_records(conn, outcome.parsed.records, event_id, received_at)
                except Exception as err:
                    raise _Refused("projection", err) from err
        return IngestResult(STORED, event_id, outcome.trigger, outcome.status, outcome.error)
    except _Refused as failure:
        if isinstance(failure.cause, UNAVAILABLE_ERRORS):
            raise StorageUnavailable(_describe(failure.cause)) from failure.cause
        stage, error = failure.stage, f"{failure.stage} failed: {_describe(failure.cause)}"
    except UNAVAILABLE_ERRORS as err:
        raise StorageUnavailable(_describe(err)) from err

    # The transaction was rolled back: keep the raw event alone, marked failed.
    failed = Outcome(outcome.trigger, outcome.parsed, FAILED, error)
    try:
        with engine.begin() as conn:
            event_id = insert_event(conn, outcome=failed, bare=stage == "event", **fields)
    except UNAVAILABLE_ERRORS as err:
        raise StorageUnavailable(_describe(err)) from err
    if event_id is None:  # a concurrent copy committed in between
        return IngestResult(DUPLICATE, None, outcome.trigger, None)
    return IngestResult(STORED, event_id, outcome.trigger, FAILED, error)
