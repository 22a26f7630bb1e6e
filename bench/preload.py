"""Fill a migrated database with N stored callbacks: raw events fast, then the product projects.

1. The events: simulated traffic (webhook.replay.simulate, its own seed and an earlier date, so
   no body collides with the benchmark's), each signed, stored as the endpoint stores
   them (webhook.ingest.append: body, digest, signature headers, receive time, trigger,
   status 'pending'), loaded with COPY (PostgreSQL) or executemany (SQLite).
2. The projection: ``webhook.replay.rebuild`` (the projector's own code, with its
   parsing processes) folds every pending event into the typed tables. No projection
   rule lives here. Its time is the rebuild rate at N events.
3. VACUUM ANALYZE / ANALYZE: a settled database, as a long-running one would be.

The result (every table) is kept under bench/results/cache, keyed by the sources that
decide it, so the next run only copies it back. Used by bench/run.py.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.engine import make_url

from webhook.db.engine import make_engine
from webhook.db.events import PENDING
from webhook.db.models import Base
from webhook.ingest.parsers import detect_trigger
from webhook.ingest.signing import sign_headers, signature_headers
from webhook.replay.simulate import SimulationConfig, iter_bodies

# The columns the endpoint writes (webhook.ingest.append); the projector fills the rest.
EVENT_COLS = ("id", "body", "body_sha256", "headers", "received_at", "trigger", "status")
TABLES = tuple(Base.metadata.tables)  # every table, in dependency order
CACHE = Path(__file__).resolve().parent / "results" / "cache"
_ROOT = Path(__file__).resolve().parent.parent
# Every source that decides the stored rows: a change to any gives a new cache key.
_SOURCES = ("simulate", "callbacks", "signing", "ingest", "projection", "projector",
            "replay", "events_query", "models")  # fmt: skip


def build_events(count: int, seed: int, secret: str, first_id: int) -> list[tuple[Any, ...]]:
    """``count`` distinct simulated callbacks as callback_events rows, status pending."""
    cfg = SimulationConfig(
        messages=count // 3 + 10,
        seed=seed,
        duplicate_rate=0.0,
        start=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=seed % 1000),
        spacing_seconds=0.2,
    )
    rows: list[tuple[Any, ...]] = []
    seen: set[bytes] = set()
    for body in iter_bodies(cfg):
        if len(rows) >= count:
            break
        digest = hashlib.sha256(body).digest()
        if digest in seen:
            continue
        seen.add(digest)
        event_id = first_id + len(rows)
        received_at = cfg.start + timedelta(seconds=len(rows) * 0.07)
        nonce = f"{seed:x}{event_id:020x}"
        headers = signature_headers(sign_headers(secret, body, nonce, 1735689600 + event_id))
        trigger = detect_trigger(orjson.loads(body))
        rows.append((event_id, body, digest.hex(), headers, received_at, trigger, PENDING))
    if len(rows) < count:
        raise RuntimeError(f"simulation gave only {len(rows)} events")
    return rows


def _copy_value(value: Any) -> str:
    """One value in PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        value = orjson.dumps(value).decode()
    text_ = str(value)
    if any(c in text_ for c in "\\\t\n\r"):
        text_ = (text_.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                 .replace("\r", "\\r"))  # fmt: skip
    return text_


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):  # SQLAlchemy's SQLite storage format, naive UTC
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return value


@dataclass
class Chunk:
    count: int
    copy: bytes  # COPY text for PostgreSQL
    sqlite: list[tuple[Any, ...]]


def _build_chunk(args: tuple[int, int, int, str, bool, bool]) -> Chunk:
    count, seed, first_id, secret, want_pg, want_sqlite = args
    rows = build_events(count, seed, secret, first_id)
    copy = b""
    if want_pg:
        copy = "".join("\t".join(map(_copy_value, row)) + "\n" for row in rows).encode()
    lite = [tuple(map(_sqlite_value, row)) for row in rows] if want_sqlite else []
    return Chunk(len(rows), copy, lite)


