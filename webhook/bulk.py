"""Bulk writes and whole-table comparisons for replay.

Writer inserts many rows with one statement: binary COPY on PostgreSQL, the driver's
executemany elsewhere, values converted by the column types exactly as SQLAlchemy
would. snapshot_tables / diff_tables count, per projection table, the rows a dry run
inserted, updated, left unchanged and deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import JSON, BigInteger, Boolean, Connection, DateTime, Integer, func, select, text

from webhook.replay_report import TABLES, TableChanges
from webhook.replay_rows import (
    FIRST_WINS_KEYS,
    FLOW_SENDS,
    PROJECTION_TABLES,
    STATUS,
    STATUS_COLUMNS,
    StatusRow,
)


class Writer:
    """Multi-row INSERT through the driver's executemany: SQLite and other backends.

    Values go through each column type's own bind processor, so they are stored
    exactly as SQLAlchemy stores them, without its per-row parameter bookkeeping.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def insert_tuples(
        self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert ``rows``, each a sequence of values for ``columns``."""
        if not rows:
            return
        dialect = self.conn.dialect
        table = TABLES[name]
        procs = [table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
        params = [
            tuple(v if p is None else p(v) for p, v in zip(procs, row, strict=True)) for row in rows
        ]
        marks = ", ".join("?" if dialect.paramstyle == "qmark" else "%s" for _ in columns)
        sql = f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({marks})"
        self.conn.exec_driver_sql(sql, params)

    def insert_statuses(self, rows: Sequence[StatusRow]) -> None:
        self.insert_tuples(STATUS, STATUS_COLUMNS, rows)  # a StatusRow is such a tuple


class CopyWriter(Writer):
    """PostgreSQL binary COPY: several times faster than INSERT for many rows."""

    def insert_tuples(
        self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if not rows:
            return
        table = TABLES[name]
        types = [_pg_type(table.c[c].type) for c in columns]
        json_cols = [i for i, t in enumerate(types) if t == "jsonb"]
        if json_cols:
            rows = [_with_json(row, json_cols) for row in rows]
        driver = self.conn.connection.driver_connection
        assert driver is not None
        sql = f"COPY {name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with driver.cursor() as cur, cur.copy(sql) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)


def _with_json(row: Sequence[Any], json_cols: list[int]) -> list[Any]:
    values = list(row)
    for i in json_cols:
        # As SQLAlchemy binds JSON: None is JSON null, not SQL NULL.
        values[i] = Jsonb(values[i])
    return values


def _pg_type(column_type: Any) -> str:
    """The PostgreSQL type name binary COPY needs for a column of the models."""
    impl = getattr(column_type, "impl", column_type)
    if isinstance(column_type, JSON):
        return "jsonb"
    if isinstance(impl, DateTime):
        return "timestamptz"
    if isinstance(impl, Boolean):
        return "bool"
    if isinstance(impl, BigInteger):
        return "int8"
    if isinstance(impl, Integer):
        return "int4"
    return "text"


def writer_for(conn: Connection) -> Writer:
    return CopyWriter(conn) if conn.dialect.name == "postgresql" else Writer(conn)


_DIFF_KEYS: dict[str, tuple[str, ...]] = {
    **FIRST_WINS_KEYS, STATUS: ("message_id",), FLOW_SENDS: ("message_id",),
}  # fmt: skip


def _before(name: str) -> str:
    return f"replay_before_{name}"


def snapshot_tables(conn: Connection) -> None:
    """Copy each projection table into a temporary table (dropped with the rollback)."""
    for name in PROJECTION_TABLES:
        conn.execute(text(f"CREATE TEMPORARY TABLE {_before(name)} AS SELECT * FROM {name}"))


def diff_tables(conn: Connection) -> dict[str, TableChanges]:
    """Per table: rows inserted, updated, unchanged and deleted since snapshot_tables."""
    distinct = "IS NOT" if conn.dialect.name == "sqlite" else "IS DISTINCT FROM"
    out: dict[str, TableChanges] = {}
    for name in PROJECTION_TABLES:
        keys = _DIFF_KEYS[name]
        cols = [c.name for c in TABLES[name].columns if c.name != "id" and c.name not in keys]
        on = " AND ".join(f"a.{k} = b.{k}" for k in keys)
        keyed = " AND ".join(f"{{t}}.{k} IS NOT NULL" for k in keys)
        any_diff = " OR ".join(f"a.{c} {distinct} b.{c}" for c in cols) or "1 = 0"
        after, before = name, _before(name)
        matched, updated = conn.execute(
            text(
                f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN {any_diff} THEN 1 ELSE 0 END), 0) "
                f"FROM {after} a JOIN {before} b ON {on}"
            )
        ).one()
        inserted = conn.execute(
            text(
                f"SELECT COUNT(*) FROM {after} a WHERE {keyed.format(t='a')} AND NOT EXISTS "
                f"(SELECT 1 FROM {before} b WHERE {on})"
            )
        ).scalar_one()
        deleted = conn.execute(
            text(
                f"SELECT COUNT(*) FROM {before} b WHERE {keyed.format(t='b')} AND NOT EXISTS "
                f"(SELECT 1 FROM {after} a WHERE {on})"
            )
        ).scalar_one()
        # Rows without a key (sends Sinch rejected) are never touched by a replay.
        keyless = conn.execute(
            text(f"SELECT COUNT(*) FROM {after} a WHERE NOT ({keyed.format(t='a')})")
        ).scalar_one()
        out[name] = TableChanges(
            int(inserted), int(updated), int(matched) - int(updated) + int(keyless), int(deleted)
        )
    return out


def row_counts(conn: Connection) -> dict[str, int]:
    return {
        name: int(conn.execute(select(func.count()).select_from(TABLES[name])).scalar_one())
        for name in PROJECTION_TABLES
    }
