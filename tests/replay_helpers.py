"""Helpers for the replay tests: table snapshots and a varied stream of callbacks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Engine, Text, cast, event, select, text

from tests.helpers import FIXTURES
from webhook.db.models import Base
from webhook.projection.rules import PROJECTION_TABLES
from webhook.replay.simulate import SimulationConfig, simulate

SNAPSHOT_TABLES = ("callback_events", *PROJECTION_TABLES)


def snapshot(
    engine: Engine, tables: tuple[str, ...] = SNAPSHOT_TABLES, by_digest: bool = False
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of each table, sorted, without surrogate ids; JSON as text.

    by_digest: name source events by their body digest instead of their id, for
    comparing two databases whose events got different ids.
    """
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        digests: dict[int, str] = {}
        if by_digest:
            digests = dict(conn.execute(text("SELECT id, body_sha256 FROM callback_events")).all())  # type: ignore[arg-type]
        for name in tables:
            t = Base.metadata.tables[name]
            # processed_at is when the projector got to the event: not data to compare.
            cols = [c for c in t.columns if c.name not in ("id", "processed_at")]
            exprs = [cast(c, Text) if isinstance(c.type, JSON) else c for c in cols]
            rows = []
            for row in conn.execute(select(*exprs)):
                values = list(row)
                for i, c in enumerate(cols):
                    if c.name == "source_event_id" and by_digest and values[i] is not None:
                        values[i] = digests[values[i]]
                    if isinstance(values[i], memoryview):
                        values[i] = bytes(values[i])
                    if c.name in {"response", "request_body", "headers", "rows_affected"} and (
                        values[i] is not None
                    ):
                        values[i] = json.loads(values[i])  # SQLite keeps the text as written
                        values[i] = json.dumps(values[i], sort_keys=True)
                rows.append(tuple(values))
            out[name] = sorted(rows, key=repr)
    return out


def relax_durability(engine: Engine) -> None:
    """Skip the fsync per commit: tests that ingest thousands of callbacks run in seconds."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        if engine.dialect.name == "sqlite":
            cur.execute("PRAGMA synchronous=OFF")
        else:
            cur.execute("SET synchronous_commit TO off")
        cur.close()
        if engine.dialect.name != "sqlite":
            dbapi_conn.commit()


def _envelope(key: str, payload: dict[str, Any], at: str) -> bytes:
    doc = {"app_id": "APP", "project_id": "PRJ", "event_time": at, key: payload}
    return json.dumps(doc, separators=(",", ":")).encode()


def report(message_id: str, status: str, at: str, code: str | None = None, **extra: Any) -> bytes:
    payload: dict[str, Any] = {
        "message_id": message_id,
        "status": status,
        "channel_identity": {"channel": "WHATSAPP", "identity": "+55 11 90000-0001"},
        "contact_id": extra.pop("contact_id", "C1"),
        **extra,
    }
    if code:
        payload["reason"] = {"code": code}
    return _envelope("message_delivery_report", payload, at)


def awkward_bodies() -> list[bytes]:
    """Callbacks that exercise the corners: lattice edge cases, failures, key clashes."""
    return [
        # FAILED after DELIVERED: failed_after_delivery.
        report("EDGE1", "DELIVERED", "2026-03-01T10:00:01Z"),
        report("EDGE1", "FAILED", "2026-03-01T10:00:02Z", "RECIPIENT_NOT_REACHABLE"),
        # FAILED without a code, a channel switch with one, then a coded FAILED on
        # another channel: the reason the lattice keeps depends on the order.
        report("EDGE2", "FAILED", "2026-03-01T10:00:03Z"),
        report("EDGE2", "SWITCHING_CHANNEL", "2026-03-01T10:00:04Z", "ZZZ_SWITCH"),
        report(
            "EDGE2",
            "FAILED",
            "2026-03-01T10:00:05Z",
            "AAA_FAILED",
            channel="SMS",
            channel_identity={"channel": "SMS", "identity": "5511900000001"},
        ),
        # Same (message, status, channel), different bytes: history keeps the first,
        # message_status merges both.
        report("EDGE3", "READ", "2026-03-01T10:00:09Z", contact_id="C9"),
        report("EDGE3", "READ", "2026-03-01T10:00:07Z", contact_id="C2"),
        # An unknown status stays in the history only.
        report("EDGE4", "SOMETHING_NEW", "2026-03-01T10:00:06Z"),
        # Parse failure: stored as failed.
        _envelope("message_delivery_report", {"message_id": "EDGE5"}, "2026-03-01T10:00:08Z"),
        # Too long for message_id VARCHAR(64): PostgreSQL refuses the projection.
        report("X" * 80, "DELIVERED", "2026-03-01T10:00:10Z"),
        # Bad timestamp inside a known trigger: failed.
        _envelope("message", {"id": "EDGE6", "accept_time": "yesterday"}, "2026-03-01T10:00:11Z"),
    ]


def varied_config(messages: int = 600, seed: int = 5) -> SimulationConfig:
    return SimulationConfig(
        messages=messages, seed=seed, shuffle="all", duplicate_rate=0.05, contacts=150,
        broken_response_rate=0.1, failure_rate=0.1,
        start=datetime(2026, 3, 1, 8, 0, tzinfo=UTC),
    )  # fmt: skip


def varied_stream(messages: int = 600, seed: int = 5) -> list[bytes]:
    """Simulated flows in random order with duplicates, every fixture, and the corners."""
    _, stream = simulate(varied_config(messages, seed))
    fixtures = [p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))]
    bodies = awkward_bodies()
    # Interleave so fixtures and corners land between the simulated callbacks.
    step = max(len(stream) // (len(fixtures) + len(bodies) + 1), 1)
    out: list[bytes] = []
    extra = fixtures + bodies
    for i, body in enumerate(stream):
        out.append(body)
        if i % step == 0 and extra:
            out.append(extra.pop(0))
    return out + extra
