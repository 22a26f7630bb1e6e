"""Rebuild every projection table from callback_events, in received (id) order.

The result is what live ingestion of the same events, one by one in id order, would
have produced (tests/test_rebuild.py proves it). Speed comes from doing per batch what
ingest does per event: parse in Python, keep the first row per natural key in Python
(the live upserts are ON CONFLICT DO NOTHING), fold message_status in Python with the
same lattice (replay_rows.merge_status), then write each table with one bulk
statement (COPY on PostgreSQL, executemany elsewhere). A batch the database refuses
(a value too long for its column, a concurrent writer) is rolled back to its
savepoint and replayed one event at a time through projections.apply_records, the
live code, so each event ends exactly as ingest would have left it.

What a rebuild cannot recreate it keeps: rows whose source event was pruned (body
removed) or deleted, and flow_sends rows our own sender recorded (their
callback-filled submitted_at and source_event_id are cleared and filled again).
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Integer,
    Table,
    bindparam,
    case,
    delete,
    func,
    not_,
    or_,
    select,
    text,
    true,
    update,
)

from webhook.events_query import EVENTS, count_selection, iter_batches, prefetch
from webhook.ingest import UNAVAILABLE_ERRORS, _describe
from webhook.models import Base, FlowSend, MessageStatus
from webhook.projections import apply_records, upsert_insert
from webhook.replay_rows import (
    DELIVERY,
    FIRST_WINS_KEYS,
    FLOW_SENDS,
    PROJECTION_TABLES,
    SENDER_STATUSES,
    STATUS,
    STATUS_COLUMNS,
    SUBMIT_FILL,
    EventFields,
    Reclassified,
    StatusReport,
    StatusRow,
    failed_fields,
    fold_status,
    key_of,
    merge_flow_send,
    reclassify,
    report_from_history,
    status_row_from_db,
)

BATCH_SIZE = 5000
FAILURES_LISTED = 20
TABLES: dict[str, Table] = {name: Base.metadata.tables[name] for name in PROJECTION_TABLES}


@dataclass
class TableChanges:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0

    def add(self, other: TableChanges) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.deleted += other.deleted


@dataclass(frozen=True, slots=True)
class Failure:
    event_id: int
    trigger: str
    error: str


@dataclass
class ReplayReport:
    """What a rebuild or reprocess did (or, with dry_run, would do)."""

    events: int = 0  # events re-projected
    pruned: int = 0  # selected events skipped because their body is gone
    statuses: Counter[str] = field(default_factory=Counter)  # new status per event
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)  # old -> new
    failed: int = 0
    failures: list[Failure] = field(default_factory=list)  # the first FAILURES_LISTED
    changes: dict[str, TableChanges] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)  # rows per table afterwards
    seconds: float = 0.0
    slow_batches: int = 0  # batches replayed event by event after a refused bulk write

    def note(self, item: Reclassified, fields: EventFields) -> None:
        self.events += 1
        self.statuses[fields.status] += 1
        if fields.status != item.event.status:
            self.transitions[(item.event.status, fields.status)] += 1
        if fields.status == "failed":
            self.failed += 1
            if len(self.failures) < FAILURES_LISTED:
                self.failures.append(Failure(item.event.id, fields.trigger, fields.error or ""))


Progress = Callable[[int], None]


def rebuild(
    engine: Engine,
    *,
    batch_size: int = BATCH_SIZE,
    dry_run: bool = False,
    progress: Progress | None = None,
    bulk: bool = True,
) -> ReplayReport:
    """Empty the projections and replay every stored event into them, batch by batch.

    Each batch is its own transaction, so a rebuild that stops half-way leaves the
    tables partly rebuilt: run it again. With ``dry_run`` everything happens in one
    transaction that is rolled back, and the report says per table what would change.
    ``bulk=False`` replays every event through the live code (slow; for comparison).
    """
    started = time.perf_counter()
    report = ReplayReport()
    with engine.connect() as conn:
        selection = count_selection(conn, true())
    report.pruned = selection.pruned
    # Millions of short-lived tuples and no reference cycles: the cyclic collector
    # would only rescan the growing key sets again and again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with closing(prefetch(lambda: _prepared(engine, selection.max_id, batch_size))) as batches:
            _run(engine, selection.max_id, batches, report, dry_run, bulk, progress)
    finally:
        if collecting:
            gc.enable()
    report.seconds = time.perf_counter() - started
    return report


def _run(
    engine: Engine, max_id: int, batches: Iterator[list[Reclassified]], report: ReplayReport,
    dry_run: bool, bulk: bool, progress: Progress | None,
) -> None:  # fmt: skip
    if dry_run:
        with engine.connect() as conn, conn.begin() as tx:
            _snapshot(conn)
            state = _clear(conn, max_id, truncate=False)
            for items in batches:
                _replay_batch(conn, state, items, report, bulk)
                if progress:
                    progress(len(items))
            report.changes = _diff(conn)
            report.rows = _row_counts(conn)
            tx.rollback()
    else:
        with engine.begin() as conn:
            state = _clear(conn, max_id, truncate=True)
        for items in batches:
            with engine.begin() as conn:
                _replay_batch(conn, state, items, report, bulk)
            if progress:
                progress(len(items))
        with engine.connect() as conn:
            report.rows = _row_counts(conn)


def _prepared(engine: Engine, max_id: int, batch_size: int) -> Iterator[list[Reclassified]]:
    """Stored events with a body, in id order, parsed again: the pure half of the work."""
    for events in iter_batches(engine, true(), max_id, batch_size):
        yield [reclassify(event) for event in events]


# ---------------------------------------------------------------- clearing


@dataclass
class _State:
    """Natural keys present in each table, so bulk inserts never hit a conflict."""

    keys: dict[str, set[tuple[Any, ...]]]
    flow_sends: set[str]
    statuses: set[str]


def _rebuildable(max_id: int) -> Any:
    """Source ids of rows a rebuild recreates: events up to max_id that still have a body."""
    c = EVENTS.c
    return select(c.id).where(c.body.is_not(None), c.id <= max_id)


def _clear(conn: Connection, max_id: int, *, truncate: bool) -> _State:
    """Remove every projection row the stored events will write again."""
    c = EVENTS.c
    keep_any = conn.execute(
        select(func.count()).where(or_(c.body.is_(None), c.id > max_id))
    ).scalar_one() or any(
        conn.execute(
            select(func.count()).where(TABLES[name].c.source_event_id.is_(None))
        ).scalar_one()
        for name in FIRST_WINS_KEYS
    )
    fs = TABLES[FLOW_SENDS]
    sender = fs.c.send_status.in_(SENDER_STATUSES)
    rebuildable = fs.c.source_event_id.in_(_rebuildable(max_id))
    if not keep_any and truncate and conn.dialect.name == "postgresql":
        conn.execute(text(f"TRUNCATE {', '.join(FIRST_WINS_KEYS)}, {STATUS}"))
    else:
        for name in FIRST_WINS_KEYS:
            t = TABLES[name]
            if keep_any:
                conn.execute(delete(t).where(t.c.source_event_id.in_(_rebuildable(max_id))))
            else:
                conn.execute(delete(t))
        conn.execute(delete(TABLES[STATUS]))
    conn.execute(delete(fs).where(not_(sender), rebuildable))
    conn.execute(
        update(fs).where(sender, rebuildable).values(submitted_at=None, source_event_id=None)
    )
    state = _State(
        keys={
            name: {tuple(row) for row in conn.execute(select(*(TABLES[name].c[k] for k in keys)))}
            for name, keys in FIRST_WINS_KEYS.items()
        },
        flow_sends={mid for (mid,) in conn.execute(select(fs.c.message_id)) if mid is not None},
        statuses=set(),
    )
    _seed_statuses(conn, state)
    return state


def _seed_statuses(conn: Connection, state: _State) -> None:
    """message_status from the delivery history a rebuild keeps (events pruned since)."""
    dr = TABLES[DELIVERY]
    kept = conn.execute(
        select(dr)
        .where(dr.c.kind == "message")
        .order_by(dr.c.source_event_id.nulls_first(), dr.c.id)
    )
    reports = [r for row in kept if (r := report_from_history(dict(row._mapping)))]
    if not reports:
        return
    current: dict[str, StatusRow] = {}
    fold_status(current, reports)
    _writer(conn).insert_statuses(list(current.values()))
    state.statuses.update(current)


# ---------------------------------------------------------------- one batch


def _replay_batch(
    conn: Connection, state: _State, items: list[Reclassified], report: ReplayReport, bulk: bool
) -> None:
    final = {item.event.id: item.fields for item in items}
    done = False
    if bulk:
        savepoint = conn.begin_nested()
        try:
            pending = _bulk_write(conn, state, items)
        except Exception as err:
            savepoint.rollback()
            if is_unavailable(err):
                raise
        else:
            savepoint.commit()
            _merge_state(state, pending)
            done = True
    if not done:
        report.slow_batches += 1 if bulk else 0
        final = _slow_write(conn, state, items)
    for item in items:
        report.note(item, final[item.event.id])
    update_events(conn, [(item, final[item.event.id]) for item in items])


_UNAVAILABLE = (*UNAVAILABLE_ERRORS, psycopg.OperationalError, psycopg.InterfaceError)


def is_unavailable(err: BaseException) -> bool:
    """The database is gone (stop), as opposed to refusing these rows (replay slowly)."""
    return isinstance(err, _UNAVAILABLE)


def _merge_state(state: _State, pending: _State) -> None:
    for name, keys in pending.keys.items():
        state.keys[name] |= keys
    state.flow_sends |= pending.flow_sends
    state.statuses |= pending.statuses


def _bulk_write(conn: Connection, state: _State, items: list[Reclassified]) -> _State:
    """Write a batch with one statement per table; return the keys it added."""
    pending = _State({name: set() for name in FIRST_WINS_KEYS}, set(), set())
    inserts: dict[str, list[dict[str, Any]]] = {name: [] for name in FIRST_WINS_KEYS}
    new_sends: dict[str, dict[str, Any]] = {}
    send_merges: list[dict[str, Any]] = []
    reports: list[StatusReport] = []
    for item in items:
        rows = item.rows
        if rows is None:
            continue
        for name in FIRST_WINS_KEYS:
            for row in rows.rows.get(name, ()):
                key = key_of(name, row)
                if key not in state.keys[name] and key not in pending.keys[name]:
                    pending.keys[name].add(key)
                    inserts[name].append(row)
        for row in rows.rows.get(FLOW_SENDS, ()):
            mid = row["message_id"]
            if mid in new_sends:
                new_sends[mid] = merge_flow_send(new_sends[mid], row)
            elif mid in state.flow_sends:
                send_merges.append(row)
            else:
                new_sends[mid] = row
        reports.extend(rows.reports)
    writer = _writer(conn)
    for name, rows_ in inserts.items():
        writer.insert(name, rows_)
    writer.insert(FLOW_SENDS, list(new_sends.values()))
    if send_merges:
        conn.execute(_submit_merge_statement(conn), send_merges)
    pending.flow_sends.update(new_sends)
    _write_statuses(conn, writer, state, pending, reports)
    return pending


def _write_statuses(
    conn: Connection, writer: _Writer, state: _State, pending: _State,
    reports: list[StatusReport],
) -> None:  # fmt: skip
    """Fold the batch's reports into message_status: insert new rows, update the others."""
    touched = {r.message_id for r in reports}
    known = sorted(touched & state.statuses)
    current: dict[str, StatusRow] = {}
    ms = TABLES[STATUS]
    for start in range(0, len(known), 1000):
        query = select(ms).where(ms.c.message_id.in_(known[start : start + 1000]))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        for row in conn.execute(query):
            current[row.message_id] = status_row_from_db(row)
    before = dict(current)
    fold_status(current, reports)
    new = [row for mid, row in current.items() if mid not in before]
    changed = [
        {f"b_{k}": v for k, v in row.as_dict().items()}
        for mid, row in current.items()
        if mid in before and row != before[mid]
    ]
    writer.insert_statuses(new)
    if changed:
        stmt = (
            update(MessageStatus)
            .where(MessageStatus.message_id == bindparam("b_message_id"))
            .values({col: bindparam(f"b_{col}") for col in STATUS_COLUMNS if col != "message_id"})
        )
        conn.execute(stmt, changed)
    pending.statuses.update(touched)