def cache_dir(count: int, seed: int) -> Path:
    """Where the database for (count, seed) is kept; a new key whenever its sources change."""
    digest = hashlib.sha256()
    sources = [_ROOT / "bench" / "preload.py", *(_ROOT / "webhook" / f"{m}.py" for m in _SOURCES),
               *sorted((_ROOT / "migrations" / "versions").glob("*.py"))]  # fmt: skip
    for path in sources:
        digest.update(path.read_bytes())
    return CACHE / f"stored-{count}-{seed}-{digest.hexdigest()[:12]}"


def _pg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresLoader:
    name = "postgresql"

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.conn = psycopg.connect(_pg_dsn(url))

    def load(self, chunk: Chunk) -> None:
        with self.conn.cursor() as cur, cur.copy(
            f"COPY callback_events ({', '.join(EVENT_COLS)}) FROM STDIN"
        ) as copy:  # fmt: skip
            copy.write(chunk.copy)

    def loaded(self, last_id: int) -> None:
        self.conn.execute(
            "SELECT setval(pg_get_serial_sequence('callback_events', 'id'), %s)", (last_id,)
        )
        self.conn.commit()
        self.conn.autocommit = True
        self.conn.execute("ANALYZE callback_events")  # the projector's reads plan on it

    def save(self, target: Path) -> None:
        with self.conn.cursor() as cur:
            for table in TABLES:
                with (cur.copy(f"COPY {table} TO STDOUT (FORMAT binary)") as copy,
                      (target / f"{table}.copy").open("wb") as out):  # fmt: skip
                    for block in copy:
                        out.write(block)
        (target / f"{self.name}.done").touch()

    def restore(self, source: Path) -> None:
        with self.conn.cursor() as cur:
            for table in TABLES:
                with (cur.copy(f"COPY {table} FROM STDIN (FORMAT binary)") as copy,
                      (source / f"{table}.copy").open("rb") as data):  # fmt: skip
                    while block := data.read(1 << 22):
                        copy.write(block)
            for table in TABLES:
                if "id" in Base.metadata.tables[table].c:
                    cur.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT COALESCE(max(id), 0) + 1 FROM {table}), false)"
                    )
        self.conn.commit()
        self.conn.autocommit = True

    def settle(self) -> None:
        # Visibility map set, statistics current, no autovacuum due.
        self.conn.execute("VACUUM ANALYZE")

    def close(self) -> None:
        self.conn.close()


class SqliteLoader:
    name = "sqlite"

    def __init__(self, url: str) -> None:
        path = make_url(url).database
        assert path
        self.url = url
        self.path = Path(path)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("BEGIN")

    def load(self, chunk: Chunk) -> None:
        marks = ", ".join("?" * len(EVENT_COLS))
        self.conn.executemany(
            f"INSERT INTO callback_events ({', '.join(EVENT_COLS)}) VALUES ({marks})", chunk.sqlite
        )

    def loaded(self, last_id: int) -> None:
        self.conn.execute("COMMIT")
        self.conn.execute("ANALYZE")

    def save(self, target: Path) -> None:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copyfile(self.path, target / "sqlite.db")
        (target / "sqlite.done").touch()

    def restore(self, source: Path) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(source / "sqlite.db", self.path)
        self.conn = sqlite3.connect(self.path, isolation_level=None)

    def settle(self) -> None:
        self.conn.execute("ANALYZE")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self.conn.close()


