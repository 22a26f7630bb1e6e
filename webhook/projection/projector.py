"""The projector: folds stored callback events into the typed tables.

The endpoint only appends events (status ``pending``, webhook.ingest.append). This module
is the one writer of the projection tables for callbacks. Live projection, `flask
events project`, reprocess and rebuild all come here:

    claim a batch of events -> parse each (webhook.projection.rules, pure)
    -> fold the batch per key in Python (one rule per table)
    -> lock the keys whose rows are merged, read those rows, merge
    -> one multi-row upsert per table (SQLAlchemy Core, insertmanyvalues)
    -> set each event's status (processed, ignored, failed) -> COMMIT

Claiming: on PostgreSQL ``FOR UPDATE SKIP LOCKED``, so any number of projectors on
any number of hosts share the pending events, each projected once. Rows merged
across events (flow_sends, message_status) are read and written under transaction
advisory locks on their keys, taken in sorted order. On SQLite one projector runs at
a time (an flock on ``<db>-projector``), and it parses before taking the write lock.

A batch the database refuses is rolled back to a savepoint and split in halves until
the refused events are alone; such an event is marked ``failed`` with the error (and
if even that is refused, stored bare: status and error only). A database that is gone
raises (is_unavailable): nothing of the batch is committed and its events stay
pending, so a kill -9 at any point loses nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    func,
    select,
    text,
    update,
)

from webhook.db.engine import file_lock, upsert_insert, write_lock
from webhook.db.errors import describe_error, is_unavailable
from webhook.db.events import EVENTS, FAILED, IGNORED, PENDING, PROCESSED, EventFields, read_batch
from webhook.db.models import Base
from webhook.projection.limits import within_limits
from webhook.projection.rules import (
    FILL,
    FIRST_WINS,
    FLOW_SENDS,
    LATTICE,
    PROJECTIONS,
    STATUS,
    STATUS_COLUMNS,
    Folded,
    Parsed,
    StatusRow,
    columns_of,
    failed,
    fold,
    merge_send,
    merge_status,
    parse_event,
)

log = logging.getLogger("webhook.projector")

TABLES: dict[str, Table] = {p.table: Base.metadata.tables[p.table] for p in PROJECTIONS}
# Events one live projection transaction takes at most.
BATCH_SIZE = 500
_CHUNK = 1000  # keys per IN (...) when reading rows to merge
_NO_END = 2**62  # no upper bound on event ids


# ---------------------------------------------------------------- writing a batch


def project(conn: Connection, events: Sequence[Parsed]) -> list[Parsed]:
    """Write the rows of these parsed events and set their statuses; never commits.

    Returns each event as finally stored (a refused one marked failed). A batch the
    database refuses is split in halves, each tried again in its own savepoint, so one
    bad event among thousands costs a few retries, not one round per event. Raises
    only when the database is unavailable (nothing of the batch is then kept).
    """
    if not events:
        return []
    events = [within_limits(event) for event in events]
    try:
        with conn.begin_nested():
            write_rows(conn, fold(events))
            set_statuses(conn, events)
        return list(events)
    except Exception as err:
        if is_unavailable(err):
            raise
        if len(events) == 1:
            return [_mark_failed(conn, events[0], err)]
    half = len(events) // 2
    return project(conn, events[:half]) + project(conn, events[half:])


def _mark_failed(conn: Connection, event: Parsed, err: Exception) -> Parsed:
    """An event the database refuses: failed with the error, its rows left out."""
    event = failed(event, f"projection failed: {describe_error(err)}")
    try:
        with conn.begin_nested():
            set_statuses(conn, [event])
        return event
    except Exception as again:
        if is_unavailable(again):
            raise
    # The database refuses even the envelope fields (say NUL in app_id): store it bare.
    f = event.fields
    event = event._replace(fields=EventFields(f.trigger, f.status, f.error, *([None] * 4)))
    with conn.begin_nested():
        set_statuses(conn, [event])
    return event


def write_rows(conn: Connection, folded: Folded) -> None:
    """Merge a folded batch into the tables: one upsert per table."""
    pg = conn.dialect.name == "postgresql"
    merged_keys = [f"{STATUS}:{m}" for m in folded.statuses]
    merged_keys += [f"{FLOW_SENDS}:{k[0]}" for k in folded.rows[FLOW_SENDS]]
    if pg and merged_keys:
        _lock_keys(conn, merged_keys)
    for p in PROJECTIONS:
        if p.rule == FIRST_WINS:
            rows = [folded.rows[p.table][k] for k in sorted(folded.rows[p.table], key=_sortable)]
            upsert_rows(conn, p.table, rows, first_wins=True)
        elif p.rule == FILL:
            _write_sends(conn, folded.rows[p.table])
        elif p.rule == LATTICE:
            _write_statuses(conn, folded.statuses)


def _sortable(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if part is None else str(part) for part in key)


def _lock_keys(conn: Connection, keys: Iterable[str]) -> None:
    """Transaction advisory locks on these keys, in one order for every projector."""
    ids = sorted({_lock_id(k) for k in keys})
    conn.execute(
        text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:ids AS BIGINT[])) AS k"),
        {"ids": ids},
    )


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def _write_sends(conn: Connection, rows: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    if not rows:
        return
    t = TABLES[FLOW_SENDS]
    ids = sorted(k[0] for k in rows)
    existing: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), _CHUNK):
        query = select(t).where(t.c.message_id.in_(ids[start : start + _CHUNK]))
        existing.update((r.message_id, dict(r._mapping)) for r in conn.execute(query))
    cols = columns_of(FLOW_SENDS)
    out = []
    for mid in ids:
        row, have = rows[(mid,)], existing.get(mid)
        if have is not None:
            row = merge_send(have, row)
            if all(row[c] == have[c] for c in cols):
                continue
        out.append({c: row[c] for c in cols})
    upsert_rows(conn, FLOW_SENDS, out)


def _write_statuses(conn: Connection, statuses: dict[str, StatusRow]) -> None:
    if not statuses:
        return
    t = TABLES[STATUS]
    ids = sorted(statuses)
    existing: dict[str, StatusRow] = {}
    for start in range(0, len(ids), _CHUNK):
        query = select(*(t.c[c] for c in STATUS_COLUMNS)).where(
            t.c.message_id.in_(ids[start : start + _CHUNK])
        )
        existing.update((r.message_id, StatusRow(*r)) for r in conn.execute(query))
    out = []
    for mid in ids:
        have = existing.get(mid)
        row = merge_status(have, statuses[mid])
        if row != have:
            out.append(row._asdict())
    upsert_rows(conn, STATUS, out)


_UPSERTS: dict[tuple[str, str, bool], Any] = {}


def upsert_rows(
    conn: Connection, table: str, rows: list[dict[str, Any]], first_wins: bool = False
) -> None:
    """INSERT ... ON CONFLICT (key) DO UPDATE, every row in one executemany.

    SQLAlchemy's insertmanyvalues sends the rows as multi-row VALUES statements (1000
    rows each). First-wins tables replace a row only with one from a lower or equal
    event id, and never a row whose source event is gone (NULL): the lowest event id
    holding a key keeps it, whatever order events are projected in.
    """
    if not rows:
        return
    dialect = conn.dialect.name
    stmt = _UPSERTS.get((dialect, table, first_wins))
    if stmt is None:
        stmt = _UPSERTS[(dialect, table, first_wins)] = _upsert_statement(
            dialect, table, first_wins
        )
    conn.execute(stmt, rows)


def _upsert_statement(dialect: str, table: str, first_wins: bool) -> Any:
    t = TABLES[table]
    stmt = upsert_insert(dialect, t)
    key = next(p.key for p in PROJECTIONS if p.table == table)
    x = stmt.excluded
    set_ = {c: x[c] for c in columns_of(table) if c not in key}
    where = None
    if first_wins:
        where = and_(
            t.c.source_event_id.is_not(None),
            x.source_event_id.is_not(None),
            x.source_event_id <= t.c.source_event_id,
        )
    # No RETURNING: the rows go as one prepared statement through psycopg's executemany
    # (pipelined), measured faster than SQLAlchemy's multi-row VALUES pages, whose long
    # query text psycopg must parse again for every page.
    return stmt.on_conflict_do_update(index_elements=list(key), set_=set_, where=where)


def set_statuses(conn: Connection, events: Sequence[Parsed]) -> None:
    """Store each event's status, error and envelope fields where they changed."""
    now = datetime.now(UTC)
    params = [
        {**{f"b_{k}": v for k, v in e.fields._asdict().items()}, "b_id": e.id, "b_at": now}
        for e in events
        if e.fields != e.before
    ]
    if params:
        conn.execute(_STATUS_UPDATE, params)