def _submit_merge_statement(conn: Connection) -> Any:
    """projections.upsert_flow_send_from_submit as one statement for executemany."""
    stmt = upsert_insert(conn, FlowSend)
    t, x = FlowSend.__table__.c, stmt.excluded
    fill: dict[str, Any] = {col: func.coalesce(t[col], x[col]) for col in SUBMIT_FILL}
    fill["submitted_at"] = case(
        (t.submitted_at.is_(None), x.submitted_at),
        (x.submitted_at.is_(None), t.submitted_at),
        (x.submitted_at < t.submitted_at, x.submitted_at),
        else_=t.submitted_at,
    )
    fill["source_event_id"] = func.coalesce(t.source_event_id, x.source_event_id)
    return stmt.on_conflict_do_update(index_elements=["message_id"], set_=fill)


def _slow_write(
    conn: Connection, state: _State, items: list[Reclassified]
) -> dict[int, EventFields]:
    """Replay each event through the live projection code, in its own savepoint."""
    final: dict[int, EventFields] = {}
    for item in items:
        fields = item.fields
        if item.records:
            try:
                with conn.begin_nested():
                    apply_records(conn, item.records, item.event.id, item.event.received_at)
            except Exception as err:
                if is_unavailable(err):
                    raise
                fields = failed_fields(fields, f"projection failed: {_describe(err)}")
            else:
                rows = item.rows
                assert rows is not None
                for name in FIRST_WINS_KEYS:
                    state.keys[name].update(key_of(name, row) for row in rows.rows.get(name, ()))
                state.flow_sends.update(row["message_id"] for row in rows.rows.get(FLOW_SENDS, ()))
                state.statuses.update(r.message_id for r in rows.reports)
        final[item.event.id] = fields
    return final


