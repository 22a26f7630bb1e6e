"""Fill a migrated database with N stored callbacks fast (COPY / executemany, not HTTP).

The events are simulated traffic (webhook.replay.simulate, its own seed and an earlier date,
so no body collides with the benchmark's), parsed by the service's own classify(),
and written with their projections: callback_events, delivery_reports,
message_status, flow_sends, inbound_messages and flow_responses, as ingest would
leave them. Used by bench/run.py for the "N events already stored" runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import multiprocessing
import shutil
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from sqlalchemy.engine import make_url
from webhook.projections import STAGE_COLUMNS, STATUS_RANKS, derive_status

from webhook.ingest.append import classify
from webhook.ingest.records import (
    DeliveryReportRecord,
    FlowResponseRecord,
    FlowSendRecord,
    InboundMessageRecord,
)
from webhook.ingest.signing import sign_headers
from webhook.replay.simulate import SimulationConfig, iter_bodies

EVENT_COLS = ("id", "body", "body_sha256", "headers", "received_at", "trigger", "app_id",
              "project_id", "event_time", "correlation_id", "status", "processed_at")  # fmt: skip
STATUS_COLS = ("message_id", "status", "status_rank", *STAGE_COLUMNS.values(),
               "failed_after_delivery", "reason_code", "contact_id", "conversation_id",
               "updated_at")  # fmt: skip


@functools.cache
def _fields(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _values(record: Any) -> tuple[Any, ...]:
    return tuple(getattr(record, name) for name in _fields(type(record)))


REPORT_COLS = (*_fields(DeliveryReportRecord), "received_at", "source_event_id")
INBOUND_COLS = (*_fields(InboundMessageRecord), "source_event_id")
FLOW_RESPONSE_COLS = (*_fields(FlowResponseRecord), "source_event_id")
FLOW_SEND_COLS = (*_fields(FlowSendRecord), "send_status", "source_event_id")


@dataclasses.dataclass
class Rows:
    events: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    reports: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    inbound: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    flow_responses: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    flow_sends: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    status: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def tables(self) -> Iterator[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]]:
        yield "callback_events", EVENT_COLS, self.events
        yield "delivery_reports", REPORT_COLS, self.reports
        yield "inbound_messages", INBOUND_COLS, self.inbound
        yield "flow_responses", FLOW_RESPONSE_COLS, self.flow_responses
        yield "flow_sends", FLOW_SEND_COLS, self.flow_sends
        statuses = [tuple(s[c] for c in STATUS_COLS) for s in self.status.values()]
        yield "message_status", STATUS_COLS, statuses


def _merge_status(rows: Rows, r: DeliveryReportRecord, received_at: datetime) -> None:
    """What the message_status upserts leave after these reports (mirrors upsert_status)."""
    stage = STAGE_COLUMNS.get(r.status)
    if stage is None:
        return
    seen_at = r.event_time or received_at
    row = rows.status.get(r.message_id)
    if row is None:
        row = {c: None for c in STATUS_COLS}
        row.update(message_id=r.message_id, updated_at=received_at)
        rows.status[r.message_id] = row
    if row[stage] is None or seen_at < row[stage]:
        row[stage] = seen_at
    if r.status == "FAILED":
        row["reason_code"] = r.reason_code
    row["contact_id"] = max(filter(None, (row["contact_id"], r.contact_id)), default=None)
    row["conversation_id"] = max(
        filter(None, (row["conversation_id"], r.conversation_id)), default=None
    )
    row["updated_at"] = max(row["updated_at"], received_at)
    status = derive_status({c: row[c] is not None for c in STAGE_COLUMNS.values()})
    row["status"], row["status_rank"] = status, STATUS_RANKS[status]
    delivered = status in {"READ", "DELIVERED"}
    row["failed_after_delivery"] = row["failed_at"] is not None and delivered


def build_rows(count: int, seed: int, secret: str, first_id: int = 1) -> Rows:
    """Simulate ``count`` distinct callbacks and turn them into the rows ingest writes."""
    cfg = SimulationConfig(
        messages=count // 3 + 10,
        seed=seed,
        duplicate_rate=0.0,
        start=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=seed % 1000),
        spacing_seconds=0.2,
    )
    rows = Rows()
    seen: set[bytes] = set()
    for body in iter_bodies(cfg):
        if len(rows.events) >= count:
            break
        digest = hashlib.sha256(body).digest()
        if digest in seen:
            continue
        seen.add(digest)
        event_id = first_id + len(rows.events)
        payload = orjson.loads(body)
        outcome = classify(payload)
        assert outcome.parsed is not None
        env = outcome.parsed.envelope
        received_at = (env.event_time or cfg.start) + timedelta(seconds=1)
        headers = sign_headers(secret, body, f"{seed:x}{event_id:020x}", 1735689600 + event_id)
        rows.events.append((event_id, body, digest.hex(), headers, received_at,
                            outcome.trigger, env.app_id, env.project_id, env.event_time,
                            env.correlation_id, outcome.status, received_at))  # fmt: skip
        for rec in outcome.parsed.records:
            values = _values(rec)
            if isinstance(rec, DeliveryReportRecord):
                rows.reports.append((*values, received_at, event_id))
                if rec.kind == "message":
                    _merge_status(rows, rec, received_at)
            elif isinstance(rec, InboundMessageRecord):
                rows.inbound.append((*values, event_id))
            elif isinstance(rec, FlowResponseRecord):
                rows.flow_responses.append((*values, event_id))
            elif isinstance(rec, FlowSendRecord):
                rows.flow_sends.append((*values, "submitted", event_id))
    if len(rows.events) < count:
        raise RuntimeError(f"simulation gave only {len(rows.events)} events")
    return rows


def _copy_value(value: Any) -> str:
    """One value in PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        value = orjson.dumps(value).decode()
    text = str(value)
    if any(c in text for c in "\\\t\n\r"):
        text = (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                .replace("\r", "\\r"))  # fmt: skip
    return text


