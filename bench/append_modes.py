"""How the append batch reaches PostgreSQL: each way measured alone, in one run, in-process.

    .venv/bin/python -m bench.append_modes --threads 16 --seconds 8 --rounds 3

The service's own group commit (webhook.ingest.Appender) on one engine, driven by
``--threads`` threads that each append pre-built distinct events (simulated, as the
endpoint builds them) as fast as they can: no HTTP, no Flask, so only the statement
path differs between modes. Modes (bench/variants.py): ``values`` (today: SQLAlchemy's
multi-row INSERT ... VALUES ... RETURNING), ``unnest`` (one statement over arrays,
prepared by psycopg after 5 uses), ``pipeline`` (prepared single-row INSERTs in a
psycopg pipeline, one transaction), ``copy`` (COPY into a temporary table, then INSERT
... SELECT, one transaction). Rounds interleave the modes, each on its own fresh
database, so the machine's drift falls on all of them. CPU per event: this process
(all threads) and the database backends serving it.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine

from bench import variants
from bench.run import CLK_TCK, SECRET, Databases, cpu_split, log, pg_reachable
from webhook.core.settings import normalize_database_url
from webhook.db.engine import make_engine
from webhook.db.events import PENDING
from webhook.ingest.append import Appender
from webhook.ingest.body import load_body
from webhook.ingest.parsers import detect_trigger
from webhook.ingest.signing import sign_headers, signature_headers
from webhook.replay.simulate import SimulationConfig, simulate

MODES: dict[str, Callable[[Connection, list[dict[str, Any]]], dict[str, int]] | None] = {
    "values": None,
    **variants.APPEND_MODES,
}


class ModeAppender(Appender):
    """The product's Appender with another statement path (None: the product's own)."""

    def __init__(self, engine: Engine,
                 run: Callable[[Connection, list[dict[str, Any]]], dict[str, int]] | None
                 ) -> None:  # fmt: skip
        super().__init__(engine)
        self.mode_run = run

    def _run(self, conn: Connection, rows: list[dict[str, Any]]) -> dict[str, int]:  # type: ignore[override]
        if self.mode_run is None:
            return Appender._run(conn, rows)
        return self.mode_run(conn, rows)


def build_rows(count: int, seed: int) -> list[dict[str, Any]]:
    bodies: list[bytes] = []
    messages = count // 3 + 10
    while len(bodies) < count:
        bodies = list(dict.fromkeys(simulate(SimulationConfig(messages=messages, seed=seed))[1]))
        messages = messages * 3 // 2
    now = int(time.time())
    rows = []
    for i, body in enumerate(bodies[:count]):
        headers = signature_headers(sign_headers(SECRET, body, f"am{seed}-{i}", now))
        rows.append({"body": body, "body_sha256": hashlib.sha256(body).hexdigest(),
                     "headers": headers, "received_at": datetime.now(UTC),
                     "trigger": detect_trigger(load_body(body)), "status": PENDING})  # fmt: skip
    return rows


def run_mode(engine: Engine, mode: str, rows: list[dict[str, Any]], threads: int,
             seconds: float, backends: Callable[[], list[int]]) -> dict[str, float]:  # fmt: skip
    appender = ModeAppender(engine, MODES[mode])
    for row in rows[: threads * 6]:  # warm: connections open, statements prepared
        appender.append(dict(row))
    rows = rows[threads * 6 :]
    done = [0] * threads
    stop = time.monotonic() + seconds
    cpu0 = time.process_time()
    pg0 = {p: sum(cpu_split(p)) for p in backends()}
    commits0 = appender.commits

    def work(k: int) -> None:
        for row in rows[k::threads]:
            if time.monotonic() >= stop:
                return
            appender.append(row)
            done[k] += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    db = sum(max(0, sum(cpu_split(p)) - pg0.get(p, 0)) for p in backends()) / CLK_TCK
    events = sum(done)
    if events >= len(rows) - threads:
        log(f"{mode}: ran out of rows; raise --rows")
    batch = events / max(appender.commits - commits0, 1)
    return {"events": events, "rate": events / wall, "python_us": cpu / events * 1e6,
            "db_us": db / events * 1e6, "batch": batch}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--rows", type=int, default=60_000, help="events built per mode and round")
    p.add_argument("--pg-url", default="postgresql://127.0.0.1:5432/test")
    args = p.parse_args()
    pg_url = normalize_database_url(args.pg_url)
    if problem := pg_reachable(pg_url):
        sys.exit(f"PostgreSQL unreachable: {problem}")
    modes = [m for m in args.modes.split(",") if m]
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    dbs = Databases(pg_url, Path("/tmp"))
    try:
        for r in range(args.rounds):
            for i, mode in enumerate(modes):
                rows = build_rows(args.rows, 100 * r + i)
                url = dbs.create("postgresql")
                engine = make_engine(url)

                def pids(u: str = url) -> list[int]:
                    return dbs.backend_pids(u)

                try:
                    res = run_mode(engine, mode, rows, args.threads, args.seconds, pids)
                finally:
                    engine.dispose()
                    dbs.drop(url)
                results[mode].append(res)
                log(f"round {r + 1} {mode:>8}: {res['rate']:7,.0f} events/s, batch "
                    f"{res['batch']:.1f}, CPU per event: Python {res['python_us']:.0f} µs + "
                    f"database {res['db_us']:.0f} µs")  # fmt: skip
    finally:
        dbs.close()
    print(f"\n{args.threads} threads, {args.seconds:g} s per run, {args.rounds} rounds "
          "(median; min-max):\n")  # fmt: skip
    print("| mode | events/s | events per commit | CPU/event: Python µs | CPU/event: "
          "database µs | CPU/event: total µs |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")

    def cell(vals: list[float], digits: int = 0) -> str:
        return (f"{statistics.median(vals):,.{digits}f} ({min(vals):,.{digits}f}-"
                f"{max(vals):,.{digits}f})")  # fmt: skip

    for mode, rs in results.items():
        print(f"| {mode} | {cell([x['rate'] for x in rs])} | "
              f"{cell([x['batch'] for x in rs], 1)} | {cell([x['python_us'] for x in rs])} | "
              f"{cell([x['db_us'] for x in rs])} | "
              f"{cell([x['python_us'] + x['db_us'] for x in rs])} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
