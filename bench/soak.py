"""Soak: a steady stream of signed callbacks into gunicorn + PostgreSQL for minutes.

Open loop: request i is due at start + i/rate whatever happened to the ones before,
and its latency is measured from that due time, so a stall shows up as latency
instead of silently lowering the rate. Every answer other than 200 (or no answer)
is an error. Worker memory (RSS) and the pending count (events appended but not yet
projected) are sampled every few seconds. When the load stops, the service keeps
running until nothing is pending (the drain, timed); then every body answered 200
must be in callback_events, and none of them still pending.

    .venv/bin/python bench/soak.py                  # 10 minutes at 500/s (the record)
    .venv/bin/python bench/soak.py --duration 30    # a quick look

PostgreSQL: a throwaway database on the server named by TEST_DATABASE_URL (default
postgresql://127.0.0.1:5432/test), dropped afterwards; or --database-url to use
an existing, migrated one. Results: a summary on stdout and JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from tests.service import Service, digest, rss_kib  # noqa: E402
from webhook.core.settings import normalize_database_url  # noqa: E402
from webhook.db import migrate  # noqa: E402
from webhook.db.engine import make_engine  # noqa: E402
from webhook.db.models import CallbackEvent  # noqa: E402
from webhook.ingest.signing import sign_headers  # noqa: E402
from webhook.replay.simulate import SimulationConfig, simulate_message  # noqa: E402

SECRET = "soak-secret"


@dataclass(frozen=True, slots=True)
class Prepared:
    request: bytes  # the whole HTTP request: head and body
    digest: str  # SHA-256 of the body, as callback_events stores it


def requests(seed: int, count: int) -> list[Prepared]:
    """``count`` distinct simulated callbacks as signed HTTP requests, built before the
    run so that the load generator spends its time sending, not simulating or signing.
    (Signed with the time they are built; the service's signature age check is off.)"""
    out = []
    for i, body in zip(range(count), bodies(seed), strict=False):
        headers = sign_headers(SECRET, body, f"soak-{seed}-{i}")
        head = (
            "POST /sinch/callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            + "\r\n"
        )
        out.append(Prepared(head.encode("latin-1") + body, digest(body)))
    return out


def bodies(seed: int) -> Iterator[bytes]:
    """Distinct simulated callbacks, generated as they are needed."""
    cfg = SimulationConfig(messages=10**9, seed=seed, completion_rate=0.4)
    rng = random.Random(seed)
    index = 0
    while True:
        yield from simulate_message(cfg, rng, index).bodies
        index += 1


@dataclass
class Minute:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    sent: int = 0


@dataclass
class Soak:
    port: int
    rate: float
    duration: float
    acked: list[str] = field(default_factory=list)
    minutes: dict[int, Minute] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    max_queued: int = 0  # most requests waiting for a free connection at once
    in_flight_cap: int = 2000  # most requests queued for a free connection
    connections: int = 32
    late_starts: int = 0  # requests the scheduler started more than 50 ms after due

    def minute(self, due_offset: float) -> Minute:
        return self.minutes.setdefault(int(due_offset // 60), Minute())

    def error(self, kind: str, due_offset: float) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.minute(due_offset).errors += 1

    async def send(self, conn: list[Any], job: Prepared, due: float, start: float) -> None:
        """POST one request on a kept-alive connection (``conn``: [reader, writer] or empty)."""
        offset = due - start
        self.minute(offset).sent += 1
        try:
            async with asyncio.timeout(60):
                if not conn:
                    conn[:] = await asyncio.open_connection("127.0.0.1", self.port)
                reader, writer = conn
                writer.write(job.request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").lower().split("\r\n")
                fields = dict(line.partition(":")[::2] for line in lines[1:] if line)
                await reader.readexactly(int(fields.get("content-length", "0")))
                if "close" in fields.get("connection", ""):
                    writer.close()
                    conn.clear()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
            if conn:
                conn[1].close()
                conn.clear()
            self.error(type(err).__name__, offset)
            return
        parts = lines[0].split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 200:
            self.error(f"http_{status}", offset)
            return
        self.acked.append(job.digest)
        self.minute(offset).latencies.append(time.monotonic() - due)

    async def connection(self, queue: asyncio.Queue[tuple[Prepared, float, float] | None]) -> None:
        """One client connection: sends what is due, in turn, kept alive between requests."""
        conn: list[Any] = []
        while (job := await queue.get()) is not None:
            await self.send(conn, *job)
        if conn:
            conn[1].close()

    async def run(self, source: Iterator[Prepared]) -> None:
        """Open loop: request i is due at start + i/rate, sent by the first free connection.

        Like an HTTP client's connection pool (``connections`` kept alive). When all are
        busy, due requests wait in the queue, and that wait counts in their latency.
        """
        start = time.monotonic() + 0.2
        total = int(self.rate * self.duration)
        queue: asyncio.Queue[tuple[Prepared, float, float] | None] = asyncio.Queue()
        senders = [asyncio.create_task(self.connection(queue)) for _ in range(self.connections)]
        for i in range(total):
            due = start + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                self.late_starts += 1
            if queue.qsize() >= self.in_flight_cap:
                # Overloaded: count it, but do not pile work onto a shared machine.
                self.minute(due - start).sent += 1
                self.error("dropped_overload", due - start)
                continue
            queue.put_nowait((next(source), due, start))
            self.max_queued = max(self.max_queued, queue.qsize())
        for _ in senders:
            queue.put_nowait(None)
        await asyncio.gather(*senders)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def pending(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(CallbackEvent)
                .where(CallbackEvent.status == "pending")
            ).scalar_one()
        )


def sample_memory(service: Service, engine: Engine, samples: list[dict[str, Any]],
                  stop: Any) -> None:  # fmt: skip
    started = time.monotonic()
    while not stop.wait(5):
        rss = {str(pid): rss_kib(pid) for pid in service.worker_pids()}
        samples.append({"t": round(time.monotonic() - started, 1), "rss_kib": rss,
                        "pending": pending(engine)})  # fmt: skip


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="callbacks per second")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="gunicorn workers (as gunicorn.conf.py: one per CPU)")  # fmt: skip
    parser.add_argument("--worker-class", default="gthread", help="gunicorn worker class")
    parser.add_argument("--threads", type=int, default=16,
                        help="threads per worker (as gunicorn.conf.py)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=2000,
        help="requests waiting for a free connection before further ones count as errors",
    )
    parser.add_argument("--connections", type=int, default=32,
                        help="client connections, kept alive (an HTTP client's pool)")  # fmt: skip
    parser.add_argument("--database-url", help="an existing, migrated database")
    parser.add_argument("--drain-timeout", type=float, default=600,
                        help="seconds to wait for the projector after the load")  # fmt: skip
    args = parser.parse_args()

    admin = None
    created = None
    url = args.database_url
    if url is None:
        admin_url = normalize_database_url(
            os.environ.get("TEST_DATABASE_URL") or "postgresql://127.0.0.1:5432/test"
        )
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        created = f"soak_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{created}"'))
        url = make_url(admin_url).set(database=created).render_as_string(hide_password=False)
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()

    try:
        return run(args, url)
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)'))
            admin.dispose()


