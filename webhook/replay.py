"""Reprocess chosen stored events: bring their projection rows in line with today's parser.

For each event, in id order and in its own savepoint, the rows it is the source of are
compared with what its body projects to now: changed rows are updated in place, rows it
no longer produces are deleted, new ones inserted (unless another event already holds
that natural key: the first event keeps it, as in live ingestion). message_status of
every message touched is then recomputed from its delivery history with the lattice of
projections.py. Nothing is written when nothing changed, so a second run changes
nothing. flow_sends rows our own sender recorded are never deleted: a MESSAGE_SUBMIT
only fills in what they lack.

Known limit, kept on purpose: a delivery report that repeated an existing history row
(same message, status and channel, different bytes) and is not among the chosen events
reaches message_status only through the row it repeated. `rebuild` replays them all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, insert, select, update

from webhook.events_query import EventFilter, count_selection, read_batch
from webhook.ingest import _describe
from webhook.projections import upsert_insert
from webhook.replay_report import (
    TABLES,
    Progress,
    ReplayReport,
    TableChanges,
    is_unavailable,
    update_events,
)
from webhook.replay_rows import (
    DELIVERY,
    FIRST_WINS_KEYS,
    FLOW_SENDS,
    STATUS,
    SUBMIT_FILL,
    SUBMITTED,
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

BATCH_SIZE = 500

Changes = dict[str, TableChanges]


def reprocess(
    engine: Engine,
    selected: EventFilter,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
) -> ReplayReport:
    """Re-project the selected events; with ``dry_run``, report and roll everything back."""
    started = time.perf_counter()
    report = ReplayReport()
    where = selected.clause()
    with engine.connect() as conn:
        selection = count_selection(conn, where)
    report.pruned = selection.pruned
    report.changes = {name: TableChanges() for name in TABLES}
    lost: list[tuple[int, StatusReport]] = []

    def one_batch(conn: Connection, after: int) -> int | None:
        batch = read_batch(conn, where, after, selection.max_id, batch_size)
        if not batch:
            return None
        _reprocess_batch(conn, [reclassify(e) for e in batch], report, lost)
        if progress:
            progress(len(batch))
        return batch[-1].id

    after: int | None = 0
    if dry_run:
        with engine.connect() as conn, conn.begin() as tx:
            while after is not None:
                after = one_batch(conn, after)
            tx.rollback()
    else:
        while after is not None:
            with engine.begin() as conn:
                after = one_batch(conn, after)
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class _Plan:
    """The writes that bring one event's rows in line, decided before any is made."""

    ops: list[tuple[str, str, Any, dict[str, Any]]] = field(default_factory=list)
    changes: Changes = field(default_factory=lambda: {name: TableChanges() for name in TABLES})
    affected: set[str] = field(default_factory=set)  # message ids whose status to recompute
    lost: list[tuple[int, StatusReport]] = field(default_factory=list)

    def write(self, op: str, table: str, target: Any, values: dict[str, Any]) -> None:
        self.ops.append((op, table, target, values))
        change = self.changes[table]
        if op == "insert":
            change.inserted += 1
        elif op == "update":
            change.updated += 1
        else:
            change.deleted += 1


Held = dict[str, dict[int, dict[Any, dict[str, Any]]]]  # table -> event id -> key -> row


def _reprocess_batch(
    conn: Connection,
    items: list[Reclassified],
    report: ReplayReport,
    lost: list[tuple[int, StatusReport]],
) -> None:
    held = _held_rows(conn, [item.event.id for item in items])
    affected: set[str] = set()
    changed: list[tuple[int, EventFields]] = []
    for item in items:
        fields = item.fields
        plan = _plan(conn, item, held)
        if plan.ops:
            try:
                with conn.begin_nested():
                    _apply(conn, plan, held)
            except Exception as err:
                if is_unavailable(err):
                    raise
                fields = failed_fields(fields, f"projection failed: {_describe(err)}")
                plan = _plan(conn, item._replace(rows=None), held)  # leave nothing behind
                with conn.begin_nested():
                    _apply(conn, plan, held)
        for name, change in plan.changes.items():
            report.changes[name].add(change)
        affected |= plan.affected
        lost.extend(plan.lost)
        report.note(item.event.id, item.event.status, fields)
        if fields != item.event.fields:
            changed.append((item.event.id, fields))
    _recompute_statuses(conn, affected, lost, report.changes[STATUS])
    update_events(conn, changed)


def _held_rows(conn: Connection, event_ids: list[int]) -> Held:
    """Rows each of these events is the source of, per table, keyed by natural key."""
    held: Held = {}
    for name in (*FIRST_WINS_KEYS, FLOW_SENDS):
        t = TABLES[name]
        by_event: dict[int, dict[Any, dict[str, Any]]] = held.setdefault(name, {})
        for row in conn.execute(select(t).where(t.c.source_event_id.in_(event_ids))):
            r = dict(row._mapping)
            key = r["message_id"] if name == FLOW_SENDS else key_of(name, r)
            by_event.setdefault(r["source_event_id"], {})[key] = r
    return held


