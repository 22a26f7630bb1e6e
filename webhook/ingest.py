"""Store a callback byte-exact and project it: one transaction, one commit.

Shared by the HTTP endpoint, import and replay, so every path dedupes and projects
the same way. The raw event is written first; a projection that fails (a parser
bug, a value the schema refuses) rolls the transaction back and the raw event is
stored again on its own as ``failed``: nothing authentic is lost. If the database
refuses even the event's envelope fields (say a NUL character in ``app_id`` on
PostgreSQL), the event is stored bare: body, digest, trigger, status and error.
A database that cannot be written raises StorageUnavailable, which the endpoint
answers with 503.

How it is written depends on the database, never what is written (tests compare):
PostgreSQL runs the whole unit as one statement (webhook.fastpath), sent together with
the statements of the callbacks arriving at the same time (webhook.pgbatch), SQLite runs it in
a SAVEPOINT of a transaction shared with the callbacks arriving at the same time
(webhook.groupcommit), and ingest_generic is the plain transaction, on either.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, exc
from sqlalchemy.sql.dml import ReturningInsert

from webhook.callbacks import (
    UNKNOWN,
    Envelope,
    ParsedCallback,
    ParseError,
    detect_trigger,
    parse_callback,
    parse_envelope,
)
from webhook.db import deadline_passed, write_lock
from webhook.groupcommit import group_commit
from webhook.models import CallbackEvent
from webhook.prepared import Prepared, prepare
from webhook.projections import (
    apply_records,
    dialect_insert,
    projection_rows,
    projection_statement,
)

_T = TypeVar("_T")
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


def event_values(
    *,
    body: bytes,
    digest: str,
    headers: Mapping[str, str],
    received_at: datetime,
    payload: Mapping[str, Any],
    outcome: Outcome,
) -> dict[str, Any]:
    """The callback_events row for one body."""
    envelope = outcome.parsed.envelope if outcome.parsed else parse_envelope(payload)
    return {
        "body": body,
        "body_sha256": digest,
        "headers": dict(headers) or None,
        "received_at": received_at,
        "trigger": outcome.trigger,
        "app_id": envelope.app_id,
        "project_id": envelope.project_id,
        "event_time": envelope.event_time,
        "correlation_id": envelope.correlation_id,
        "status": outcome.status,
        "error": outcome.error,
        "processed_at": received_at,
    }


EVENT_COLUMNS = ("body", "body_sha256", "headers", "received_at", "trigger", "app_id",
                 "project_id", "event_time", "correlation_id", "status", "error",
                 "processed_at")  # fmt: skip


def event_statement(dialect: str, prefix: str = "") -> ReturningInsert[int]:
    """INSERT the raw event unless its digest is stored; RETURNING its id (binds: prefix+col)."""
    table = CallbackEvent.__table__
    binds = {c: bindparam(prefix + c, type_=table.c[c].type) for c in EVENT_COLUMNS}
    return (
        dialect_insert(dialect, CallbackEvent)
        .values(binds)
        .on_conflict_do_nothing(index_elements=["body_sha256"])
        .returning(CallbackEvent.id)
    )


@functools.cache
def _event_statement(dialect: str) -> ReturningInsert[int]:
    return event_statement(dialect)


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
    values = event_values(body=body, digest=digest, headers=headers, received_at=received_at,
                          payload=payload, outcome=outcome)  # fmt: skip
    if bare:
        values.update(headers=None, app_id=_BARE.app_id, project_id=_BARE.project_id,
                      event_time=_BARE.event_time, correlation_id=_BARE.correlation_id)  # fmt: skip
    return conn.execute(_event_statement(conn.dialect.name), values).scalar()


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
    """Store ``body`` (already verified, parsed to ``payload``) and project it; commit once.

    On PostgreSQL the whole callback is one statement (webhook.fastpath); callbacks it
    cannot take, and any error, go the generic way, with the same rows as the result.
    """
    outcome = classify(payload)
    fields = _fields(body, payload, headers, received_at)
    if engine.dialect.name == "postgresql":
        result = _once_more_if_dead(lambda: _ingest_one_statement(engine, outcome, fields))
        if result is not None:
            return result
    elif engine.dialect.name == "sqlite":
        return _ingest_group_commit(engine, outcome, fields)
    return _once_more_if_dead(lambda: _ingest_transaction(engine, outcome, fields))


def _once_more_if_dead(attempt: Callable[[], _T]) -> _T:
    """Run ``attempt``; again once if it met a pooled connection the server had closed.

    The pool pings only connections idle for a while (db.make_engine), so after a
    database restart one in steady use can still be dead; the pool drops it, and as
    nothing was committed on it, the same work is done again on a fresh connection.
    """
    try:
        return attempt()
    except StorageUnavailable as err:
        cause = err.__cause__
        if not (isinstance(cause, exc.DBAPIError) and cause.connection_invalidated):
            raise
        if deadline_passed():  # the request's time is spent: answer 503 now
            raise
    return attempt()


def ingest_generic(
    engine: Engine,
    body: bytes,
    payload: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    received_at: datetime | None = None,
) -> IngestResult:
    """ingest() on any database: BEGIN, the event, one statement per projection, COMMIT."""
    outcome = classify(payload)
    fields = _fields(body, payload, headers, received_at)
    return _once_more_if_dead(lambda: _ingest_transaction(engine, outcome, fields))


def _fields(body: bytes, payload: Mapping[str, Any], headers: Mapping[str, str] | None,
            received_at: datetime | None) -> dict[str, Any]:  # fmt: skip
    return {
        "body": body,
        "digest": body_digest(body),
        "headers": headers or {},
        "received_at": received_at or datetime.now(UTC),
        "payload": payload,
    }


def _ingest_transaction(engine: Engine, outcome: Outcome, fields: dict[str, Any]) -> IngestResult:
    received_at = fields["received_at"]
    try:
        with write_lock(engine), engine.begin() as conn:
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
        with write_lock(engine), engine.begin() as conn:
            event_id = insert_event(conn, outcome=failed, bare=stage == "event", **fields)
    except UNAVAILABLE_ERRORS as err:
        raise StorageUnavailable(_describe(err)) from err
    if event_id is None:  # a concurrent copy committed in between
        return IngestResult(DUPLICATE, None, outcome.trigger, None)
    return IngestResult(STORED, event_id, outcome.trigger, FAILED, error)


def _ingest_group_commit(engine: Engine, outcome: Outcome, fields: dict[str, Any]) -> IngestResult:
    """SQLite: the generic unit of work in a SAVEPOINT of a shared transaction (groupcommit)."""
    try:
        result: IngestResult = group_commit(engine, UNAVAILABLE_ERRORS).run(
            lambda conn: _ingest_savepoint(conn, outcome, fields)
        )
    except UNAVAILABLE_ERRORS as err:
        raise StorageUnavailable(_describe(err)) from err
    return result


def _ingest_savepoint(conn: Connection, outcome: Outcome, fields: dict[str, Any]) -> IngestResult:
    """_ingest_transaction inside a SAVEPOINT: what fails is rolled back to it, alone.

    The statements are the generic path's, run through prepared.Prepared.
    """
    received_at = fields["received_at"]
    try:
        with _savepoint(conn):
            event = event_values(outcome=outcome, **fields)
            event_id = _prepared(conn, "event").execute(conn, event).scalar()
            if event_id is None:
                return IngestResult(DUPLICATE, None, outcome.trigger, None)
            records = outcome.parsed.records if outcome.parsed is not None else ()
            try:
                for kind, values in projection_rows(records, event_id, received_at):
                    _prepared(conn, kind).execute(conn, values)
            except Exception as err:
                raise _Refused("projection", err) from err
        return IngestResult(STORED, event_id, outcome.trigger, outcome.status, outcome.error)
    except _Refused as failure:
        if isinstance(failure.cause, UNAVAILABLE_ERRORS):
            raise failure.cause from None
        error = f"projection failed: {_describe(failure.cause)}"
    failed = Outcome(outcome.trigger, outcome.parsed, FAILED, error)
    with _savepoint(conn):
        event = event_values(outcome=failed, **fields)
        event_id = _prepared(conn, "event").execute(conn, event).scalar()
    if event_id is None:
        return IngestResult(DUPLICATE, None, outcome.trigger, None)
    return IngestResult(STORED, event_id, outcome.trigger, FAILED, error)


@contextmanager
def _savepoint(conn: Connection) -> Iterator[None]:
    conn.exec_driver_sql("SAVEPOINT ingest")
    try:
        yield
    except BaseException:
        conn.exec_driver_sql("ROLLBACK TO ingest")
        conn.exec_driver_sql("RELEASE ingest")
        raise
    conn.exec_driver_sql("RELEASE ingest")


_PREPARED: dict[tuple[str, str], Prepared] = {}


def _prepared(conn: Connection, kind: str) -> Prepared:
    key = (conn.dialect.name, kind)
    found = _PREPARED.get(key)
    if found is None:
        stmt = (event_statement(key[0]) if kind == "event"
                else projection_statement(key[0], kind))  # fmt: skip
        found = _PREPARED[key] = prepare(stmt, conn.dialect)
    return found


def _ingest_one_statement(
    engine: Engine, outcome: Outcome, fields: dict[str, Any]
) -> IngestResult | None:
    """PostgreSQL: the whole ingest as one statement, committed alone or in a batch
    (webhook.pgbatch); None to use the generic path."""
    from webhook import fastpath  # psycopg: imported on PostgreSQL only
    from webhook.pgbatch import batch_writer

    records = outcome.parsed.records if outcome.parsed is not None else ()
    projections = fastpath.projection_values(records, fields["received_at"])
    if projections is None:
        return None
    event = event_values(outcome=outcome, **fields)
    try:
        sql, params = fastpath.bind(event, projections)
        message_id = next((row["message_id"] for _, row in projections if "message_id" in row), "")
        key = (message_id or "", fields["digest"])
        event_id = batch_writer(engine).run(sql, params, key)
    except UNAVAILABLE_ERRORS as err:
        raise StorageUnavailable(_describe(err)) from err
    except Exception:
        # Nothing was written (one statement); the generic path stores the event as
        # failed if a projection is at fault, with the error that says why.
        return None
    if event_id is None:
        return IngestResult(DUPLICATE, None, outcome.trigger, None)
    return IngestResult(STORED, event_id, outcome.trigger, outcome.status, outcome.error)
