"""Report timings on PostgreSQL: 1,000,000 callback events for 250,000 flow messages.

    .venv/bin/python -m bench.bench_reports [--messages 250000] [--days 120] [--repeat 7]

Creates a throwaway database on the server named by --url (default: the test server),
migrates it, and fills the projection tables with what the simulator's callbacks
project to: every body is made by webhook.replay.simulate and parsed by
webhook.ingest.parsers.parse_callback, then the rows are written with COPY (the HTTP path
and its fsyncs are the ingestion benchmark's business, not this one's). Sends are
spread evenly over --days; half of them also carry our own sender's sent_at, 1 % of
sends are rejected, 5 % of completions come without reply_to (matched by flow_token).

Then each report runs in-process, as `flask report` runs it (webhook.reports.queries in the
command's read-only transaction), for the last 7, 30 and 90 days: one warm-up, then
--repeat timed runs: wall time (median, max) and CPU time of the database backend plus
this process (median; Linux /proc, so the server must be on this host). The database is
dropped at the end (not with --database). Results go to stdout as Markdown, progress
to stderr.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from webhook.core.settings import normalize_database_url
from webhook.db import migrate
from webhook.db.engine import make_engine
from webhook.ingest.body import load_body
from webhook.ingest.parsers import parse_callback
from webhook.ingest.records import (
    DeliveryReportRecord,
    FlowResponseRecord,
    FlowSendRecord,
    InboundMessageRecord,
)
from webhook.projection.rules import StatusRow, merge_status, status_of_report
from webhook.replay.simulate import SimulationConfig, simulate_message
from webhook.reports import queries as reports
from webhook.reports.cli import read_only, render

CHUNK = 25_000
REPORTS: dict[str, Callable[..., reports.Report]] = {
    "funnel": reports.funnel,
    "funnel --daily": lambda conn, w: reports.funnel(conn, w, daily=True),
    "completions": reports.completions,
    "failures": reports.failures,
    "timeline": reports.timeline,
}
COLUMNS = {
    "flow_sends": ("message_id", "flow_id", "flow_token", "flow_mode", "flow_cta", "flow_action",
                   "screen", "channel", "identity", "contact_id", "conversation_id",
                   "send_status", "error", "sent_at", "submitted_at"),
    "delivery_reports": ("kind", "message_id", "status", "channel", "identity", "contact_id",
                         "conversation_id", "reason_code", "reason_description",
                         "reason_sub_code", "channel_code", "metadata_text",
                         "processing_mode", "event_time", "received_at"),
    "message_status": ("message_id", "status", "status_rank", "queued_at", "switching_at",
                       "delivered_at", "read_at", "failed_at", "failed_after_delivery",
                       "reason_code", "contact_id", "conversation_id", "updated_at"),
    "flow_responses": ("message_id", "flow_token", "reply_to_message_id", "contact_id",
                       "conversation_id", "channel", "identity", "response", "completed_at"),
    "inbound_messages": ("message_id", "kind", "channel", "identity", "contact_id",
                         "conversation_id", "reply_to_message_id", "sender_id",
                         "processing_mode", "accept_time"),
}  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data


@dataclass
class Rows:
    tables: dict[str, list[tuple[Any, ...]]]
    events: int = 0

    @classmethod
    def empty(cls) -> Rows:
        return cls({name: [] for name in COLUMNS})


def _status_row(reports_: list[tuple[DeliveryReportRecord, datetime]]) -> tuple[Any, ...] | None:
    """The message_status row the projector's own rule (webhook.projection.rules) gives."""
    row: StatusRow | None = None
    for r, received in reports_:
        status = status_of_report(r, received)
        if status is not None:
            row = merge_status(row, status)
    return None if row is None else tuple(row)


def generate(messages: int, days: int, end: datetime, seed: int = 42) -> Iterator[Rows]:
    """Projection rows for the simulated traffic, CHUNK messages at a time."""
    span = timedelta(days=days)
    cfg = SimulationConfig(messages=messages, seed=seed, flows=8, contacts=messages // 3,
                           failure_rate=0.05, read_rate=0.75, completion_rate=0.45,
                           start=end - span,
                           spacing_seconds=span.total_seconds() / messages)  # fmt: skip
    rng = random.Random(seed)
    extra = random.Random(seed + 1)
    out = Rows.empty()
    for index in range(messages):
        sim = simulate_message(cfg, rng, index)
        delivery: list[tuple[DeliveryReportRecord, datetime]] = []
        for body in sim.bodies:
            out.events += 1
            for record in parse_callback(load_body(body)).records:
                if isinstance(record, FlowSendRecord):
                    _add_send(out, record, extra)
                elif isinstance(record, DeliveryReportRecord):
                    received = (record.event_time or end) + timedelta(milliseconds=80)
                    delivery.append((record, received))
                    out.tables["delivery_reports"].append((
                        record.kind, record.message_id, record.status, record.channel,
                        record.identity, record.contact_id, record.conversation_id,
                        record.reason_code, record.reason_description, record.reason_sub_code,
                        record.channel_code, record.metadata_text, record.processing_mode,
                        record.event_time, received))  # fmt: skip
                elif isinstance(record, FlowResponseRecord):
                    # Some completions arrive without reply_to: matched by flow_token.
                    reply_to = record.reply_to_message_id if extra.random() >= 0.05 else None
                    out.tables["flow_responses"].append((
                        record.message_id, record.flow_token, reply_to, record.contact_id,
                        record.conversation_id, record.channel, record.identity,
                        Jsonb(record.response), record.completed_at))  # fmt: skip
                elif isinstance(record, InboundMessageRecord):
                    out.tables["inbound_messages"].append((
                        record.message_id, record.kind, record.channel, record.identity,
                        record.contact_id, record.conversation_id,
                        record.reply_to_message_id, record.sender_id,
                        record.processing_mode, record.accept_time))  # fmt: skip
        if delivery and (status_row := _status_row(delivery)) is not None:
            out.tables["message_status"].append(status_row)
        if (index + 1) % CHUNK == 0:
            yield out
            out = Rows.empty()
    if any(out.tables.values()):
        yield out


