"""Reprocess and rebuild: the projector run again over stored events.

Both parse stored bodies with today's parser and write through webhook.projection.projector, the
code that projects live callbacks, so they give exactly the rows live projection gives.

- ``reprocess`` takes chosen events, batch by batch in id order. Rows an event holds
  that its body no longer projects to are removed first (a flow_sends row our own
  sender recorded is cleared, never deleted), the message_status of every message it
  touches is folded again from the delivery history, then the batch is projected:
  a row an event holds is updated in place. Running it twice changes nothing.
- ``rebuild`` empties what the stored events will write again and projects every
  event with a body, batch by batch in id order. Rows whose source event was pruned
  or deleted, and rows our own sender recorded, are kept.

With ``dry_run`` everything happens in one transaction that is rolled back, and the
report counts per table the rows that would be inserted, updated and deleted.
Known limit: a first-wins key that a reprocessed event stops producing goes away,
even if a later event that was not chosen also has it; `rebuild` restores it.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing, contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, not_, or_, select, text, true, update

from webhook.db.engine import make_engine, write_lock
from webhook.db.events import (
    EVENTS,
    EventFilter,
    Selection,
    count_selection,
    iter_batches,
    prefetch,
    read_batch,
)
from webhook.ingest.records import DeliveryReportRecord
from webhook.projection.projector import TABLES, project, upsert_rows
from webhook.projection.rules import (
    DELIVERY,
    FIRST_WINS,
    FLOW_SENDS,
    PROJECTIONS,
    STATUS,
    SUBMIT_FILL,
    SUBMITTED,
    Parsed,
    StatusRow,
    merge_status,
    parse_event,
    status_of_report,
)
from webhook.replay.report import (
    Progress,
    ReplayReport,
    diff_tables,
    drop_snapshot,
    row_counts,
    snapshot_tables,
)

REPROCESS_BATCH = 500
REBUILD_BATCH = 5000


@contextmanager
def _transaction(engine: Engine, conn: Connection) -> Iterator[None]:
    """One write transaction on ``conn`` (SQLite: under the process-wide write lock)."""
    with write_lock(engine), conn.begin():
        yield


# ---------------------------------------------------------------- reprocess


def reprocess(
    engine: Engine,
    selected: EventFilter,
    *,
    dry_run: bool = False,
    batch_size: int = REPROCESS_BATCH,
    progress: Progress | None = None,
) -> ReplayReport:
    """Re-project the selected events; with ``dry_run``, report and roll everything back."""
    started = time.perf_counter()
    report = ReplayReport()
    where = selected.clause()
    with engine.connect() as conn:
        selection = count_selection(conn, where)
        conn.rollback()  # end the read before the write transactions
        report.pruned = selection.pruned
        with _transaction(engine, conn):
            snapshot_tables(conn)
        if dry_run:
            with write_lock(engine):
                tx = conn.begin()
                _reprocess_all(conn, where, selection, batch_size, report, progress)
                report.changes = diff_tables(conn)
                tx.rollback()
        else:
            _reprocess_all(conn, where, selection, batch_size, report, progress, engine)
            with _transaction(engine, conn):
                report.changes = diff_tables(conn)
        with _transaction(engine, conn):
            drop_snapshot(conn)
    report.seconds = time.perf_counter() - started
    return report


def _reprocess_all(
    conn: Connection, where: Any, selection: Selection, batch_size: int,
    report: ReplayReport, progress: Progress | None, engine: Engine | None = None,
) -> None:  # fmt: skip
    """Batch after batch; each its own transaction when ``engine`` is given."""
    after = 0
    while True:
        if engine is None:
            after_batch = _reprocess_batch(conn, where, after, selection.max_id, batch_size, report)
        else:
            with _transaction(engine, conn):
                after_batch = _reprocess_batch(
                    conn, where, after, selection.max_id, batch_size, report
                )
        if after_batch is None:
            return
        if progress:
            progress(after_batch[1])
        after = after_batch[0]


def _reprocess_batch(
    conn: Connection, where: Any, after: int, upto: int, limit: int, report: ReplayReport
) -> tuple[int, int] | None:
    events = read_batch(conn, where, after, upto, limit, lock=True)
    if not events:
        return None
    parsed = [parse_event(e) for e in events]
    touched = _forget(conn, parsed)
    _refold_statuses(conn, touched, exclude=[e.id for e in events])
    done = project(conn, parsed)
    for old, new in zip(events, done, strict=True):
        report.note(new.id, old.status, new.fields)
    return events[-1].id, len(events)


def _forget(conn: Connection, parsed: list[Parsed]) -> set[str]:
    """Remove what these events hold but no longer produce; the message ids touched."""
    ids = [p.id for p in parsed]
    # (event id, key) pairs: a row an event holds stays only if that event still makes it.
    produced: dict[str, set[tuple[Any, ...]]] = {p.table: set() for p in PROJECTIONS}
    touched: set[str] = set()
    for event in parsed:
        for r in event.records:
            for p in PROJECTIONS:
                if p.record is not None and isinstance(r, p.record):
                    produced[p.table].add((event.id, *(getattr(r, c) for c in p.key)))
            if isinstance(r, DeliveryReportRecord) and status_of_report(r, event.received_at):
                touched.add(r.message_id)
    for p in PROJECTIONS:
        if p.rule != FIRST_WINS:
            continue
        t = TABLES[p.table]
        held = conn.execute(
            select(t.c.id, t.c.source_event_id, *(t.c[c] for c in p.key)).where(
                t.c.source_event_id.in_(ids)
            )
        ).all()
        gone = [row[0] for row in held if tuple(row[1:]) not in produced[p.table]]
        if p.table == DELIVERY:
            touched |= {row.message_id for row in held if row.kind == "message"}
        for start in range(0, len(gone), 1000):
            conn.execute(delete(t).where(t.c.id.in_(gone[start : start + 1000])))
    # A row these events created takes their values as parsed today (emptied, then
    # filled again), or goes if they no longer produce it; the sender's row keeps its
    # own values and loses only what these events filled in.
    fs = TABLES[FLOW_SENDS]
    mine = fs.c.source_event_id.in_(ids)
    created = conn.execute(
        select(fs.c.id, fs.c.source_event_id, fs.c.message_id).where(
            mine, fs.c.send_status == SUBMITTED
        )
    ).all()
    gone = [row.id for row in created if tuple(row[1:]) not in produced[FLOW_SENDS]]
    if gone:
        conn.execute(delete(fs).where(fs.c.id.in_(gone)))
    conn.execute(
        update(fs)
        .where(mine, fs.c.send_status == SUBMITTED)
        .values({c: None for c in (*SUBMIT_FILL, "submitted_at", "source_event_id")})
    )
    conn.execute(update(fs).where(mine).values(submitted_at=None, source_event_id=None))
    return touched


def _refold_statuses(conn: Connection, message_ids: Iterable[str], exclude: list[int]) -> None:
    """message_status of these messages folded again from their delivery history,
    leaving out the rows of the events in ``exclude`` (about to be projected again)."""
    ids = sorted(message_ids)
    dr, ms = TABLES[DELIVERY], TABLES[STATUS]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        conn.execute(delete(ms).where(ms.c.message_id.in_(chunk)))
        history = conn.execute(
            select(dr).where(
                dr.c.kind == "message",
                dr.c.message_id.in_(chunk),
                or_(dr.c.source_event_id.is_(None), dr.c.source_event_id.not_in(exclude)),
            )
        )
        upsert_rows(conn, STATUS, [row._asdict() for row in _fold_history(history).values()])


def _fold_history(rows: Iterable[Any]) -> dict[str, StatusRow]:
    folded: dict[str, StatusRow] = {}
    for row in rows:
        status = status_of_report(row, row.received_at)
        if status is not None:
            folded[status.message_id] = merge_status(folded.get(status.message_id), status)
    return folded


# ---------------------------------------------------------------- rebuild


def rebuild(
    engine: Engine,
    *,
    batch_size: int = REBUILD_BATCH,
    dry_run: bool = False,
    progress: Progress | None = None,
    workers: int = 0,
) -> ReplayReport:
    """Empty the projections and project every stored event again, batch by batch.

    Each batch is its own transaction, so a rebuild that stops half-way leaves the
    tables partly rebuilt: run it again. With ``workers`` > 0, that many processes read
    and parse batches ahead (see default_workers; they are spawned, so a calling script
    needs the usual ``if __name__ == "__main__"`` guard); with 0, a thread of this
    process does.
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
        batches = _parsed_batches(engine, selection, batch_size, workers)
        with closing(batches), engine.connect() as conn:
            if dry_run:
                with write_lock(engine):
                    tx = conn.begin()
                    snapshot_tables(conn)
                    _clear(conn, selection.max_id)
                    _rebuild_batches(conn, batches, report, progress)
                    report.changes = diff_tables(conn)
                    report.rows = row_counts(conn)
                    tx.rollback()
                with _transaction(engine, conn):
                    drop_snapshot(conn)
            else:
                with _transaction(engine, conn):
                    _clear(conn, selection.max_id)
                _rebuild_batches(conn, batches, report, progress, engine)
                report.rows = row_counts(conn)
    finally:
        if collecting:
            gc.enable()
    report.seconds = time.perf_counter() - started
    return report