_STATUS_UPDATE = (
    update(EVENTS)
    .where(EVENTS.c.id == bindparam("b_id"))
    .values(
        {**{n: bindparam(f"b_{n}") for n in EventFields._fields}, "processed_at": bindparam("b_at")}
    )
)


# ---------------------------------------------------------------- claiming pending events


@dataclass
class Progress:
    """What projection did: events by final status."""

    processed: int = 0
    ignored: int = 0
    failed: int = 0

    @property
    def events(self) -> int:
        return self.processed + self.ignored + self.failed

    def note(self, events: Iterable[Parsed]) -> None:
        for e in events:
            status = e.fields.status
            self.processed += status == PROCESSED
            self.ignored += status == IGNORED
            self.failed += status == FAILED

    def add(self, other: Progress) -> None:
        self.processed += other.processed
        self.ignored += other.ignored
        self.failed += other.failed

    def as_fields(self) -> dict[str, int]:
        return {"processed": self.processed, "ignored": self.ignored, "failed": self.failed}


Listener = Callable[[list[Parsed]], None]
_listeners: list[Listener] = []


def on_projected(listener: Listener) -> None:
    """Call ``listener`` with every committed batch (metrics and logs hook in here)."""
    _listeners.append(listener)


def project_pending(engine: Engine, limit: int = BATCH_SIZE) -> list[Parsed]:
    """Claim up to ``limit`` pending events, project them, commit; the events projected."""
    return project_where(engine, EVENTS.c.status == PENDING, limit)