def _differs(existing: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    return {col: value for col, value in row.items() if existing[col] != value}


def _plan(conn: Connection, item: Reclassified, held: Held) -> _Plan:
    """Compare the rows this event holds with what its body projects to now."""
    plan = _Plan()
    event_id = item.event.id
    new = item.rows.rows if item.rows else {}
    for name, key_cols in FIRST_WINS_KEYS.items():
        t = TABLES[name]
        mine = held[name].get(event_id, {})
        seen: set[tuple[Any, ...]] = set()
        for row in new.get(name, ()):
            key = key_of(name, row)
            if key in seen:
                continue  # a second record for the same key: the first one won
            seen.add(key)
            if name == DELIVERY and row["kind"] == "message":
                plan.affected.add(row["message_id"])
            existing = mine.get(key)
            if existing is not None:
                diff = _differs(existing, row)
                if diff:
                    plan.write("update", name, existing["id"], diff)
                else:
                    plan.changes[name].unchanged += 1
                continue
            match = and_(*(t.c[c] == v for c, v in zip(key_cols, key, strict=True)))
            if conn.execute(select(t.c.id).where(match)).first() is None:
                plan.write("insert", name, None, row)
            else:  # another event holds this key
                plan.changes[name].unchanged += 1
                report = report_from_history(row) if name == DELIVERY else None
                if report is not None:
                    plan.lost.append((event_id, report))
        for key, existing in mine.items():
            if key not in seen:
                plan.write("delete", name, existing["id"], {})
                if name == DELIVERY and existing["kind"] == "message":
                    plan.affected.add(existing["message_id"])
    _plan_flow_sends(conn, plan, event_id, new.get(FLOW_SENDS, []), held)
    return plan


def _plan_flow_sends(
    conn: Connection, plan: _Plan, event_id: int, rows: list[dict[str, Any]], held: Held
) -> None:
    fs = TABLES[FLOW_SENDS]
    mine = held[FLOW_SENDS].get(event_id, {})
    seen: set[str] = set()
    for row in rows:
        mid = row["message_id"]
        seen.add(mid)
        existing = mine.get(mid)
        if existing is None:
            found = conn.execute(select(fs).where(fs.c.message_id == mid)).first()
            existing = dict(found._mapping) if found else None
        if existing is None:
            plan.write("insert", FLOW_SENDS, None, row)
            continue
        if existing["send_status"] == SUBMITTED and existing["source_event_id"] == event_id:
            # This event created the row: it takes this event's values as parsed today.
            wanted = {col: row[col] for col in (*SUBMIT_FILL, "submitted_at")}
        else:  # the sender's row, or another event's: only fill in what it lacks
            wanted = merge_flow_send(existing, row)
        diff = _differs(existing, wanted)
        if diff:
            plan.write("update", FLOW_SENDS, existing["id"], diff)
        else:
            plan.changes[FLOW_SENDS].unchanged += 1
    for mid, existing in mine.items():
        if mid in seen:
            continue
        if existing["send_status"] == SUBMITTED:
            plan.write("delete", FLOW_SENDS, existing["id"], {})
        else:  # the sender's row stays; what this event filled in goes
            cleared = {"submitted_at": None, "source_event_id": None}
            plan.write("update", FLOW_SENDS, existing["id"], cleared)


def _apply(conn: Connection, plan: _Plan, held: Held) -> None:
    for op, name, row_id, values in plan.ops:
        t = TABLES[name]
        if op == "insert":
            # Another writer may have taken the key meanwhile: then it keeps it.
            conn.execute(upsert_insert(conn, t).values(values).on_conflict_do_nothing())
        elif op == "update":
            conn.execute(update(t).where(t.c.id == row_id).values(values))
            if name == FLOW_SENDS:  # a row another event of this batch holds
                for rows in held[FLOW_SENDS].values():
                    for row in rows.values():
                        if row["id"] == row_id:
                            row.update(values)
        else:
            conn.execute(delete(t).where(t.c.id == row_id))


def _recompute_statuses(
    conn: Connection,
    message_ids: Iterable[str],
    lost: list[tuple[int, StatusReport]],
    change: TableChanges,
) -> None:
    """message_status of these messages, folded again from their delivery history."""
    ids = sorted(message_ids)
    dr, ms = TABLES[DELIVERY], TABLES[STATUS]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        wanted = set(chunk)
        history = conn.execute(select(dr).where(dr.c.kind == "message", dr.c.message_id.in_(chunk)))
        ordered: list[tuple[int, int, int, StatusReport]] = []
        for row in history:
            r = report_from_history(dict(row._mapping))
            if r is not None:
                ordered.append((row.source_event_id or -1, 0, row.id, r))
        ordered += [(eid, 1, i, r) for i, (eid, r) in enumerate(lost) if r.message_id in wanted]
        ordered.sort(key=lambda entry: entry[:3])
        new: dict[str, StatusRow] = {}
        fold_status(new, (entry[3] for entry in ordered))
        old = {
            row.message_id: status_row_from_db(row)
            for row in conn.execute(select(ms).where(ms.c.message_id.in_(chunk)))
        }
        for mid in chunk:
            before, after = old.get(mid), new.get(mid)
            if before == after:
                change.unchanged += before is not None
            elif before is None:
                assert after is not None
                conn.execute(insert(ms).values(after.as_dict()))
                change.inserted += 1
            elif after is None:
                conn.execute(delete(ms).where(ms.c.message_id == mid))
                change.deleted += 1
            else:
                diff = _differs(before.as_dict(), after.as_dict())
                conn.execute(update(ms).where(ms.c.message_id == mid).values(diff))
                change.updated += 1
