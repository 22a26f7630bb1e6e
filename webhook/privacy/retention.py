"""Retention: `flask events prune`.

Raw callbacks are kept forever unless pruned. Pruning works in two horizons:

- older than ``--older-than`` days: the body is dropped (``body = NULL``,
  ``pruned_at`` set). ``body_sha256`` stays, so a late retry of the same body is
  still recognised as a duplicate and stores nothing.
- older than ``--delete-after`` days: the raw row itself is deleted. Projection rows
  keep all their data; their ``source_event_id`` becomes NULL (ON DELETE SET NULL).
  A retry arriving after that is stored again (projections are upserts, so it
  changes nothing there).

Work is done in batches, each in its own transaction, walking ids upwards so that no
row is read twice.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timedelta

import click
from sqlalchemy import Connection, Engine, delete, func, select, update

from webhook.db.events import FAILED, PENDING
from webhook.db.models import CallbackEvent as Event

BATCH_SIZE = 1000


@dataclass(frozen=True)
class PrunePlan:
    now: datetime
    prune_before: datetime
    delete_before: datetime | None
    bodies: int  # bodies to drop (rows that are not deleted)
    failed_bodies: int  # of which in status failed: they can no longer be reprocessed
    deletes: int  # raw rows to delete


def _horizon(now: datetime, days: int) -> datetime:
    return now - timedelta(days=days)


def plan_prune(
    conn: Connection, now: datetime, older_than_days: int, delete_after_days: int | None
) -> PrunePlan:
    """Count what a prune would change, changing nothing."""
    prune_before = _horizon(now, older_than_days)
    delete_before = _horizon(now, delete_after_days) if delete_after_days is not None else None
    bodies = select(Event.status, func.count()).where(
        Event.received_at < prune_before, Event.body.is_not(None), Event.status != PENDING
    )
    if delete_before is not None:
        bodies = bodies.where(Event.received_at >= delete_before)
    by_status = {status: n for status, n in conn.execute(bodies.group_by(Event.status))}
    deletes = 0
    if delete_before is not None:
        count = select(func.count()).where(
            Event.received_at < delete_before, Event.status != PENDING
        )
        deletes = int(conn.execute(count).scalar_one())
    return PrunePlan(
        now=now,
        prune_before=prune_before,
        delete_before=delete_before,
        bodies=sum(by_status.values()),
        failed_bodies=by_status.get(FAILED, 0),
        deletes=deletes,
    )


def drop_bodies(
    conn: Connection, before: datetime, now: datetime, after_id: int = 0, limit: int = BATCH_SIZE
) -> tuple[int, int]:
    """Drop the bodies of up to ``limit`` events received before ``before``, ids above
    ``after_id``; return (rows changed, last id seen, or 0 when none are left)."""
    ids = (
        conn.execute(
            select(Event.id)
            .where(
                Event.id > after_id,
                Event.received_at < before,
                Event.body.is_not(None),
                Event.status != PENDING,  # not yet projected: the body is all there is
            )
            .order_by(Event.id)
            .limit(limit)
        )
        .scalars()
        .all()
    )
    if not ids:
        return 0, 0
    conn.execute(update(Event).where(Event.id.in_(ids)).values(body=None, pruned_at=now))
    return len(ids), ids[-1]


def delete_events(conn: Connection, before: datetime, limit: int = BATCH_SIZE) -> int:
    """Delete up to ``limit`` raw events received before ``before``; return how many."""
    ids = (
        conn.execute(
            select(Event.id)
            .where(Event.received_at < before, Event.status != PENDING)
            .order_by(Event.id)
            .limit(limit)
        )
        .scalars()
        .all()
    )
    if ids:
        conn.execute(delete(Event).where(Event.id.in_(ids)))
    return len(ids)


def run_prune(engine: Engine, plan: PrunePlan, batch_size: int = BATCH_SIZE) -> tuple[int, int]:
    """Apply a plan batch by batch (deletes first); return (bodies dropped, rows deleted)."""
    deleted = dropped = 0
    total = plan.deletes + plan.bodies
    with click.progressbar(length=total, label="pruning", file=sys.stderr) as bar:
        while plan.delete_before is not None:
            with engine.begin() as conn:
                n = delete_events(conn, plan.delete_before, batch_size)
            if not n:
                break
            deleted += n
            bar.update(n)
        last_id = 0
        while True:
            with engine.begin() as conn:
                n, last_id = drop_bodies(conn, plan.prune_before, plan.now, last_id, batch_size)
            if not n:
                break
            dropped += n
            bar.update(n)
    return dropped, deleted