def _rebuild_batches(
    conn: Connection, batches: Iterator[list[Parsed]], report: ReplayReport,
    progress: Progress | None, engine: Engine | None = None,
) -> None:  # fmt: skip
    for items in batches:
        if engine is None:
            done = project(conn, items)
        else:
            with _transaction(engine, conn):
                done = project(conn, items)
        for event in done:
            report.note(event.id, event.before.status if event.before else "", event.fields)
        if progress:
            progress(len(items))


def _clear(conn: Connection, max_id: int) -> None:
    """Remove every projection row the stored events will write again."""
    c = EVENTS.c
    rebuildable = select(c.id).where(c.body.is_not(None), c.id <= max_id)
    keep_any = conn.execute(
        select(func.count()).where(or_(c.body.is_(None), c.id > max_id))
    ).scalar_one() or any(
        conn.execute(
            select(func.count()).where(TABLES[p.table].c.source_event_id.is_(None))
        ).scalar_one()
        for p in PROJECTIONS
        if p.rule == FIRST_WINS
    )
    first_wins = [p.table for p in PROJECTIONS if p.rule == FIRST_WINS]
    if not keep_any and conn.dialect.name == "postgresql":
        conn.execute(text(f"TRUNCATE {', '.join(first_wins)}, {STATUS}"))
    else:
        for name in first_wins:
            t = TABLES[name]
            where = t.c.source_event_id.in_(rebuildable) if keep_any else true()
            conn.execute(delete(t).where(where))
        conn.execute(delete(TABLES[STATUS]))
    fs = TABLES[FLOW_SENDS]
    sender, from_events = fs.c.send_status != SUBMITTED, fs.c.source_event_id.in_(rebuildable)
    conn.execute(delete(fs).where(not_(sender), from_events))
    conn.execute(update(fs).where(sender, from_events).values(submitted_at=None,
                                                              source_event_id=None))  # fmt: skip
    # message_status of the delivery history a rebuild keeps (events pruned since).
    dr = TABLES[DELIVERY]
    kept = conn.execute(select(dr).where(dr.c.kind == "message"))
    upsert_rows(conn, STATUS, [row._asdict() for row in _fold_history(kept).values()])


