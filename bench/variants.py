"""Changes to the service, patched in from outside, to measure one before it is made.

bench/variant_app.py serves the service with these patches applied from the
environment (bench/run.py ``--variant NAME:BACKEND:APP=bench.variant_app:app,KNOB=V``,
next to the unchanged service in the same run); bench/append_modes.py applies them
in-process. With no knob set nothing changes. Knobs (environment):

- ``BENCH_PROJECTOR_DELAY=S``: the projector thread, once woken by an append, waits S
  seconds before it projects, so one transaction takes what arrived meanwhile
  (today it projects after every commit of the append path: batches of a few events).
- ``BENCH_APPEND=unnest|pipeline|copy`` (PostgreSQL): how an append batch reaches the
  server. Today (``values``) it is SQLAlchemy's insertmanyvalues: one multi-row INSERT
  ... VALUES (...), (...) ON CONFLICT DO NOTHING RETURNING, whose text changes with the
  batch size (parsed and planned every time). ``unnest``: one statement over arrays,
  the same text for every batch (psycopg prepares it after 5 uses). ``pipeline``: one
  single-row INSERT per event, prepared, sent in a psycopg pipeline inside one
  transaction. ``copy``: COPY into a temporary table, then INSERT ... SELECT ... ON
  CONFLICT DO NOTHING RETURNING, in one transaction.
- ``BENCH_UPSERT=unnest`` (PostgreSQL): the projector's multi-row upserts and its
  status update as one statement each over arrays (``INSERT ... SELECT * FROM
  unnest(%s::type[], ...) ON CONFLICT ...``, ``UPDATE ... FROM unnest(...)``): the same
  short text whatever the batch size, instead of SQLAlchemy's insertmanyvalues, whose
  1,000-row statements carry 15,000 placeholders that psycopg parses again each time
  (it does not cache long queries).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

from sqlalchemy import Connection

APPEND_COLUMNS = ("body", "body_sha256", "headers", "received_at", "trigger", "status")
_COLS = ", ".join(APPEND_COLUMNS)
UNNEST_SQL = (
    f"INSERT INTO callback_events ({_COLS}) SELECT * FROM unnest("
    "%s::bytea[], %s::varchar[], %s::jsonb[], %s::timestamptz[], %s::varchar[], %s::varchar[]) "
    "ON CONFLICT (body_sha256) DO NOTHING RETURNING id, body_sha256"
)
SINGLE_SQL = (
    f"INSERT INTO callback_events ({_COLS}) VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (body_sha256) DO NOTHING RETURNING id, body_sha256"
)
COPY_TABLE = "bench_append"


def _driver(conn: Connection) -> Any:
    raw = conn.connection.driver_connection
    assert raw is not None
    return raw


def run_unnest(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
    from psycopg.types.json import Jsonb

    raw = _driver(conn)
    params = (
        [r["body"] for r in rows],
        [r["body_sha256"] for r in rows],
        [None if r["headers"] is None else Jsonb(r["headers"]) for r in rows],
        [r["received_at"] for r in rows],
        [r["trigger"] for r in rows],
        [r["status"] for r in rows],
    )
    with raw.cursor() as cur:
        cur.execute(UNNEST_SQL, params)
        return {digest: event_id for event_id, digest in cur.fetchall()}


def _row(r: dict[str, Any]) -> tuple[Any, ...]:
    from psycopg.types.json import Jsonb

    headers = None if r["headers"] is None else Jsonb(r["headers"])
    return (r["body"], r["body_sha256"], headers, r["received_at"], r["trigger"], r["status"])


def run_pipeline(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
    raw = _driver(conn)
    ids: dict[str, int] = {}
    with raw.transaction(), raw.cursor() as cur:
        cur.executemany(SINGLE_SQL, [_row(r) for r in rows], returning=True)
        while True:
            for event_id, digest in cur.fetchall():
                ids[digest] = event_id
            if not cur.nextset():
                break
    return ids


_WITH_TABLE: weakref.WeakSet[Any] = weakref.WeakSet()  # connections that have COPY_TABLE


def run_copy(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
    raw = _driver(conn)
    with raw.transaction(), raw.cursor() as cur:
        if raw not in _WITH_TABLE:
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {COPY_TABLE} (LIKE callback_events "
                "INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            _WITH_TABLE.add(raw)
        with cur.copy(f"COPY {COPY_TABLE} ({_COLS}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(_row(r))
        cur.execute(
            f"INSERT INTO callback_events ({_COLS}) SELECT {_COLS} FROM {COPY_TABLE} "
            "ON CONFLICT (body_sha256) DO NOTHING RETURNING id, body_sha256"
        )
        return {digest: event_id for event_id, digest in cur.fetchall()}


APPEND_MODES = {"unnest": run_unnest, "pipeline": run_pipeline, "copy": run_copy}


def patch_append(mode: str) -> None:
    """Make webhook.ingest.append's Appender send its batches this way on PostgreSQL."""
    from webhook.ingest.append import append as ingest

    if mode in ("", "values"):
        return
    run = APPEND_MODES[mode]
    original = ingest.Appender._run

    def _run(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:
        if conn.dialect.name != "postgresql":
            return original(conn, rows)
        return run(conn, rows)

    ingest.Appender._run = staticmethod(_run)  # type: ignore[method-assign]


def patch_projector_delay(delay: float) -> None:
    """The projector thread waits ``delay`` seconds after a wake-up before projecting."""
    from webhook import projector as pj
    from webhook.db.errors import describe_error, is_unavailable

    log = logging.getLogger("webhook.projection.projector")

    def _run(self: pj.ProjectorThread) -> None:
        pause = 0.0
        while not self._stop.is_set():
            self._wake.wait(pause or self.poll_seconds)
            if not pause:
                self._stop.wait(delay)  # let the events of the next `delay` s join the batch
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                while not self._stop.is_set() and pj.project_pending(self.engine, self.batch_size):
                    pass
            except Exception as err:
                if not pause:
                    log.warning("projector: %s; retrying", describe_error(err),
                                exc_info=not is_unavailable(err))  # fmt: skip
                pause = min(max(pause * 2, 0.1), self.max_pause)
            else:
                pause = 0.0

    pj.ProjectorThread._run = _run  # type: ignore[method-assign]


def _pg_type(column: Any) -> str:
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    return str(column.type.compile(dialect=PGDialect_psycopg()))  # type: ignore[no-untyped-call]


def _unnest_upsert_sql(table: str, first_wins: bool) -> tuple[str, tuple[str, ...], set[str]]:
    from webhook import projector as pj
    from webhook.projection.rules import PROJECTIONS, columns_of

    t = pj.TABLES[table]
    cols = columns_of(table)
    key = next(p.key for p in PROJECTIONS if p.table == table)
    arrays = ", ".join(f"CAST(%s AS {_pg_type(t.c[c])}[])" for c in cols)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in key)
    where = ""
    if first_wins:
        where = (f" WHERE {table}.source_event_id IS NOT NULL AND EXCLUDED.source_event_id IS "
                 f"NOT NULL AND EXCLUDED.source_event_id <= {table}.source_event_id")  # fmt: skip
    sql = (f"INSERT INTO {table} ({', '.join(cols)}) SELECT * FROM unnest({arrays}) "
           f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}{where}")  # fmt: skip
    json_cols = {c for c in cols if _pg_type(t.c[c]) in ("JSONB", "JSON")}
    return sql, cols, json_cols