def run(args: argparse.Namespace, url: str) -> int:
    """Serve, send, sample, verify and report; the database exists and is migrated."""
    import threading

    built = time.monotonic()
    prepared = requests(args.seed, int(args.rate * args.duration))
    print(f"{len(prepared)} signed requests built in {time.monotonic() - built:.0f} s")
    load_before = uptime()
    log = Path(tempfile.mkdtemp(prefix="soak-")) / "gunicorn.log"
    env = {
        "GUNICORN_WORKER_CLASS": args.worker_class,
        "GUNICORN_THREADS": str(args.threads),
        "GUNICORN_ACCESSLOG": "/dev/null",
    }
    service = Service(url, log, secret=SECRET, workers=args.workers, env=env)
    monitor = make_engine(url, pool_size=1)
    drain_s, drained, pending_at_stop = math.nan, False, 0
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    soak = Soak(0, args.rate, args.duration, in_flight_cap=args.max_in_flight,
                connections=args.connections)  # fmt: skip
    try:
        service.start()
        soak.port = service.port
        workers = service.worker_pids()
        sampler = threading.Thread(target=sample_memory, args=(service, monitor, samples, stop))
        sampler.start()
        began = time.monotonic()
        asyncio.run(soak.run(iter(prepared)))
        elapsed = time.monotonic() - began
        stop.set()
        sampler.join()
        # The drain: the service keeps projecting what the load left pending.
        load_stopped = time.monotonic()
        pending_at_stop = pending(monitor)
        while (left := pending(monitor)) and time.monotonic() - load_stopped < args.drain_timeout:
            time.sleep(0.1)
        drain_s, drained = time.monotonic() - load_stopped, left == 0
        workers_after = service.worker_pids()
    finally:
        stop.set()
        service.stop()
        monitor.dispose()
    load_after = uptime()

    engine = make_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(CallbackEvent)).scalar_one()
        acked = set(soak.acked)
        found = 0
        statuses: dict[str, int] = {}
        chunk = list(acked)
        for i in range(0, len(chunk), 5000):
            rows = conn.execute(
                select(CallbackEvent.status, func.count())
                .where(CallbackEvent.body_sha256.in_(chunk[i : i + 5000]))
                .group_by(CallbackEvent.status)
            )
            for status, n in rows:
                statuses[status] = statuses.get(status, 0) + n
                found += n
    engine.dispose()

    per_minute = []
    for minute in sorted(soak.minutes):
        m = soak.minutes[minute]
        per_minute.append(
            {
                "minute": minute + 1,
                "sent": m.sent,
                "ok": len(m.latencies),
                "errors": m.errors,
                "p50_ms": round(percentile(m.latencies, 0.50) * 1000, 1),
                "p99_ms": round(percentile(m.latencies, 0.99) * 1000, 1),
                "max_ms": round(max(m.latencies, default=math.nan) * 1000, 1),
            }
        )

    # Memory: mean worker RSS in the first sample after one minute, against the last.
    def mean_rss(sample: dict[str, Any]) -> float:
        values = [v for v in sample["rss_kib"].values() if v]
        return statistics.mean(values) if values else math.nan

    warm = next((s for s in samples if s["t"] >= 60), samples[0] if samples else None)
    last = samples[-1] if samples else None
    rss_growth = (
        (mean_rss(last) - mean_rss(warm)) / mean_rss(warm) * 100 if warm and last else math.nan
    )
    all_latencies = [x for m in soak.minutes.values() for x in m.latencies]
    p99s = [row["p99_ms"] for row in per_minute if row["ok"]]
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rate": args.rate,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 1),
        "achieved_rate": round(len(soak.acked) / elapsed, 1),
        "gunicorn": f"{args.workers} x {args.worker_class}"
        + (f" ({args.threads} threads)" if args.worker_class == "gthread" else ""),
        "sent": sum(m.sent for m in soak.minutes.values()),
        "acknowledged": len(soak.acked),
        "errors": soak.errors,
        "error_count": sum(soak.errors.values()),
        "stored_events": stored,
        "acknowledged_missing": len(acked) - found,
        "acknowledged_by_status": statuses,
        "acknowledged_unprojected": statuses.get("pending", 0),
        "pending_at_stop": pending_at_stop,
        "pending_max": max((s_["pending"] for s_ in samples), default=0),
        "drain_s": round(drain_s, 1),
        "drained": drained,
        "late_starts": soak.late_starts,
        "max_queued": soak.max_queued,
        "connections": args.connections,
        "p50_ms": round(percentile(all_latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(all_latencies, 0.99) * 1000, 1),
        "p99_per_minute_ms": p99s,
        "p99_spread": round(max(p99s) / min(p99s), 2) if p99s else None,
        "worker_rss_warm_kib": round(mean_rss(warm)) if warm else None,
        "worker_rss_end_kib": round(mean_rss(last)) if last else None,
        "worker_rss_growth_pct": round(rss_growth, 1),
        "workers_replaced": sorted(set(workers) ^ set(workers_after)),
        "per_minute": per_minute,
        "rss_samples": samples,
        "uptime_before": load_before,
        "uptime_after": load_after,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))

    print(f"load before: {load_before}\nload after:  {load_after}")
    print(
        f"{result['acknowledged']} of {result['sent']} acknowledged in {result['elapsed_s']} s "
        f"({result['achieved_rate']}/s); errors {result['error_count']} {soak.errors}; "
        f"acknowledged but missing {result['acknowledged_missing']}"
    )
    print(
        f"acknowledged by status {statuses}; pending max {result['pending_max']} (every 5 s), "
        f"{pending_at_stop} when the load stopped, drained in {result['drain_s']} s"
    )
    print(
        f"latency p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; p99 per minute "
        f"{p99s} (max/min {result['p99_spread']})"
    )
    print(
        f"worker RSS {result['worker_rss_warm_kib']} KiB after 1 min -> "
        f"{result['worker_rss_end_kib']} KiB at the end ({result['worker_rss_growth_pct']}%)"
    )
    print("| minute | sent | ok | errors | p50 ms | p99 ms | max ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in per_minute:
        print(
            f"| {row['minute']} | {row['sent']} | {row['ok']} | {row['errors']} | "
            f"{row['p50_ms']} | {row['p99_ms']} | {row['max_ms']} |"
        )
    print(f"results: {path}")
    ok = (
        result["error_count"] == 0
        and result["acknowledged_missing"] == 0
        and result["acknowledged_unprojected"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
