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
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
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

from webhook.bulk import Writer, diff_tables, row_counts, snapshot_tables, writer_for
from webhook.db import make_engine
from webhook.events_query import (
    EVENTS,
    Selection,
    count_selection,
    iter_batches,
    prefetch,
    read_batch,
)
from webhook.ingest import _describe
from webhook.models import FlowSend, MessageStatus
from webhook.projections import apply_records, upsert_insert
from webhook.replay_report import (
    TABLES,
    Progress,
    ReplayReport,
    is_unavailable,
    update_events,
)
from webhook.replay_rows import (
    DELIVERY,
    FIRST_WINS_KEYS,
    FLOW_SENDS,
    ROW_COLUMNS,
    SEND_MESSAGE_ID,
    STATUS,
    STATUS_COLUMNS,
    SUBMIT_FILL,
    SUBMITTED,
    TUPLE_KEYS,
    EventFields,
    Prepared,
    StatusReport,
    StatusRow,
    StoredEvent,
    failed_fields,
    fold_status,
    key_of,
    merge_send_tuple,
    prepare,
    reclassify,
    report_from_history,
    status_row_from_db,
)

BATCH_SIZE = 5000


def rebuild(
    engine: Engine,
    *,
    batch_size: int = BATCH_SIZE,
    dry_run: bool = False,
    progress: Progress | None = None,
    bulk: bool = True,
    workers: int = 0,
) -> ReplayReport:
    """Empty the projections and replay every stored event into them, batch by batch.

    Each batch is its own transaction, so a rebuild that stops half-way leaves the
    tables partly rebuilt: run it again. With ``dry_run`` everything happens in one
    transaction that is rolled back, and the report says per table what would change.
    With ``workers`` > 0, that many processes read and parse batches ahead (see
    default_workers; they are spawned, so a calling script needs the usual
    ``if __name__ == "__main__"`` guard); with 0, a thread of this process does.
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
        batches = _prepared_batches(engine, selection, batch_size, workers)
        with closing(batches):
            _run(engine, selection.max_id, batches, report, dry_run, bulk, progress)
    finally:
        if collecting:
            gc.enable()
    report.seconds = time.perf_counter() - started
    return report


def _run(
    engine: Engine, max_id: int, batches: Iterator[list[Prepared]], report: ReplayReport,
    dry_run: bool, bulk: bool, progress: Progress | None,
) -> None:  # fmt: skip
    if dry_run:
        with engine.connect() as conn, conn.begin() as tx:
            snapshot_tables(conn)
            state = _clear(conn, max_id, truncate=False)
            for items in batches:
                _replay_batch(conn, state, items, report, bulk)
                if progress:
                    progress(len(items))
            report.changes = diff_tables(conn)
            report.rows = row_counts(conn)
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
            report.rows = row_counts(conn)


# ---------------------------------------------------------------- reading and parsing
# The pure half of the work (read a batch, parse every body again) runs ahead of the
# writes: in a thread, or for large rebuilds in worker processes, so that parsing
# uses every CPU instead of sharing one interpreter lock with the writer.

PROCESS_THRESHOLD = 50_000
PARSE_WORKERS = 2


def default_workers(events: int) -> int:
    """Parse in processes (one per CPU, at most PARSE_WORKERS) once that pays for itself."""
    if events < PROCESS_THRESHOLD:
        return 0  # starting processes costs about a second
    return min(os.cpu_count() or 1, PARSE_WORKERS)


def _prepared_batches(
    engine: Engine, selection: Selection, batch_size: int, workers: int
) -> Generator[list[Prepared], None, None]:
    if workers <= 0:
        return prefetch(lambda: _in_thread(engine, selection.max_id, batch_size))
    return _in_processes(engine, selection, batch_size, workers)


def _in_thread(engine: Engine, max_id: int, batch_size: int) -> Iterator[list[Prepared]]:
    for events in iter_batches(engine, true(), max_id, batch_size):
        yield [prepare(event) for event in events]


def _in_processes(
    engine: Engine, selection: Selection, batch_size: int, workers: int
) -> Generator[list[Prepared], None, None]:
    """Batches of consecutive ids, parsed by ``workers`` processes, yielded in order."""
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")  # no copied connections or threads
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_start, initargs=(url,)
    ) as pool:
        starts = iter(range(selection.min_id, selection.max_id + 1, batch_size))
        pending: deque[Future[list[Prepared]]] = deque()
        try:
            for start in starts:
                end = min(start + batch_size - 1, selection.max_id)
                pending.append(pool.submit(_worker_batch, start, end))
                if len(pending) > 2 * workers and (batch := pending.popleft().result()):
                    yield batch
            while pending:
                if batch := pending.popleft().result():
                    yield batch
        finally:
            for future in pending:
                future.cancel()


_WORKER_ENGINE: Engine | None = None


def _worker_start(url: str) -> None:
    global _WORKER_ENGINE
    gc.disable()
    _WORKER_ENGINE = make_engine(url)


def _worker_batch(first_id: int, last_id: int) -> list[Prepared]:
    """Events with ids first_id..last_id (and a body), parsed (in a worker process)."""
    assert _WORKER_ENGINE is not None
    with _WORKER_ENGINE.connect() as conn:
        conn.execution_options(sqlite_begin="DEFERRED")  # a read: no write lock
        events = read_batch(conn, true(), first_id - 1, last_id, last_id - first_id + 1)
    return [prepare(event) for event in events]


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
    sender = fs.c.send_status != SUBMITTED
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
    writer_for(conn).insert_statuses(list(current.values()))
    state.statuses.update(current)


# ---------------------------------------------------------------- one batch


def _replay_batch(
    conn: Connection, state: _State, items: list[Prepared], report: ReplayReport, bulk: bool
) -> None:
    final = {item.id: (item.fields, item.changed) for item in items}
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
    changed = []
    for item in items:
        fields, differs = final[item.id]
        report.note(item.id, item.status, fields)
        if differs:
            changed.append((item.id, fields))
    update_events(conn, changed)


def _merge_state(state: _State, pending: _State) -> None:
    for name, keys in pending.keys.items():
        state.keys[name] |= keys
    state.flow_sends |= pending.flow_sends
    state.statuses |= pending.statuses


def _bulk_write(conn: Connection, state: _State, items: list[Prepared]) -> _State:
    """Write a batch with one statement per table; return the keys it added."""
    pending = _State({name: set() for name in FIRST_WINS_KEYS}, set(), set())
    inserts: dict[str, list[tuple[Any, ...]]] = {name: [] for name in FIRST_WINS_KEYS}
    new_sends: dict[str, tuple[Any, ...]] = {}
    send_merges: list[tuple[Any, ...]] = []
    reports: list[StatusReport] = []
    for item in items:
        rows = item.rows
        if rows is None:
            continue
        for name in FIRST_WINS_KEYS:
            if name not in rows:
                continue
            key_of_row, known, added = TUPLE_KEYS[name], state.keys[name], pending.keys[name]
            for row in rows[name]:
                key = key_of_row(row)
                if key not in known and key not in added:
                    added.add(key)
                    inserts[name].append(row)
        for row in rows.get(FLOW_SENDS, ()):
            mid = row[SEND_MESSAGE_ID]
            if mid in new_sends:
                new_sends[mid] = merge_send_tuple(new_sends[mid], row)
            elif mid in state.flow_sends:
                send_merges.append(row)
            else:
                new_sends[mid] = row
        reports.extend(StatusReport._make(r) for r in item.reports)
    writer = writer_for(conn)
    for name, tuples in inserts.items():
        writer.insert_tuples(name, ROW_COLUMNS[name], tuples)
    writer.insert_tuples(FLOW_SENDS, ROW_COLUMNS[FLOW_SENDS], list(new_sends.values()))
    if send_merges:
        columns = ROW_COLUMNS[FLOW_SENDS]
        params = [dict(zip(columns, row, strict=True)) for row in send_merges]
        conn.execute(_submit_merge_statement(conn), params)
    pending.flow_sends.update(new_sends)
    _write_statuses(conn, writer, state, pending, reports)
    return pending


def _write_statuses(
    conn: Connection, writer: Writer, state: _State, pending: _State,
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
    conn: Connection, state: _State, items: list[Prepared]
) -> dict[int, tuple[EventFields, bool]]:
    """Replay each event through the live projection code, in its own savepoint.

    Returns each event's fields, and whether they differ from the stored ones.
    """
    final: dict[int, tuple[EventFields, bool]] = {}
    parsed = {e.id: reclassify(e) for e in _read_ids(conn, [item.id for item in items])}
    for item in items:
        fields = item.fields
        again = parsed[item.id]
        if again.records:
            try:
                with conn.begin_nested():
                    apply_records(conn, again.records, item.id, again.event.received_at)
            except Exception as err:
                if is_unavailable(err):
                    raise
                fields = failed_fields(fields, f"projection failed: {_describe(err)}")
            else:
                rows = again.rows
                assert rows is not None
                for name in FIRST_WINS_KEYS:
                    state.keys[name].update(key_of(name, row) for row in rows.rows.get(name, ()))
                state.flow_sends.update(row["message_id"] for row in rows.rows.get(FLOW_SENDS, ()))
                state.statuses.update(r.message_id for r in rows.reports)
        final[item.id] = (fields, fields != again.event.fields)
    return final


def _read_ids(conn: Connection, ids: list[int]) -> list[StoredEvent]:
    first, last = min(ids), max(ids)
    return read_batch(conn, EVENTS.c.id.in_(ids), first - 1, last, len(ids))
