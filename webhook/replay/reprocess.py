"""Reprocess: the projector run again over chosen stored events.

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

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Engine, delete, or_, select, update

from webhook.db.engine import write_lock
from webhook.db.events import (
    EventFilter,
    Selection,
    count_selection,
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
    parse_event,
    status_of_report,
)
from webhook.replay.report import (
    Progress,
    ReplayReport,
    diff_tables,
    drop_snapshot,
    snapshot_tables,
)
from webhook.replay.shared import fold_history, transaction

REPROCESS_BATCH = 500


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
        with transaction(engine, conn):
            snapshot_tables(conn)
        if dry_run:
            with write_lock(engine):
                tx = conn.begin()
                _reprocess_all(conn, where, selection, batch_size, report, progress)
                report.changes = diff_tables(conn)
                tx.rollback()
        else:
            _reprocess_all(conn, where, selection, batch_size, report, progress, engine)
            with transaction(engine, conn):
                report.changes = diff_tables(conn)
        with transaction(engine, conn):
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
            with transaction(engine, conn):
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
        upsert_rows(conn, STATUS, [row._asdict() for row in fold_history(history).values()])
