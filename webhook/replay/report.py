"""What a replay did (counts per status and per table, for reports and dry runs), and
the whole-table comparison that counts, per projection table, the rows a replay
inserted, updated, left unchanged and deleted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Table, func, select, text

from webhook.db.events import EventFields
from webhook.db.models import Base
from webhook.projection.rules import BY_TABLE, PROJECTION_TABLES

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

    def note(self, event_id: int, old_status: str, fields: EventFields) -> None:
        self.events += 1
        self.statuses[fields.status] += 1
        if fields.status != old_status:
            self.transitions[(old_status, fields.status)] += 1
        if fields.status == "failed":
            self.failed += 1
            if len(self.failures) < FAILURES_LISTED:
                self.failures.append(Failure(event_id, fields.trigger, fields.error or ""))


def _before(name: str) -> str:
    return f"replay_before_{name}"


def snapshot_tables(conn: Connection) -> None:
    """Copy each projection table into a temporary table (see drop_snapshot)."""
    for name in PROJECTION_TABLES:
        conn.execute(text(f"CREATE TEMPORARY TABLE {_before(name)} AS SELECT * FROM {name}"))


def drop_snapshot(conn: Connection) -> None:
    for name in PROJECTION_TABLES:
        conn.execute(text(f"DROP TABLE IF EXISTS {_before(name)}"))


def diff_tables(conn: Connection) -> dict[str, TableChanges]:
    """Per table: rows inserted, updated, unchanged and deleted since snapshot_tables."""
    distinct = "IS NOT" if conn.dialect.name == "sqlite" else "IS DISTINCT FROM"
    out: dict[str, TableChanges] = {}
    for name in PROJECTION_TABLES:
        keys = BY_TABLE[name].key
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
