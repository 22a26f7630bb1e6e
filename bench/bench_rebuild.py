"""Benchmark `flask events rebuild`: events re-projected per second, SQLite and PostgreSQL.

Loads N simulated callbacks straight into callback_events (bulk insert of the raw
bodies, classified as ingest would, not through HTTP), then times rebuild() twice:
into empty projection tables, and again over the tables the first run filled (the
usual case: the tables are emptied first). PostgreSQL runs in a throwaway database
created on the server of --pg-url and dropped afterwards.

    .venv/bin/python bench/bench_rebuild.py --events 1000000 --sqlite-events 200000 \
        --write docs/performance.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, create_engine, insert, text
from sqlalchemy.engine import make_url

from webhook import migrate
from webhook.callbacks import load_body, parse_envelope
from webhook.db import make_engine
from webhook.ingest import classify
from webhook.models import CallbackEvent
from webhook.rebuild import rebuild
from webhook.simulate import SimulationConfig, simulate

DEFAULT_PG = "postgresql+psycopg://127.0.0.1:5432/test"
SECTION = "## Rebuild"


def bodies(n: int, seed: int = 1) -> list[bytes]:
    """n simulated callbacks (locally reordered, a few duplicates removed: they dedupe)."""
    out: list[bytes] = []
    seen: set[bytes] = set()
    chunk = 0
    while len(out) < n:
        cfg = SimulationConfig(
            messages=20_000, seed=seed * 1000 + chunk, shuffle="window", contacts=50_000,
            start=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=chunk),
        )  # fmt: skip
        for body in simulate(cfg)[1]:
            if body not in seen:
                seen.add(body)
                out.append(body)
        chunk += 1
    return out[:n]


def event_rows(all_bodies: list[bytes]) -> Iterator[dict[str, Any]]:
    """callback_events rows as ingest stores them."""
    received = datetime(2026, 4, 1, tzinfo=UTC)
    for i, body in enumerate(all_bodies):
        payload = load_body(body)
        outcome = classify(payload)
        env = outcome.parsed.envelope if outcome.parsed else parse_envelope(payload)
        at = received + timedelta(milliseconds=i)
        yield {
            "body": body, "body_sha256": hashlib.sha256(body).hexdigest(), "headers": None,
            "received_at": at, "trigger": outcome.trigger, "app_id": env.app_id,
            "project_id": env.project_id, "event_time": env.event_time,
            "correlation_id": env.correlation_id, "status": outcome.status,
            "error": outcome.error, "processed_at": at,
        }  # fmt: skip


def load(engine: Engine, all_bodies: list[bytes]) -> float:
    started = time.perf_counter()
    rows = event_rows(all_bodies)
    if engine.dialect.name == "postgresql":
        cols = [c.name for c in CallbackEvent.__table__.columns if c.name != "id"]
        cols = [c for c in cols if c not in {"pruned_at", "erased_at"}]
        with engine.begin() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None
            with (
                driver.cursor() as cur,
                cur.copy(f"COPY callback_events ({', '.join(cols)}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row([row[c] for c in cols])
    else:
        batch: list[dict[str, Any]] = []
        with engine.begin() as conn:
            for row in rows:
                batch.append(row)
                if len(batch) == 10_000:
                    conn.execute(insert(CallbackEvent), batch)
                    batch = []
            if batch:
                conn.execute(insert(CallbackEvent), batch)
    return time.perf_counter() - started


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def run(url: str, all_bodies: list[bytes], batch_size: int) -> dict[str, Any]:
    engine = make_engine(url)
    migrate.upgrade(engine)
    loaded = load(engine, all_bodies)
    results: dict[str, Any] = {"events": len(all_bodies), "load_s": loaded}
    for label in ("empty", "again"):
        load_before = uptime()
        report = rebuild(engine, batch_size=batch_size)
        assert report.events == len(all_bodies), report
        assert report.failed == 0, report.failures
        results[label] = {
            "seconds": report.seconds,
            "rate": report.events / report.seconds,
            "uptime": load_before,
            "rows": report.rows,
            "slow_batches": report.slow_batches,
        }
        rate = report.events / report.seconds
        print(f"  rebuild ({label}): {report.seconds:.1f} s, {rate:,.0f} events/s", flush=True)
        print(f"    before: {load_before}", flush=True)
    engine.dispose()
    return results


def section(results: dict[str, dict[str, Any]], argv: list[str], batch_size: int) -> str:
    lines = [
        SECTION,
        "",
        "`flask events rebuild` empties the projection tables and re-projects every stored",
        "event, in id order, in batches (one transaction each). Measured by",
        "`bench/bench_rebuild.py`: simulated flow traffic (webhook/simulate.py, locally",
        "reordered) loaded straight into `callback_events`, then `rebuild()` timed into",
        "empty tables and again over the filled tables (which it empties first).",
        "",
        f"Command: `.venv/bin/python bench/bench_rebuild.py {' '.join(argv)}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; batch size {batch_size}.  ",
        f"Machine: {os.cpu_count()} CPUs shared with other work, Python "
        f"{platform.python_version()}, PostgreSQL on 127.0.0.1 (same machine).",
        "",
        "| database | events | into empty tables | over filled tables "
        "| load average before each run |",
        "|---|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        e, a = r["empty"], r["again"]
        load = e["uptime"].split("load average:")[-1].strip()
        load2 = a["uptime"].split("load average:")[-1].strip()
        lines.append(
            f"| {name} | {r['events']:,} | {e['rate']:,.0f} events/s ({e['seconds']:.1f} s) "
            f"| {a['rate']:,.0f} events/s ({a['seconds']:.1f} s) | {load} / {load2} |"
        )
    rows = next(iter(results.values()))["again"]["rows"]
    lines += [
        "",
        "Rows written per rebuild of the PostgreSQL run: "
        + ", ".join(f"{k} {v:,}" for k, v in rows.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    text_ = path.read_text() if path.exists() else "# Performance\n"
    if SECTION in text_:
        head, _, rest = text_.partition(SECTION)
        nxt = rest.find("\n## ")
        text_ = head + body + (rest[nxt + 1 :] if nxt >= 0 else "")
    else:
        text_ = text_.rstrip("\n") + "\n\n" + body
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="PostgreSQL run")
    parser.add_argument("--sqlite-events", type=int, default=None, help="default: --events")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--pg-url", default=os.environ.get("TEST_DATABASE_URL", DEFAULT_PG))
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--write", type=Path, help="write the Rebuild section into this file")
    args = parser.parse_args()
    backends = args.backends.split(",")
    sqlite_n = args.sqlite_events or args.events
    print(f"simulating {max(args.events, sqlite_n):,} callbacks ...", flush=True)
    all_bodies = bodies(max(args.events, sqlite_n))
    results: dict[str, dict[str, Any]] = {}
    if "postgresql" in backends:
        admin_url = args.pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        name = f"bench_rebuild_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
            print(f"PostgreSQL, {args.events:,} events", flush=True)
            results["PostgreSQL"] = run(url, all_bodies[: args.events], args.batch_size)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"SQLite, {sqlite_n:,} events", flush=True)
            results["SQLite"] = run(
                f"sqlite:///{tmp}/bench.db", all_bodies[:sqlite_n], args.batch_size
            )
    if args.write:
        write_section(args.write, section(results, sys.argv[1:], args.batch_size))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
