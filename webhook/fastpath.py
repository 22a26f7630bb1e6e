"""PostgreSQL: store and project one callback in ONE statement, one round trip.

The generic path (ingest.ingest_generic) sends BEGIN, the event INSERT, one statement per
projection and COMMIT. Here the same statements are chained as data-modifying CTEs:

    WITH ev AS (INSERT INTO callback_events ... ON CONFLICT DO NOTHING RETURNING id),
         p_delivery_report AS (INSERT INTO delivery_reports SELECT ..., ev.id FROM ev ...),
         p_status AS (INSERT INTO message_status SELECT ... FROM ev ON CONFLICT DO UPDATE ...)
    SELECT ev.id FROM ev

sent in autocommit on a pooled psycopg connection, so the statement is its own
transaction: committed when it returns, all or nothing. The projections read their
rows from ``ev``, so a duplicate (no row returned) writes nothing at all. The
statements are the very ones the generic path runs (projections.projection_statement,
ingest.event_statement), compiled once per shape of callback and reused as SQL text.

Shapes with two records for one table (which one statement could not order) are not
handled here; ingest falls back to the generic path for them and for any error.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import RawCursor
from sqlalchemy import Engine, exc, select
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.types import JSON

from webhook.callbacks import Record
from webhook.projections import projection_rows, projection_statement

Shape = tuple[str, ...]
_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]


def projection_values(
    records: tuple[Record, ...], received_at: Any
) -> list[tuple[str, dict[str, Any]]] | None:
    """(kind, values) per projection row, or None when one statement cannot take them."""
    out = projection_rows(records, None, received_at)
    kinds = [kind for kind, _ in out]
    return out if len(set(kinds)) == len(kinds) else None


@dataclass(frozen=True)
class Compiled:
    sql: str  # with PostgreSQL's own placeholders, $1 ... $n
    # What goes into each placeholder: (value name, is JSON), or (None, a constant).
    slots: tuple[tuple[str | None, Any], ...]


@functools.cache
def compiled(shape: Shape) -> Compiled:
    """The one statement for callbacks of this shape, compiled once."""
    from webhook.ingest import event_statement

    ev = event_statement("postgresql", prefix="ev_").cte("ev")
    parts = [projection_statement("postgresql", kind, f"{kind}_", gate=ev).cte(f"p_{kind}")
             for kind in shape]  # fmt: skip
    sql = select(ev.c.id).add_cte(*parts).compile(dialect=_DIALECT)
    order: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${order.setdefault(match.group(1), len(order) + 1)}"

    text = _PYFORMAT.sub(number, str(sql)).replace("%%", "%")
    slots: list[tuple[str | None, Any]] = []
    for name in order:
        bind = sql.binds[name]
        if bind.required:
            slots.append((name, isinstance(bind.type, JSON)))
        else:
            slots.append((None, bind.effective_value))
    return Compiled(text, tuple(slots))


_PYFORMAT = re.compile(r"%\((\w+)\)s")


def bind(event: Mapping[str, Any],
         projections: list[tuple[str, dict[str, Any]]]) -> tuple[str, list[Any]]:  # fmt: skip
    """The one statement for this callback and its parameters, in placeholder order."""
    stmt = compiled(tuple(kind for kind, _ in projections))
    values: dict[str, Any] = {f"ev_{k}": v for k, v in event.items()}
    for kind, row in projections:
        values.update((f"{kind}_{k}", v) for k, v in row.items())
    params: list[Any] = []
    for name, how in stmt.slots:
        if name is None:
            params.append(how)
            continue
        value = values[name]
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("naive datetime; store timezone-aware UTC values")
        # JSON columns store Python None as JSON null, as SQLAlchemy's JSON type does.
        params.append(orjson.dumps(value).decode() if how else value)
    return stmt.sql, params


def run(engine: Engine, event: Mapping[str, Any],
        projections: list[tuple[str, dict[str, Any]]]) -> int | None:  # fmt: skip
    """Run the one statement as its own transaction; the new event id, or None if stored."""
    return execute(engine, *bind(event, projections))


def execute(engine: Engine, sql: str, params: list[Any]) -> int | None:
    """Run one bound statement in autocommit; the new event id, or None if stored.

    On a pooled psycopg connection directly: SQLAlchemy's Connection and execution
    context would cost more Python time than psycopg itself. Errors come out as
    SQLAlchemy's (DBAPIError subclasses), and a connection that broke is invalidated,
    as SQLAlchemy would do.
    """
    pooled = engine.raw_connection()  # checkout, with the pool's idle ping
    try:
        conn: Any = pooled.driver_connection
        try:
            conn.autocommit = True
            try:
                # A raw cursor sends the $n text as it is: psycopg does not cache its
                # %s parsing of statements this long, which would cost more than the rest.
                with RawCursor(conn) as cur:
                    cur.execute(sql, params)
                    found = cur.fetchone()
            finally:
                if not (conn.closed or conn.broken):
                    conn.autocommit = False  # as the pool hands connections out
        except psycopg.Error as err:
            raise _translated(pooled, conn, err, sql, params) from err
    finally:
        pooled.close()  # back to the pool
    return None if found is None else int(found[0])


def execute_batch(engine: Engine, statements: list[tuple[str, list[Any]]]) -> list[int | None]:
    """Run bound statements in ONE transaction, sent in one pipeline; their event ids.

    BEGIN, the statements and COMMIT go out together and the server answers them
    together: one round trip and one commit for the lot. They run in order, each
    seeing the rows of those before it. If any fails, none is committed.
    """
    pooled = engine.raw_connection()
    try:
        conn: Any = pooled.driver_connection
        cursors: list[RawCursor[Any]] = []
        try:
            try:
                with conn.pipeline():
                    for sql, params in statements:
                        cur = RawCursor(conn)
                        cursors.append(cur)
                        cur.execute(sql, params)
                    conn.commit()
                found = [cur.fetchone() for cur in cursors]
            finally:
                for cur in cursors:
                    cur.close()
        except psycopg.Error as err:
            if not (conn.closed or conn.broken):
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
            raise _translated(pooled, conn, err, "pipeline", []) from err
    finally:
        pooled.close()
    return [None if row is None else int(row[0]) for row in found]


def _translated(pooled: Any, conn: Any, err: psycopg.Error, sql: str,
                params: list[Any]) -> exc.DBAPIError:  # fmt: skip
    """SQLAlchemy's error for a psycopg one; a connection that broke is invalidated."""
    broken = bool(conn.closed or conn.broken)
    if broken:
        pooled.invalidate(err)
    # Parameters hold bodies and identities: never in an error message (as the engine).
    error = exc.DBAPIError.instance(sql, params, err, psycopg.Error, hide_parameters=True,
                                    connection_invalidated=broken)  # fmt: skip
    assert isinstance(error, exc.DBAPIError)
    return error