def patch_upsert_unnest() -> None:
    """The projector's upserts and status updates as single statements over arrays."""
    from psycopg.types.json import Jsonb

    from webhook import projector as pj
    from webhook.db.events import EVENTS, EventFields

    original_upsert, original_statuses = pj.upsert_rows, pj.set_statuses
    statements: dict[tuple[str, bool], tuple[str, tuple[str, ...], set[str]]] = {}

    def upsert_rows(
        conn: Connection, table: str, rows: list[dict[str, Any]], first_wins: bool = False
    ) -> None:
        if not rows or conn.dialect.name != "postgresql":
            original_upsert(conn, table, rows, first_wins)
            return
        found = statements.get((table, first_wins))
        if found is None:
            found = statements[(table, first_wins)] = _unnest_upsert_sql(table, first_wins)
        sql, cols, json_cols = found
        params = [
            [Jsonb(r[c]) for r in rows]  # as SQLAlchemy's JSON: None is JSON null
            if c in json_cols
            else [r[c] for r in rows]
            for c in cols
        ]
        with _driver(conn).cursor() as cur:
            cur.execute(sql, params)

    e = EVENTS.c
    fields = EventFields._fields
    status_sql = (
        "UPDATE callback_events AS e SET "
        + ", ".join(f"{f} = v.{f}" for f in fields)
        + ", processed_at = %s FROM unnest(CAST(%s AS BIGINT[]), "
        + ", ".join(f"CAST(%s AS {_pg_type(e[f])}[])" for f in fields)
        + f") AS v(id, {', '.join(fields)}) WHERE e.id = v.id"
    )

    def set_statuses(conn: Connection, events: Any) -> None:
        if conn.dialect.name != "postgresql":
            original_statuses(conn, events)
            return
        changed = [ev for ev in events if ev.fields != ev.before]
        if not changed:
            return
        from datetime import UTC, datetime

        columns = [[ev.fields[i] for ev in changed] for i in range(len(fields))]
        with _driver(conn).cursor() as cur:
            cur.execute(status_sql, [datetime.now(UTC), [ev.id for ev in changed], *columns])

    pj.upsert_rows = upsert_rows
    pj.set_statuses = set_statuses


def apply(env: dict[str, str] | os._Environ[str] = os.environ) -> None:
    if env.get("BENCH_UPSERT") == "unnest":
        patch_upsert_unnest()
    if env.get("BENCH_APPEND"):
        patch_append(env["BENCH_APPEND"])
    if env.get("BENCH_PROJECTOR_DELAY"):
        patch_projector_delay(float(env["BENCH_PROJECTOR_DELAY"]))