@dataclasses.dataclass
class Chunk:
    """One chunk ready to load: COPY text for PostgreSQL, plain tuples for SQLite."""

    count: int
    copy: list[tuple[str, tuple[str, ...], bytes]]
    sqlite: list[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]]


def _build_chunk(args: tuple[int, int, int, str, bool, bool]) -> Chunk:
    count, seed, first_id, secret, want_pg, want_sqlite = args
    rows = build_rows(count, seed, secret, first_id)
    copy, lite = [], []
    for table, cols, data in rows.tables():
        if want_pg:
            text = "".join("\t".join(map(_copy_value, row)) + "\n" for row in data)
            copy.append((table, cols, text.encode()))
        if want_sqlite:
            lite.append((table, cols, [tuple(map(_sqlite_value, row)) for row in data]))
    return Chunk(len(rows.events), copy, lite)


TABLE_COLUMNS = (
    ("callback_events", EVENT_COLS),
    ("delivery_reports", REPORT_COLS),
    ("inbound_messages", INBOUND_COLS),
    ("flow_responses", FLOW_RESPONSE_COLS),
    ("flow_sends", FLOW_SEND_COLS),
    ("message_status", STATUS_COLS),
)
CACHE = Path(__file__).resolve().parent / "results" / "cache"
_ROOT = Path(__file__).resolve().parent.parent


def cache_dir(count: int, seed: int) -> Path:
    """Where the rows for (count, seed) are kept; a new key whenever their sources change."""
    digest = hashlib.sha256()
    modules = ("simulate", "callbacks", "signing", "ingest", "projections", "models")
    sources = [_ROOT / "bench" / "preload.py", *(_ROOT / "webhook" / f"{m}.py" for m in modules),
               *sorted((_ROOT / "migrations" / "versions").glob("*.py"))]  # fmt: skip
    for path in sources:
        digest.update(path.read_bytes())
    return CACHE / f"stored-{count}-{seed}-{digest.hexdigest()[:12]}"