# ---------------------------------------------------------------- reading and parsing
# The pure half of the work (read a batch, parse every body) runs ahead of the writes:
# in a thread, or for large rebuilds in worker processes, so that parsing uses every
# CPU instead of sharing one interpreter lock with the writer.

PROCESS_THRESHOLD = 50_000
PARSE_WORKERS = 2


def default_workers(events: int) -> int:
    """Parse in processes (one per CPU, at most PARSE_WORKERS) once that pays for itself."""
    if events < PROCESS_THRESHOLD:
        return 0  # starting processes costs about a second
    return min(os.cpu_count() or 1, PARSE_WORKERS)


def _parsed_batches(
    engine: Engine, selection: Selection, batch_size: int, workers: int
) -> Generator[list[Parsed], None, None]:
    if workers <= 0:
        return prefetch(lambda: _in_thread(engine, selection.max_id, batch_size))
    return _in_processes(engine, selection, batch_size, workers)


def _in_thread(engine: Engine, max_id: int, batch_size: int) -> Iterator[list[Parsed]]:
    for events in iter_batches(engine, true(), max_id, batch_size):
        yield [parse_event(event) for event in events]


def _in_processes(
    engine: Engine, selection: Selection, batch_size: int, workers: int
) -> Generator[list[Parsed], None, None]:
    """Batches of consecutive ids, parsed by ``workers`` processes, yielded in order."""
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")  # no copied connections or threads
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_start, initargs=(url,)
    ) as pool:
        starts = iter(range(selection.min_id, selection.max_id + 1, batch_size))
        pending: deque[Future[list[Parsed]]] = deque()
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


def _worker_batch(first_id: int, last_id: int) -> list[Parsed]:
    """Events with ids first_id..last_id (and a body), parsed (in a worker process)."""
    assert _WORKER_ENGINE is not None
    with _WORKER_ENGINE.connect() as conn:
        conn.execution_options(sqlite_begin="DEFERRED")  # a read: no write lock
        events = read_batch(conn, true(), first_id - 1, last_id, last_id - first_id + 1)
    return [parse_event(event) for event in events]
