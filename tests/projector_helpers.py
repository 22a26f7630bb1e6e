"""Helpers for the projector tests (tests/test_projector.py): pending events appended in
bulk, event outcomes, the projection snapshot, polling with a deadline."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select, text

from tests.replay_helpers import snapshot
from webhook.db.events import PENDING
from webhook.db.models import CallbackEvent
from webhook.ingest.append import body_digest
from webhook.ingest.body import load_body
from webhook.ingest.parsers import detect_trigger
from webhook.projection.rules import PROJECTION_TABLES

START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

# Valid JSON objects with a known trigger that the parser refuses: stored 'failed'.
BROKEN_BODIES: tuple[dict[str, Any], ...] = (
    {"message_delivery_report": {"status": "DELIVERED"}},  # no message_id
    {"message_delivery_report": {"message_id": "PM1", "status": ["READ"]}},
    {"message_delivery_report": "not an object"},
    {"message_delivery_report": {"message_id": "PM1", "status": "READ", "channel_identity": "WA"}},
    {"message_delivery_report": {"message_id": "PM2", "status": "FAILED",
                                 "reason": {"code": {"nested": 1}}}},
    {"message": {"id": "BAD1", "accept_time": "yesterday"}},
    {"message": {"contact_message": {}}},  # no id
    {"message_submit_notification": {"submitted_message": {}}},  # no message_id
    {"event_delivery_report": {"event_id": "E1"}},  # no status
)  # fmt: skip


def compact(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def projection_snapshot(engine: Engine, by_digest: bool = False) -> dict[str, Any]:
    """The rows of every projection table (webhook.projection.rules.PROJECTION_TABLES)."""
    return snapshot(engine, PROJECTION_TABLES, by_digest=by_digest)


def event_outcomes(engine: Engine) -> dict[str, tuple[str, str, str | None]]:
    """Each stored event by body digest: (trigger, status, error)."""
    c = CallbackEvent.__table__.c
    with engine.connect() as conn:
        found = conn.execute(select(c.body_sha256, c.trigger, c.status, c.error)).all()
    return {digest: (trigger, status, error) for digest, trigger, status, error in found}


def status_counts(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT status, COUNT(*) FROM callback_events GROUP BY status"))
        return Counter({status: int(n) for status, n in found})


def pending(engine: Engine) -> int:
    return status_counts(engine)[PENDING]


def received_times(count: int) -> list[datetime]:
    """One distinct receive time per event, fixed, so two databases hold the same rows."""
    return [START + timedelta(milliseconds=i) for i in range(count)]


def append_bulk(engine: Engine, bodies: Sequence[bytes], chunk: int = 2000) -> int:
    """Store these bodies as pending events, as webhook.ingest.append.append stores each one
    (same columns, same values), in a few multi-row INSERTs; how many were new.

    For tests that need thousands of pending events fast; duplicates are skipped.
    """
    seen: set[str] = set()
    rows = []
    for body, at in zip(bodies, received_times(len(bodies)), strict=True):
        digest = body_digest(body)
        if digest in seen:
            continue
        seen.add(digest)
        rows.append(
            {
                "body": body,
                "body_sha256": digest,
                "headers": None,
                "received_at": at,
                "trigger": detect_trigger(load_body(body)),
                "status": PENDING,
            }
        )
    with engine.begin() as conn:
        for start in range(0, len(rows), chunk):
            conn.execute(insert(CallbackEvent.__table__), rows[start : start + chunk])
    return len(rows)


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def digests(bodies: Iterable[bytes]) -> set[str]:
    return {body_digest(b) for b in bodies}