class PostgresLoader:
    """COPY every chunk inside one transaction; VACUUM ANALYZE at the end."""

    def __init__(self, url: str, save_to: Path | None = None) -> None:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.conn = psycopg.connect(dsn)
        self.save_to = save_to

    def load(self, chunk: Chunk) -> None:
        with self.conn.cursor() as cur:
            for table, cols, data in chunk.copy:
                with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                    copy.write(data)
                if self.save_to is not None:
                    with (self.save_to / f"{table}.copy").open("ab") as out:
                        out.write(data)

    def load_cached(self, source: Path) -> None:
        with self.conn.cursor() as cur:
            for table, cols in TABLE_COLUMNS:
                with (cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy,
                      (source / f"{table}.copy").open("rb") as data):  # fmt: skip
                    while block := data.read(1 << 22):
                        copy.write(block)

    def finish(self, last_id: int) -> None:
        self.conn.execute(
            "SELECT setval(pg_get_serial_sequence('callback_events', 'id'), %s)", (last_id,)
        )
        self.conn.commit()
        self.conn.autocommit = True
        # A settled database: visibility map set, statistics current, no autovacuum due.
        self.conn.execute("VACUUM ANALYZE")
        self.conn.close()
        if self.save_to is not None:
            (self.save_to / "pg.done").touch()


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):  # SQLAlchemy's SQLite storage format, naive UTC
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


class SqliteLoader:
    """executemany every chunk inside one transaction; ANALYZE and checkpoint at the end."""

    def __init__(self, url: str, save_to: Path | None = None) -> None:
        path = make_url(url).database
        assert path
        self.path = Path(path)
        self.save_to = save_to
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("BEGIN")

    def load(self, chunk: Chunk) -> None:
        for table, cols, data in chunk.sqlite:
            marks = ", ".join("?" * len(cols))
            self.conn.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", data)

    def load_cached(self, source: Path) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(source / "sqlite.db", self.path)
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("BEGIN")

    def finish(self, last_id: int) -> None:
        self.conn.execute("COMMIT")
        self.conn.execute("ANALYZE")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()
        if self.save_to is not None:
            shutil.copyfile(self.path, self.save_to / "sqlite.db")
            (self.save_to / "sqlite.done").touch()


def preload(urls: list[str], count: int, seed: int, secret: str, chunk: int = 25_000,
            use_cache: bool = True) -> dict[str, float]:  # fmt: skip
    """Store ``count`` events with projections in every database of ``urls``; return timings.

    Chunks are simulated in worker processes (each its own seed, so messages never span
    chunks) while the main process loads the previous one. The rows are kept under
    bench/results/cache, so the next run only loads them.
    """
    t0 = time.monotonic()
    cache = cache_dir(count, seed) if use_cache else None
    loaders: list[PostgresLoader | SqliteLoader] = []
    fresh: list[PostgresLoader | SqliteLoader] = []
    for url in urls:
        lite = make_url(url).get_backend_name() == "sqlite"
        done = cache is not None and (cache / ("sqlite.done" if lite else "pg.done")).exists()
        save_to = cache if cache is not None and not done else None
        if save_to is not None:
            save_to.mkdir(parents=True, exist_ok=True)
            for name in ("sqlite.db",) if lite else [f"{t}.copy" for t, _ in TABLE_COLUMNS]:
                (save_to / name).unlink(missing_ok=True)
        loader = SqliteLoader(url, save_to) if lite else PostgresLoader(url, save_to)
        loaders.append(loader)
        if done:
            assert cache is not None
            loader.load_cached(cache)
        else:
            fresh.append(loader)
    if fresh:
        want_pg = any(isinstance(x, PostgresLoader) for x in fresh)
        want_sqlite = any(isinstance(x, SqliteLoader) for x in fresh)
        jobs = [(min(chunk, count - start), seed * 10_000 + i, start + 1, secret, want_pg,
                 want_sqlite) for i, start in enumerate(range(0, count, chunk))]  # fmt: skip
        with multiprocessing.get_context("fork").Pool(2) as pool:
            for built in pool.imap(_build_chunk, jobs):
                for loader in fresh:
                    loader.load(built)
    t1 = time.monotonic()
    for loader in loaders:
        loader.finish(count)
    return {"load_s": t1 - t0, "settle_s": time.monotonic() - t1, "cached": float(not fresh)}
