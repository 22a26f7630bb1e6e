"""What a replay did (counts per status and per table, for reports and dry runs), and
the two helpers rebuild and reprocess share: storing events' new status, and telling
a database that is gone from one that refuses some rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from sqlalchemy import Connection, Table, bindparam, update

from webhook.events_query import EVENTS
from webhook.ingest import UNAVAILABLE_ERRORS
from webhook.models import Base
from webhook.replay_rows import PROJECTION_TABLES, EventFields

FAILURES_LISTED = 20
TABLES: dict[str, Table] = {name: Base.metadata.tables[name] for name in PROJECTION_TABLES}
Progress = Callable[[int], None]


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

    def note(self, event_id: int, old_status: str, fields: EventFields) -> None:
        self.events += 1
        self.statuses[fields.status] += 1
        if fields.status != old_status:
            self.transitions[(old_status, fields.status)] += 1
        if fields.status == "failed":
            self.failed += 1
            if len(self.failures) < FAILURES_LISTED:
                self.failures.append(Failure(event_id, fields.trigger, fields.error or ""))


_UNAVAILABLE = (*UNAVAILABLE_ERRORS, psycopg.OperationalError, psycopg.InterfaceError)


def is_unavailable(err: BaseException) -> bool:
    """The database is gone (stop), as opposed to refusing these rows (replay slowly)."""
    return isinstance(err, _UNAVAILABLE)


def update_events(conn: Connection, changed: Iterable[tuple[int, EventFields]]) -> None:
    """Store new trigger, status, error and envelope fields for these events."""
    now = datetime.now(UTC)
    params = [
        {**{f"b_{k}": v for k, v in fields._asdict().items()}, "b_id": event_id}
        for event_id, fields in changed
    ]
    if not params:
        return
    stmt = (
        update(EVENTS)
        .where(EVENTS.c.id == bindparam("b_id"))
        .values({**{n: bindparam(f"b_{n}") for n in EventFields._fields}, "processed_at": now})
    )
    conn.execute(stmt, params)
