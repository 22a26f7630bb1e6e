"""Rebuild: empty the projections and project every stored event again (see
webhook.replay.reprocess for what both guarantee)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing

from sqlalchemy import Connection, Engine, delete, func, not_, or_, select, text, true, update

from webhook.db.engine import make_engine, write_lock
from webhook.db.events import (
    EVENTS,
    Selection,
    count_selection,
    iter_batches,
    prefetch,
    read_batch,
)
from webhook.projection.projector import TABLES, project, upsert_rows
from webhook.projection.rules import (
    DELIVERY,
    FIRST_WINS,
    FLOW_SENDS,
    PROJECTIONS,
    STATUS,
    SUBMITTED,
    Parsed,
    parse_event,
)
from webhook.replay.report import (
    Progress,
    ReplayReport,
    diff_tables,
    drop_snapshot,
    row_counts,
    snapshot_tables,
)
from webhook.replay.shared import fold_history, transaction

REBUILD_BATCH = 5000


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
                with transaction(engine, conn):
                    drop_snapshot(conn)
            else:
                with transaction(engine, conn):
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
            with transaction(engine, conn):
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
    upsert_rows(conn, STATUS, [row._asdict() for row in fold_history(kept).values()])


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
