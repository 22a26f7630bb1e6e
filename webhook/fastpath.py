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
from sqlalchemy.types import JSON, DateTime

from webhook.callbacks import Record
from webhook.projections import projection_columns, projection_rows, projection_statement

Shape = tuple[str, ...]
_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]


def projection_values(
    records: tuple[Record, ...], received_at: Any
) -> list[tuple[str, dict[str, Any]]] | None:
    """(kind, values) per projection row, or None when one statement cannot take them."""
    out = projection_rows(records, None, received_at)
    kinds = [kind for kind, _ in out]
    return out if len(set(kinds)) == len(kinds) else None


# How a slot's value is sent: as it is, as JSON text, or checked to be a timezone-aware
# datetime first.
PLAIN, AS_JSON, AWARE = 0, 1, 2


@dataclass(frozen=True)
class Compiled:
    sql: str  # with PostgreSQL's own placeholders, $1 ... $n
    # What goes into each placeholder, in order: (source, key, how), where source 0 is
    # the event, n the n-th projection row, and -1 a constant (key is then the value).
    slots: tuple[tuple[int, Any, int], ...]


@functools.cache
def compiled(shape: Shape) -> Compiled:
    """The one statement for callbacks of this shape, compiled once."""
    from webhook.ingest import EVENT_COLUMNS, event_statement

    ev = event_statement("postgresql", prefix="ev_").cte("ev")
    parts = [projection_statement("postgresql", kind, f"{kind}_", gate=ev).cte(f"p_{kind}")
             for kind in shape]  # fmt: skip
    sql = select(ev.c.id).add_cte(*parts).compile(dialect=_DIALECT)
    order: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${order.setdefault(match.group(1), len(order) + 1)}"

    text = _PYFORMAT.sub(number, str(sql)).replace("%%", "%")
    # Bind names are prefix + column: "ev_" for the event, "<kind>_" for projections.
    source: dict[str, tuple[int, str]] = {f"ev_{c}": (0, c) for c in EVENT_COLUMNS}
    for i, kind in enumerate(shape, start=1):
        source.update((f"{kind}_{c}", (i, c)) for c in projection_columns(kind))
    slots: list[tuple[int, Any, int]] = []
    for name in order:
        bind = sql.binds[name]
        if not bind.required:
            slots.append((-1, bind.effective_value, PLAIN))
            continue
        how = (AS_JSON if isinstance(bind.type, JSON)
               else AWARE if isinstance(bind.type, DateTime) else PLAIN)  # fmt: skip
        slots.append((*source[name], how))
    return Compiled(text, tuple(slots))


_PYFORMAT = re.compile(r"%\((\w+)\)s")


def bind(event: Mapping[str, Any],
         projections: list[tuple[str, dict[str, Any]]]) -> tuple[str, list[Any]]:  # fmt: skip
    """The one statement for this callback and its parameters, in placeholder order."""
    stmt = compiled(tuple(kind for kind, _ in projections))
    sources = (event, *(row for _, row in projections))
    params: list[Any] = []
    append = params.append
    for src, key, how in stmt.slots:
        if src < 0:
            append(key)
            continue
        value = sources[src][key]
        if how == AWARE:
            if isinstance(value, datetime) and value.tzinfo is None:
                raise ValueError("naive datetime; store timezone-aware UTC values")
        elif how == AS_JSON:
            # JSON columns store Python None as JSON null, as SQLAlchemy's JSON type does.
            value = orjson.dumps(value).decode()
        append(value)
    return stmt.sql, params


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
