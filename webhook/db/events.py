"""The stored events (callback_events): their states, filters, and batched reads in id
order (and claims, for the projector)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, func, select, true

from webhook.db.models import Base

EVENTS: Table = Base.metadata.tables["callback_events"]

# The life of a stored event (callback_events.status): appended 'pending', then
# 'processed' (projected), 'ignored' (unknown trigger) or 'failed' (with its error).
PENDING, PROCESSED, IGNORED, FAILED = "pending", "processed", "ignored", "failed"


class EventFields(NamedTuple):
    """The callback_events columns that parsing a body decides."""

    trigger: str
    status: str
    error: str | None
    app_id: str | None
    project_id: str | None
    event_time: datetime | None
    correlation_id: str | None


class StoredEvent(NamedTuple):
    """A callback_events row as the projector reads it (body is None once pruned)."""

    id: int
    body: bytes | None
    received_at: datetime
    trigger: str
    status: str
    error: str | None
    app_id: str | None
    project_id: str | None
    event_time: datetime | None
    correlation_id: str | None

    @property
    def fields(self) -> EventFields:
        return EventFields(*self[3:])


STORED_EVENT_COLUMNS = StoredEvent._fields


@dataclass(frozen=True)
class EventFilter:
    """Which stored events a command works on; every given criterion must hold."""

    ids: tuple[int, ...] = ()
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before
    triggers: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()

    def clause(self) -> ColumnElement[bool]:
        c = EVENTS.c
        parts: list[ColumnElement[bool]] = []
        if self.ids:
            parts.append(c.id.in_(self.ids))
        if self.since is not None:
            parts.append(c.received_at >= self.since)
        if self.until is not None:
            parts.append(c.received_at < self.until)
        if self.triggers:
            parts.append(c.trigger.in_(self.triggers))
        if self.statuses:
            parts.append(c.status.in_(self.statuses))
        return and_(true(), *parts)


@dataclass(frozen=True, slots=True)
class Selection:
    """How many events a filter selects, and the id range to walk."""

    total: int
    pruned: int  # selected but without a body (removed by retention)
    min_id: int
    max_id: int

    @property
    def with_body(self) -> int:
        return self.total - self.pruned


def count_selection(conn: Connection, where: ColumnElement[bool]) -> Selection:
    c = EVENTS.c
    total, with_body, min_id, max_id = conn.execute(
        select(func.count(), func.count(c.body), func.min(c.id), func.max(c.id)).where(where)
    ).one()
    return Selection(int(total), int(total) - int(with_body), int(min_id or 0), int(max_id or 0))


def read_batch(
    conn: Connection,
    where: ColumnElement[bool],
    after_id: int,
    upto_id: int,
    limit: int,
    with_body: bool = True,
    lock: bool | str = False,
) -> list[StoredEvent]:
    """The next ``limit`` selected events with id in (after_id, upto_id], in id order.

    ``lock`` (PostgreSQL) locks them: True waits for rows another transaction holds,
    "skip" claims only the others (FOR UPDATE SKIP LOCKED), so concurrent projectors
    each take their own events. SQLite has no row locks (one writer at a time).
    """
    c = EVENTS.c
    query = (
        select(*(c[name] for name in STORED_EVENT_COLUMNS))
        .where(where, c.id > after_id, c.id <= upto_id)
        .order_by(c.id)
        .limit(limit)
    )
    if with_body:
        query = query.where(c.body.is_not(None))
    if lock:
        query = query.with_for_update(skip_locked=lock == "skip")
    if conn.dialect.name != "postgresql":
        return [StoredEvent(*row) for row in conn.execute(query)]
    if lock != "skip":  # a claim of pending events reads their partial index instead
        # Walk the primary key in order. Without this, statistics that lag behind a bulk
        # load make PostgreSQL fetch and sort every remaining row for each batch.
        conn.exec_driver_sql("SET LOCAL enable_sort = off")
    # Binary results: bodies arrive as bytes, not hex text (half the work both sides).
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor(binary=True) as cur:
        cur.execute(str(compiled), compiled.params)
        rows = cur.fetchall()
    # Aware datetimes come back in the session's time zone: replay compares in UTC.
    out = []
    for row in rows:
        event = StoredEvent._make(row)
        at = event.event_time
        out.append(
            event._replace(
                received_at=event.received_at.astimezone(UTC),
                event_time=at.astimezone(UTC) if at else None,
            )
        )
    return out


def iter_batches(
    engine: Engine, where: ColumnElement[bool], upto_id: int, limit: int, with_body: bool = True
) -> Iterator[list[StoredEvent]]:
    """Selected events in id order, one short read transaction per batch."""
    after = 0
    while True:
        with engine.connect() as conn:
            conn.execution_options(sqlite_begin="DEFERRED")  # a read: no write lock
            batch = read_batch(conn, where, after, upto_id, limit, with_body)
        if not batch:
            return
        yield batch
        after = batch[-1].id


T = TypeVar("T")
_DONE = object()


def prefetch(produce: Callable[[], Iterator[T]], depth: int = 2) -> Generator[T, None, None]:
    """Run ``produce`` in a thread, ``depth`` items ahead of the consumer.

    Replay reads and parses the next batch while the current one is being written;
    the database's time is not spent waiting on Python and the other way round.
    An exception in the producer is raised in the consumer; a consumer that stops
    early stops the producer.
    """
    items: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in produce():
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # handed to the consumer, raised there
            put(err)

    worker = threading.Thread(target=run, name="replay-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
