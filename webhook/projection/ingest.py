"""Append callbacks and project them at once: import, scripts and tests (the endpoint
only appends, and the projector catches up)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, select

from webhook.db.events import EVENTS, PENDING
from webhook.ingest.append import append
from webhook.projection.projector import BATCH_SIZE, project_where
from webhook.projection.rules import Parsed


def project_ids(engine: Engine, ids: Sequence[int]) -> list[Parsed]:
    """Project these events now if they are still pending (import, tests, scripts)."""
    done: list[Parsed] = []
    for start in range(0, len(ids), BATCH_SIZE):
        chunk = sorted(ids[start : start + BATCH_SIZE])
        where = and_(EVENTS.c.status == PENDING, EVENTS.c.id.in_(chunk))
        # Wait for a projector that has claimed some of them: they are done after it.
        done += project_where(engine, where, len(chunk), lock=True)
    return done


@dataclass(frozen=True, slots=True)
class IngestResult:
    """A callback appended and projected at once: its event and final status."""

    outcome: str  # ingest.STORED or ingest.DUPLICATE
    event_id: int | None
    trigger: str
    status: str | None  # processed, ignored or failed; None for a duplicate
    error: str | None = None


def ingest(
    engine: Engine,
    body: bytes,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
    received_at: datetime | None = None,
) -> IngestResult:
    """Append a callback and project it now (import, scripts and tests; the endpoint
    only appends). A duplicate body changes nothing."""
    appended = append(engine, body, payload, headers, received_at)
    if appended.event_id is None:
        return IngestResult(appended.outcome, None, appended.trigger, None)
    project_ids(engine, [appended.event_id])
    c = EVENTS.c
    with engine.connect() as conn:
        trigger, status, error = conn.execute(
            select(c.trigger, c.status, c.error).where(c.id == appended.event_id)
        ).one()
    return IngestResult(appended.outcome, appended.event_id, trigger, status, error)