def update_events(conn: Connection, decided: Iterable[tuple[Reclassified, EventFields]]) -> None:
    """Store each event's new trigger, status and error where they changed."""
    now = datetime.now(UTC)
    changed = [
        {**{f"b_{k}": v for k, v in fields._asdict().items()}, "b_id": item.event.id}
        for item, fields in decided
        if (item.changed if fields is item.fields else fields != item.event.fields)
    ]
    if not changed:
        return
    stmt = (
        update(EVENTS)
        .where(EVENTS.c.id == bindparam("b_id"))
        .values({**{n: bindparam(f"b_{n}") for n in EventFields._fields}, "processed_at": now})
    )
    conn.execute(stmt, changed)


# ---------------------------------------------------------------- writers


class _Writer:
    """Multi-row INSERT through the driver's executemany: SQLite and other backends.

    Values go through each column type's own bind processor, so they are stored
    exactly as SQLAlchemy stores them, without its per-row parameter bookkeeping.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._insert(name, list(rows[0]), (row.values() for row in rows))

    def insert_statuses(self, rows: list[StatusRow]) -> None:
        if rows:
            self._insert(STATUS, STATUS_COLUMNS, rows)

    def _insert(self, name: str, columns: Sequence[str], rows: Iterable[Iterable[Any]]) -> None:
        dialect = self.conn.dialect
        table = TABLES[name]
        procs = [table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
        params = [
            tuple(v if p is None else p(v) for p, v in zip(procs, row, strict=True)) for row in rows
        ]
        marks = ", ".join("?" if dialect.paramstyle == "qmark" else "%s" for _ in columns)
        sql = f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({marks})"
        self.conn.exec_driver_sql(sql, params)


class _CopyWriter(_Writer):
    """PostgreSQL binary COPY: several times faster than INSERT for many rows."""

    def insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        table = TABLES[name]
        columns = list(rows[0])
        json_cols = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, JSON)]
        if not json_cols:
            self._copy(name, columns, (tuple(row.values()) for row in rows))
            return
        tuples = []
        for row in rows:
            values = list(row.values())
            for i in json_cols:
                # As SQLAlchemy binds JSON: None is JSON null, not SQL NULL.
                values[i] = Jsonb(values[i])
            tuples.append(values)
        self._copy(name, columns, tuples)

    def insert_statuses(self, rows: list[StatusRow]) -> None:
        if rows:  # a StatusRow is already a tuple in column order
            self._copy(STATUS, STATUS_COLUMNS, rows)

    def _copy(self, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        table = TABLES[name]
        types = [_pg_type(table.c[c].type) for c in columns]
        driver = self.conn.connection.driver_connection
        assert driver is not None
        sql = f"COPY {name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with driver.cursor() as cur, cur.copy(sql) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)


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


def _writer(conn: Connection) -> _Writer:
    return _CopyWriter(conn) if conn.dialect.name == "postgresql" else _Writer(conn)


# ---------------------------------------------------------------- dry-run diff

_DIFF_KEYS: dict[str, tuple[str, ...]] = {
    **FIRST_WINS_KEYS, STATUS: ("message_id",), FLOW_SENDS: ("message_id",),
}  # fmt: skip


def _before(name: str) -> str:
    return f"replay_before_{name}"


def _snapshot(conn: Connection) -> None:
    """Copy each projection table into a temporary table (dropped with the rollback)."""
    for name in PROJECTION_TABLES:
        conn.execute(text(f"CREATE TEMPORARY TABLE {_before(name)} AS SELECT * FROM {name}"))


def _diff(conn: Connection) -> dict[str, TableChanges]:
    """Per table: rows inserted, updated, unchanged and deleted since _snapshot."""
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


def _row_counts(conn: Connection) -> dict[str, int]:
    return {
        name: int(conn.execute(select(func.count()).select_from(TABLES[name])).scalar_one())
        for name in PROJECTION_TABLES
    }