def _pg_backend_cpu(url: str) -> float:
    """CPU seconds used so far by the server processes of this database (local server)."""
    import psycopg

    name = make_url(url).database
    ticks = 0
    with psycopg.connect(_pg_dsn(url), autocommit=True) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,))]  # fmt: skip
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def project_all(url: str, count: int, progress: Callable[[str], None] | None = None
                ) -> dict[str, Any]:  # fmt: skip
    """Project every pending event with webhook.replay.rebuild; timing and CPU."""
    from webhook.replay.rebuild import default_workers, rebuild

    engine = make_engine(url)
    workers = default_workers(count)
    pg = engine.dialect.name == "postgresql"
    wall0, cpu0 = time.perf_counter(), time.process_time()
    children0 = os.times().children_user + os.times().children_system
    report = rebuild(engine, workers=workers)
    seconds = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    children = os.times().children_user + os.times().children_system - children0
    pg_cpu = _pg_backend_cpu(url) if pg else None  # the rebuild's backends are still pooled
    engine.dispose()
    if report.events != count or report.failed:
        raise RuntimeError(f"rebuild projected {report.events} of {count} events, "
                           f"{report.failed} failed: {report.failures[:3]}")  # fmt: skip
    return {
        "events": report.events,
        "seconds": seconds,
        "rate": report.events / seconds,
        "parse_workers": workers,
        "cpu_us_main": cpu / count * 1e6,
        "cpu_us_parsers": children / count * 1e6,
        "cpu_us_db": None if pg_cpu is None else pg_cpu / count * 1e6,
        "rows": report.rows,
        "statuses": dict(report.statuses),
        "load": os.getloadavg(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def preload(urls: list[str], count: int, seed: int, secret: str, chunk: int = 25_000,
            use_cache: bool = True, log: Callable[[str], None] = print
            ) -> dict[str, Any]:  # fmt: skip
    """Store ``count`` events, projected, in every database of ``urls``; timings per backend.

    Chunks are simulated in worker processes (each its own seed, so messages never span
    chunks) while the main process loads the previous one.
    """
    t0 = time.monotonic()
    cache = cache_dir(count, seed) if use_cache else None
    loaders: list[PostgresLoader | SqliteLoader] = []
    fresh: list[PostgresLoader | SqliteLoader] = []
    out: dict[str, Any] = {"cached": {}, "rebuild": {}}
    for url in urls:
        lite = make_url(url).get_backend_name() == "sqlite"
        loader: PostgresLoader | SqliteLoader = SqliteLoader(url) if lite else PostgresLoader(url)
        loaders.append(loader)
        done = cache is not None and (cache / f"{loader.name}.done").exists()
        if done:
            assert cache is not None
            loader.restore(cache)
            timing = cache / f"{loader.name}.json"
            out["rebuild"][loader.name] = json.loads(timing.read_text()) if timing.exists() else {}
            out["cached"][loader.name] = True
        else:
            fresh.append(loader)
            out["cached"][loader.name] = False
    if fresh:
        want_pg = any(isinstance(x, PostgresLoader) for x in fresh)
        want_sqlite = any(isinstance(x, SqliteLoader) for x in fresh)
        jobs = [(min(chunk, count - start), seed * 10_000 + i, start + 1, secret, want_pg,
                 want_sqlite) for i, start in enumerate(range(0, count, chunk))]  # fmt: skip
        with multiprocessing.get_context("fork").Pool(2) as pool:
            for built in pool.imap(_build_chunk, jobs):
                for loader in fresh:
                    loader.load(built)
        for loader in fresh:
            loader.loaded(count)
        log(f"raw events loaded in {time.monotonic() - t0:.0f} s; projecting with rebuild()")
        for loader in fresh:
            projected = project_all(loader.url, count)
            out["rebuild"][loader.name] = projected
            log(f"{loader.name}: rebuild() projected {projected['events']:,} events in "
                f"{projected['seconds']:.0f} s ({projected['rate']:,.0f}/s)")  # fmt: skip
    out["load_s"] = time.monotonic() - t0
    t1 = time.monotonic()
    for loader in loaders:
        loader.settle()
        if cache is not None and loader in fresh:
            cache.mkdir(parents=True, exist_ok=True)
            loader.save(cache)
            (cache / f"{loader.name}.json").write_text(
                json.dumps(out["rebuild"][loader.name], indent=1)
            )
        loader.close()
    out["settle_s"] = time.monotonic() - t1
    return out


def verify_projected(url: str) -> dict[str, int]:
    """Events per status (every one should be processed or ignored, none pending)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT status, count(*) FROM callback_events GROUP BY 1"))
            return {str(s): int(n) for s, n in rows}
    finally:
        engine.dispose()
