"""Benchmark `flask events rebuild`: events re-projected per second, SQLite and PostgreSQL.

Loads N simulated callbacks straight into callback_events as the endpoint appends
them (bulk insert of the raw bodies, status pending, not through HTTP), then times
rebuild() several times: first with every event pending and the projection tables
empty (what the projector would do with a backlog of N), then over the tables the
previous run filled (the usual rebuild: the tables are emptied first). PostgreSQL runs
in a throwaway database created on the server of --pg-url and dropped afterwards.

    .venv/bin/python bench/bench_rebuild.py --events 1000000 --sqlite-events 200000 \
        --write docs/performance.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
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

from webhook.db import migrate
from webhook.db.engine import make_engine
from webhook.db.events import PENDING
from webhook.db.models import CallbackEvent
from webhook.ingest.body import load_body
from webhook.ingest.parsers import detect_trigger
from webhook.replay.rebuild import default_workers, rebuild
from webhook.replay.simulate import SimulationConfig, simulate

DEFAULT_PG = "postgresql+psycopg://127.0.0.1:5432/test"
AS_IS = "as is"
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
    """callback_events rows as the endpoint appends them (webhook.ingest.append): pending."""
    received = datetime(2026, 4, 1, tzinfo=UTC)
    for i, body in enumerate(all_bodies):
        at = received + timedelta(milliseconds=i)
        yield {
            "body": body, "body_sha256": hashlib.sha256(body).hexdigest(), "headers": None,
            "received_at": at, "trigger": detect_trigger(load_body(body)), "status": PENDING,
        }  # fmt: skip


def load(engine: Engine, all_bodies: list[bytes]) -> float:
    started = time.perf_counter()
    rows = event_rows(all_bodies)
    if engine.dialect.name == "postgresql":
        cols = ["body", "body_sha256", "headers", "received_at", "trigger", "status"]
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
        out = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
    return out.split("load average:")[-1].strip()


def pg_backend_cpu(engine: Engine) -> float | None:
    """CPU seconds used so far by this database's server processes (local server only)."""
    name = engine.url.database
    try:
        with engine.connect() as conn:
            pids = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": name}
            ).scalars()
            ticks = 0
            for pid in pids:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
    except OSError:
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    """CPU seconds of finished child processes (the parsing workers, once joined)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    url: str, all_bodies: list[bytes], batch_size: int, runs: int, workers: int | None,
    configs: list[str],
) -> dict[str, Any]:  # fmt: skip
    """Load the events once, then ``runs`` rebuilds per config ("as is", or a patch of
    bench/variants.py applied from then on: configs are run in order)."""
    engine = make_engine(url)
    migrate.upgrade(engine)
    loaded = load(engine, all_bodies)
    n = len(all_bodies)
    print(f"  loaded {n:,} events in {loaded:.0f} s", flush=True)
    workers = default_workers(n) if workers is None else workers
    results: dict[str, Any] = {"events": n, "runs": [], "workers": workers}
    pg = engine.dialect.name == "postgresql"
    plan = [(config, r) for config in configs for r in range(runs)]
    for i, (config, r) in enumerate(plan):
        if r == 0 and config != AS_IS:
            from bench.variants import apply

            apply(dict(kv.split("=", 1) for kv in config.split(",")))
            print(f"  patched: {config}", flush=True)
        load_before = uptime()
        cpu0, pg0 = time.process_time(), pg_backend_cpu(engine) if pg else None
        kids0 = _children_cpu()
        report = rebuild(engine, batch_size=batch_size, workers=workers)
        cpu1, pg1 = time.process_time(), pg_backend_cpu(engine) if pg else None
        kids1 = _children_cpu()
        assert report.events == n, report
        assert report.failed == 0, report.failures
        run_ = {
            "code": config,
            "into": "empty tables" if i == 0 else "filled tables",
            "seconds": report.seconds,
            "rate": n / report.seconds,
            "load": load_before,
            "python_us": (cpu1 - cpu0) / n * 1e6,
            "workers_us": (kids1 - kids0) / n * 1e6,
            "pg_us": (pg1 - pg0) / n * 1e6 if pg0 is not None and pg1 is not None else None,
            "rows": report.rows,
        }
        results["runs"].append(run_)
        pg_cpu = f", PostgreSQL {run_['pg_us']:.0f} us" if run_["pg_us"] is not None else ""
        print(
            f"  rebuild {i + 1} ({config}) into {run_['into']}: {report.seconds:.1f} s, "
            f"{run_['rate']:,.0f} events/s; CPU per event: Python {run_['python_us']:.0f} us"
            f" + parsing processes {run_['workers_us']:.0f} us{pg_cpu}; "
            f"load average before: {load_before}",
            flush=True,
        )
    engine.dispose()
    return results


def section(results: dict[str, dict[str, Any]], argv: list[str], batch_size: int) -> str:
    lines = [
        SECTION,
        "",
        "`flask events rebuild` empties the projection tables and re-projects every stored",
        "event, in id order, in batches (one transaction each), with the projector's own",
        "code (webhook.projection.projector.project, as live projection). Measured by",
        "`bench/bench_rebuild.py`: simulated flow traffic (webhook/simulate.py, locally",
        "reordered; about 4 callbacks per flow message) loaded straight into",
        "`callback_events` as the endpoint appends it (status pending), then `rebuild()`",
        "timed several times: first with every event pending and the tables empty (a",
        "backlog of N events), then over the tables the previous run filled (which it",
        "empties first). *code*: the product as it is, or with a change patched in from",
        "bench/variants.py (`--compare`), measured on the same events after it. CPU per",
        "event is the CPU time of the benchmark process (all its threads), of the",
        "parsing processes, and on PostgreSQL of the database's server processes that",
        "are still connected at the end (the writer's; the parsing processes' reads are",
        "not counted), each divided by the events.",
        "",
        f"Command: `.venv/bin/python bench/bench_rebuild.py {' '.join(argv)}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; batch size {batch_size}.  ",
        f"Machine: {os.cpu_count()} CPUs shared with other engineers' builds and "
        f"benchmarks, Python {platform.python_version()}, PostgreSQL on 127.0.0.1.",
        "",
        "| database | events | parsing processes | code | run | seconds | events/s "
        "| CPU/event: main process | CPU/event: parsing processes | CPU/event: PostgreSQL "
        "| load average before (1, 5, 15 min) |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        for run_ in r["runs"]:
            pg = f"{run_['pg_us']:.0f} us" if run_["pg_us"] is not None else "-"
            lines.append(
                f"| {name} | {r['events']:,} | {r['workers']} | {run_['code']} "
                f"| into {run_['into']} "
                f"| {run_['seconds']:.1f} "
                f"| {run_['rate']:,.0f} | {run_['python_us']:.0f} us "
                f"| {run_['workers_us']:.0f} us | {pg} | {run_['load']} |"
            )
    first = next(iter(results.values()))["runs"][-1]["rows"]
    lines += [
        "",
        "Rows each rebuild writes (first database above): "
        + ", ".join(f"{k} {v:,}" for k, v in first.items())
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
    parser.add_argument("--runs", type=int, default=3, help="rebuilds per database")
    parser.add_argument(
        "--workers", type=int, default=None, help="parsing processes (default: as the CLI)"
    )
    parser.add_argument("--pg-url", default=os.environ.get("TEST_DATABASE_URL", DEFAULT_PG))
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--write", type=Path, help="write the Rebuild section into this file")
    parser.add_argument("--compare", action="append", default=[], metavar="KNOB=V[,KNOB=V]",
                        help="after the runs as is, the same runs with this bench/variants.py "
                        "patch (e.g. BENCH_UPSERT=unnest): a change to webhook/ measured "
                        "before it is made")  # fmt: skip
    parser.add_argument("--only-patched", action="store_true",
                        help="skip the runs as is (with --compare)")  # fmt: skip
    args = parser.parse_args()
    configs = ([] if args.only_patched else [AS_IS]) + args.compare
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
            results["PostgreSQL"] = run(
                url,
                all_bodies[: args.events],
                args.batch_size,
                args.runs,
                args.workers,
                configs,
            )
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"SQLite, {sqlite_n:,} events", flush=True)
            url = f"sqlite:///{tmp}/bench.db"
            results["SQLite"] = run(
                url,
                all_bodies[:sqlite_n],
                args.batch_size,
                args.runs,
                args.workers,
                [AS_IS],
            )
    if args.write:
        write_section(args.write, section(results, sys.argv[1:], args.batch_size))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