def project_where(
    engine: Engine, where: Any, limit: int, lock: bool | str = "skip"
) -> list[Parsed]:
    if engine.dialect.name == "sqlite":
        with file_lock(engine, "projector"):  # SQLite: one projector at a time
            with engine.connect() as conn:
                conn.execution_options(sqlite_begin="DEFERRED")  # a read: no write lock
                with conn.begin():
                    events = read_batch(conn, where, 0, _NO_END, limit)
            parsed = [parse_event(e) for e in events]
            if not parsed:
                return []
            with write_lock(engine), engine.begin() as conn:
                done = project(conn, parsed)
    else:
        with engine.begin() as conn:
            events = read_batch(conn, where, 0, _NO_END, limit, lock=lock)
            if not events:
                return []
            done = project(conn, [parse_event(e) for e in events])
    for event in done:
        if event.fields.status == FAILED:
            fields = {"event_id": event.id, "trigger": event.fields.trigger}
            log.warning("event %s could not be projected: %s", event.id, event.fields.error,
                        extra={"fields": fields})  # fmt: skip
    log.debug("projected %s events", len(done))
    for listener in _listeners:
        listener(done)
    return done


def drain(engine: Engine, limit: int = BATCH_SIZE) -> Progress:
    """Project every pending event (batch after batch) until none is left."""
    progress = Progress()
    while batch := project_pending(engine, limit):
        progress.note(batch)
    return progress


def pending_summary(conn: Connection) -> tuple[int, datetime | None]:
    """How many events are pending, and when the oldest was received."""
    c = EVENTS.c
    count, oldest = conn.execute(
        select(func.count(), func.min(c.received_at)).where(c.status == PENDING)
    ).one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(count), oldest