def _add_send(out: Rows, r: FlowSendRecord, extra: random.Random) -> None:
    roll = extra.random()
    # Half of the sends were made by our own sender too (sent_at), 1 % were rejected.
    sent_at = (
        r.submitted_at - timedelta(milliseconds=300) if r.submitted_at and roll < 0.5 else None
    )
    status = "accepted" if sent_at else "submitted"
    out.tables["flow_sends"].append((
        r.message_id, r.flow_id, r.flow_token, r.flow_mode, r.flow_cta, r.flow_action, r.screen,
        r.channel, r.identity, r.contact_id, r.conversation_id, status, None, sent_at,
        r.submitted_at))  # fmt: skip
    if roll > 0.99 and r.submitted_at:
        out.tables["flow_sends"].append((
            None, r.flow_id, "rej_" + r.flow_token if r.flow_token else None, r.flow_mode,
            r.flow_cta, r.flow_action, r.screen, r.channel, r.identity, r.contact_id, None,
            "rejected", "400 INVALID_ARGUMENT", r.submitted_at, None))  # fmt: skip


def load(engine: Engine, messages: int, days: int, end: datetime) -> int:
    raw = engine.raw_connection()
    events, done, started = 0, 0, time.perf_counter()
    try:
        conn = raw.driver_connection
        assert conn is not None
        for chunk in generate(messages, days, end):
            with conn.cursor() as cur:
                for table, rows in chunk.tables.items():
                    columns = ", ".join(COLUMNS[table])
                    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
            conn.commit()
            events += chunk.events
            done = min(done + CHUNK, messages)
            log(f"  loaded {done:,}/{messages:,} messages, {events:,} events "
                f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return events


# ---------------------------------------------------------------- timing


@dataclass
class Timing:
    report: str
    days: int
    rows: int
    window_rows: int
    median_ms: float
    max_ms: float
    cpu_ms: float
    render_ms: float


def on_cpu_ns(pid: int) -> int:
    """Nanoseconds a process has spent on a CPU (Linux schedstat; same host only)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def run_report(engine: Engine, fn: Callable[..., reports.Report],
               window: reports.Window) -> tuple[reports.Report, float, float]:  # fmt: skip
    """One report as `flask report` runs it (a read-only transaction on a pooled
    connection): the result, wall ms, and CPU ms (database backend + this process).

    CPU time is what the work costs; wall time also counts waiting for a CPU, which on
    a shared machine can be most of it.
    """
    with read_only(engine) as conn:
        backend = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        db_before, py_before = on_cpu_ns(backend), time.thread_time_ns()
        started = time.perf_counter()
        result = fn(conn, window)
        wall = (time.perf_counter() - started) * 1000
        cpu = (on_cpu_ns(backend) - db_before + time.thread_time_ns() - py_before) / 1e6
    return result, wall, cpu


def yardstick(engine: Engine, repeat: int) -> float:
    """Median ms of a fixed CPU-bound query: how much of a core this run had."""
    times = []
    with engine.connect() as conn:
        conn.exec_driver_sql("SET jit = off")
        for _ in range(repeat):
            started = time.perf_counter()
            conn.exec_driver_sql("SELECT count(*) FROM generate_series(1, 1000000)").scalar()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def window_size(engine: Engine, window: reports.Window) -> int:
    """Sends in the window: the rows the funnel and timeline start from."""
    sql = text(
        "SELECT COUNT(*) FROM flow_sends WHERE (sent_at >= :s AND sent_at < :u) "
        "OR (sent_at IS NULL AND submitted_at >= :s AND submitted_at < :u)"
    )
    with engine.connect() as conn:
        return int(conn.execute(sql, {"s": window.since, "u": window.until}).scalar_one())


def measure(engine: Engine, end: datetime, repeat: int) -> list[Timing]:
    results = []
    for days in (7, 30, 90):
        window = reports.Window(end - timedelta(days=days), end)
        sends = window_size(engine, window)
        for name, fn in REPORTS.items():
            times, cpus = [], []
            result = run_report(engine, fn, window)[0]  # warm-up: caches
            for _ in range(repeat):
                result, wall, cpu = run_report(engine, fn, window)
                times.append(wall)
                cpus.append(cpu)
            started = time.perf_counter()
            render(result, "csv", window, None)
            render_ms = (time.perf_counter() - started) * 1000
            timing = Timing(name, days, len(result.rows), sends, statistics.median(times),
                            max(times), statistics.median(cpus), render_ms)  # fmt: skip
            log(f"  {days:>2} d  {name:<15} {timing.median_ms:7.1f} ms median "
                f"{timing.max_ms:7.1f} ms max {timing.cpu_ms:7.1f} ms cpu "
                f"{timing.rows:>7,} rows")  # fmt: skip
            results.append(timing)
    return results


def view_timings(engine: Engine) -> list[tuple[str, float]]:
    """All-time views, for comparison (what the commands avoid by filtering first)."""
    out = []
    for sql in ("SELECT * FROM flow_funnel", "SELECT COUNT(*) FROM flow_completions"):
        with engine.connect() as conn:
            started = time.perf_counter()
            conn.execute(text(sql)).all()
            out.append((sql, (time.perf_counter() - started) * 1000))
    return out


# ---------------------------------------------------------------- main


def table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: int(conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one())
                for t in COLUMNS}  # fmt: skip


@dataclass
class Run:
    messages: int
    days: int
    repeat: int
    events: int
    load_s: float
    counts: dict[str, int]
    timings: list[Timing]
    views: list[tuple[str, float]]
    yardsticks: tuple[float, float]
    uptimes: tuple[str, str]


def markdown(run: Run) -> str:
    lines = [
        f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `python -m bench.bench_reports "
        f"--messages {run.messages} --days {run.days} --repeat {run.repeat}`; "
        f"{os.cpu_count()} CPUs shared with other engineers' test runs.",
        f"Load before: `{run.uptimes[0]}`; after: `{run.uptimes[1]}`.",
        "CPU yardstick (`SELECT count(*) FROM generate_series(1, 1000000)`, median ms, "
        f"same server): {run.yardsticks[0]:.0f} before, {run.yardsticks[1]:.0f} after.",
        "",
        (
            f"Data: {run.events:,} callback events for {run.messages:,} flow messages over "
            f"{run.days} days, loaded in {run.load_s:.0f} s: "
            if run.events
            else "Data: an already loaded database (--database): "
        )
        + ", ".join(f"{t} {n:,}" for t, n in run.counts.items())
        + ".",
        "",
        "| report | window | sends in window | rows out | wall median ms | wall max ms "
        "| CPU median ms | csv render ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in run.timings:
        lines.append(f"| {t.report} | {t.days} d | {t.window_rows:,} | {t.rows:,} | "
                     f"{t.median_ms:.1f} | {t.max_ms:.1f} | {t.cpu_ms:.1f} | "
                     f"{t.render_ms:.0f} |")  # fmt: skip
    lines += ["", "Growth with the window (median CPU time, against sends in the window):", ""]
    by_key = {(t.report, t.days): t for t in run.timings}
    for name in REPORTS:
        parts = []
        for small, big in ((7, 30), (30, 90)):
            a, b = by_key[(name, small)], by_key[(name, big)]
            parts.append(f"{small}->{big} d: CPU x{b.cpu_ms / a.cpu_ms:.2f}, "
                         f"sends x{b.window_rows / a.window_rows:.2f}")  # fmt: skip
        lines.append(f"- {name}: " + "; ".join(parts))
    lines += ["", "All-time views, one run each, for comparison:", ""]
    lines += [f"- `{sql}`: {ms:.0f} ms" for sql, ms in run.views]
    return "\n".join(lines)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def data_end(engine: Engine) -> datetime:
    """The hour after the last send: the windows end there."""
    sql = "SELECT MAX(COALESCE(sent_at, submitted_at)) FROM flow_sends"
    with engine.connect() as conn:
        last = conn.exec_driver_sql(sql).scalar()
    assert isinstance(last, datetime), "no sends: load data first"
    return last.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TEST_DATABASE_URL")
                        or "postgresql://127.0.0.1:5432/test")  # fmt: skip
    parser.add_argument("--messages", type=int, default=250_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--database", help="time an already loaded database (kept)")
    args = parser.parse_args()

    admin_url = normalize_database_url(args.url)
    name = args.database or f"bench_reports_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    if not args.database:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        events, load_s = 0, 0.0
        if not args.database:
            migrate.upgrade(engine)
            end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            log(f"loading {args.messages:,} messages into {name}")
            started = time.perf_counter()
            events = load(engine, args.messages, args.days, end)
            load_s = time.perf_counter() - started
        log("timing reports")
        uptime_before, yard_before = uptime(), yardstick(engine, 5)
        timings = measure(engine, data_end(engine), args.repeat)
        yard_after, uptime_after = yardstick(engine, 5), uptime()
        run = Run(args.messages, args.days, args.repeat, events, load_s, table_counts(engine),
                  timings, view_timings(engine), (yard_before, yard_after),
                  (uptime_before, uptime_after))  # fmt: skip
        print(markdown(run))
    finally:
        engine.dispose()
        if not args.database:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
