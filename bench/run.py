"""Ingestion benchmark: the real service on SQLite and PostgreSQL against a bare Flask ceiling.

Every target runs under the same gunicorn settings (gunicorn.conf.py plus the same
environment) and is fed by wrk through bench/replay.lua with pre-generated, distinct,
correctly signed callbacks (webhook.replay.simulate: submits, delivery reports, flow
completions, ~3% exact duplicates). Ratios to the ceiling are taken within one
repeat, so a noisy machine moves both sides together.

The service only appends during the request; its projector thread folds the pending
events afterwards. So every service run also samples the pending count while wrk
runs and, once wrk stops, times how long the backlog takes to drain (pending = 0).
A rate counts only as far as the projector sustains it: the *sustained* rate divides
the callbacks answered by the load time plus the drain time. After the repeats, a
profile phase breaks the CPU per callback down (py-spy and /proc, bench/profile.py)
and measures the projector alone. See README "Benchmarks" and docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from bench import profile as spy
from bench.preload import preload
from webhook.core.settings import normalize_database_url
from webhook.db import migrate
from webhook.db.engine import make_engine
from webhook.ingest.signing import sign_headers
from webhook.replay.simulate import SimulationConfig, simulate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"
SECRET = "bench-webhook-secret"
CLK_TCK = os.sysconf("SC_CLK_TCK")
START, END = "<!-- bench:ingestion:start -->", "<!-- bench:ingestion:end -->"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- requests


@dataclass
class RequestFile:
    path: Path
    bodies: list[bytes]


def write_requests(path: Path, seed: int, count: int, duplicate_rate: float) -> RequestFile:
    """Simulated callbacks, each signed, as raw HTTP requests for replay.lua."""
    messages = count // 3 + 10
    while True:
        stream = simulate(SimulationConfig(messages=messages, seed=seed,
                                           duplicate_rate=duplicate_rate))[1]  # fmt: skip
        if len(stream) >= count:
            break
        messages = messages * 3 // 2
    bodies = stream[:count]
    now = int(time.time())
    with path.open("wb") as out:
        for i, body in enumerate(bodies):
            headers = sign_headers(SECRET, body, f"{seed:x}n{i:x}", now)
            head = (
                "POST /sinch/callbacks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                + "\r\n"
            ).encode()
            raw = head + body
            out.write(b"%d\n" % len(raw) + raw)
    return RequestFile(path, bodies)


def sent_bodies(requests: RequestFile, sent: list[list[int]], threads: int) -> list[bytes]:
    """The bodies wrk sent: thread k sent its first n records of k, k+threads, ..."""
    out: list[bytes] = []
    for tid, n in sent:
        mine = requests.bodies[tid::threads]
        out.extend(mine[i % len(mine)] for i in range(n))
    return out


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _stat_ticks(stat: Path) -> tuple[int, int]:
    with contextlib.suppress(OSError):
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])  # utime, stime
    return 0, 0


def cpu_split(pid: int) -> tuple[int, int]:
    """(utime, stime) ticks of a process (0, 0 once it is gone)."""
    return _stat_ticks(Path(f"/proc/{pid}/stat"))


def thread_ticks(pid: int) -> dict[int, tuple[int, int]]:
    """(utime, stime) ticks of every thread of ``pid``."""
    out: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            out[int(task.name)] = _stat_ticks(task / "stat")
    return out


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of ``pid`` so far."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
    return total


def peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sinch/callbacks"

    def workers(self) -> list[int]:
        return children(self.proc.pid)


def start_server(app: str, env: dict[str, str], log_path: Path, cwd: Path = ROOT) -> Server:
    """gunicorn with gunicorn.conf.py, serving ``app`` from the tree at ``cwd``."""
    port = free_port()
    full_env = {**os.environ, **env, "BIND": f"127.0.0.1:{port}"}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            # No control socket: its default path is shared by every gunicorn on the host.
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py",
             "--no-control-socket", app],
            cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{app} exited at start; see {log_path}")
        health = f"http://127.0.0.1:{port}/healthz"
        with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2) as r:
            if r.status == 200:
                return Server(proc, port, log_path)
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"{app} did not answer /healthz; see {log_path}")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def run_wrk(url: str, requests: Path, seconds: float, connections: int,
            threads: int) -> dict[str, Any]:  # fmt: skip
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
           "--timeout", "10s", "-s", str(ROOT / "bench" / "replay.lua"), url]  # fmt: skip
    env = {**os.environ, "BENCH_REQUESTS": str(requests), "BENCH_THREADS": str(threads)}
    before = os.times()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    after = os.times()
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line[len("BENCH_JSON ") :])
            # wrk's own CPU: it shares the two cores with the server.
            result["client_cpu_s"] = (after.children_user - before.children_user
                                      + after.children_system - before.children_system)  # fmt: skip
            return result
    raise RuntimeError(f"wrk printed no result:\n{out}")


# ---------------------------------------------------------------- databases


class Databases:
    """Throwaway benchmark databases: SQLite files and PostgreSQL databases (dropped after)."""

    def __init__(self, pg_admin_url: str | None, workdir: Path) -> None:
        self.pg_admin = (
            create_engine(pg_admin_url, isolation_level="AUTOCOMMIT") if pg_admin_url else None
        )
        self.pg_admin_url = pg_admin_url
        self.workdir = workdir
        self.pg_created: list[str] = []

    def create(self, backend: str) -> str:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        if backend == "sqlite":
            url = f"sqlite:///{self.workdir / (name + '.db')}"
        else:
            assert self.pg_admin is not None and self.pg_admin_url
            with self.pg_admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            self.pg_created.append(name)
            url = make_url(self.pg_admin_url).set(database=name).render_as_string(False)
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        return url

    def drop(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            for suffix in ("", "-wal", "-shm", "-writelock"):
                Path(f"{parsed.database}{suffix}").unlink(missing_ok=True)
        elif self.pg_admin is not None and parsed.database in self.pg_created:
            with self.pg_admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
            self.pg_created.remove(parsed.database)

    def close(self) -> None:
        if self.pg_admin is not None:
            with self.pg_admin.connect() as conn:
                for name in self.pg_created:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            self.pg_admin.dispose()

    def backend_pids(self, url: str) -> list[int]:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" or self.pg_admin is None:
            return []
        with self.pg_admin.connect() as conn:
            rows = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :d"),
                {"d": parsed.database},
            )
            return [int(r[0]) for r in rows]


def stored_events(url: str) -> int:
    engine: Engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM callback_events")).scalar_one())
    finally:
        engine.dispose()


# ---------------------------------------------------------------- pending events


class PendingMonitor:
    """Counts the pending events of one database from its own connection.

    On PostgreSQL it can also sample which statements the other backends are running
    (pg_stat_activity), to split the database's CPU between appends and the projector.
    """

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.pg = parsed.get_backend_name() != "sqlite"
        self.pid: int | None = None
        if self.pg:
            import psycopg

            dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
            self.conn: Any = psycopg.connect(dsn, autocommit=True)
            self.pid = int(self.conn.info.backend_pid)
        else:
            self.conn = sqlite3.connect(f"file:{parsed.database}?mode=ro", uri=True,
                                        check_same_thread=False)  # fmt: skip
        self.samples: list[tuple[float, int]] = []
        self.activity: Counter[tuple[int, str]] = Counter()
        self.queries = 0  # its own transactions, left out of the counts

    def _one(self, sql: str) -> Any:
        self.queries += 1
        return self.conn.execute(sql).fetchone()

    def pending(self) -> int:
        row = self._one("SELECT count(*) FROM callback_events WHERE status = 'pending'")
        return int(row[0])

    def transactions(self) -> int:
        """Transactions committed in this database so far (PostgreSQL's statistics)."""
        if not self.pg:
            return 0
        row = self._one(
            "SELECT pg_stat_force_next_flush(), xact_commit FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
        return int(row[1]) - self.queries

    def sample_activity(self) -> None:
        self.queries += 1
        rows = self.conn.execute(
            "SELECT pid, left(query, 40) FROM pg_stat_activity WHERE datname = "
            "current_database() AND state = 'active' AND pid <> pg_backend_pid()"
        ).fetchall()
        for pid, query in rows:
            kind = "append" if query.lstrip().upper().startswith("INSERT INTO CALLBACK_EVENTS") \
                else "projector"  # fmt: skip
            self.activity[(int(pid), kind)] += 1

    def run(self, stop: threading.Event, started: float, activity: bool) -> None:
        """Sample until ``stop``: the pending count every 0.25 s (activity every 0.05 s)."""
        next_count = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_count:
                self.samples.append((now - started, self.pending()))
                next_count = now + 0.25
            if activity and self.pg:
                self.sample_activity()
            stop.wait(0.05 if activity else 0.25)

    def drain(self, timeout: float) -> tuple[float, bool]:
        """Seconds until no event is pending (and whether that happened within ``timeout``)."""
        started = time.monotonic()
        while True:
            if self.pending() == 0:
                return time.monotonic() - started, True
            if time.monotonic() - started > timeout:
                return time.monotonic() - started, False
            time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


# ---------------------------------------------------------------- CPU accounting


@dataclass
class Snapshot:
    procs: dict[int, tuple[int, int]]  # pid -> (utime, stime) ticks
    threads: dict[int, dict[int, tuple[int, int]]]  # worker pid -> tid -> ticks
    ctx: int  # context switches of the workers


def snapshot(master: int, workers: list[int], backends: list[int]) -> Snapshot:
    return Snapshot(
        {p: cpu_split(p) for p in [master, *workers, *backends]},
        {w: thread_ticks(w) for w in workers},
        sum(context_switches(w) for w in workers),
    )


def cpu_delta(a: Snapshot, b: Snapshot, pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pids`` between two snapshots.

    A process that appeared in between (a new pooled connection) counts from zero; one
    gone by ``b`` reads (0, 0) and counts nothing.
    """
    user = system = 0
    for p in pids:
        u1, s1 = b.procs.get(p, (0, 0))
        if (u1, s1) == (0, 0):
            continue
        u0, s0 = a.procs.get(p, (0, 0))
        user, system = user + max(0, u1 - u0), system + max(0, s1 - s0)
    return user / CLK_TCK, system / CLK_TCK


def thread_delta(a: Snapshot, b: Snapshot, worker: int, tids: set[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these threads of ``worker`` between two snapshots."""
    user = system = 0
    for tid, (u1, s1) in b.threads.get(worker, {}).items():
        if tid in tids:
            u0, s0 = a.threads.get(worker, {}).get(tid, (0, 0))
            user, system = user + max(0, u1 - u0), system + max(0, s1 - s0)
    return user / CLK_TCK, system / CLK_TCK


def projector_threads(workers: list[int]) -> dict[int, set[int]]:
    """The thread ids of each worker's projector thread (named "projector"), via py-spy dump."""
    found: dict[int, set[int]] = {}
    exe = spy.py_spy()
    if exe is None:
        return found
    for w in workers:
        out = subprocess.run([exe, "dump", "--pid", str(w), "--nonblocking"],
                             capture_output=True, text=True).stdout  # fmt: skip
        for line in out.splitlines():
            if line.startswith("Thread ") and line.rstrip().endswith('"projector"'):
                with contextlib.suppress(ValueError):
                    found.setdefault(w, set()).add(int(line.split()[1], 0))
    return found


# ---------------------------------------------------------------- one measurement


@dataclass
class Target:
    name: str
    kind: str  # "ceiling", "service" or "textbook"
    app: str
    backend: str | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Measurement:
    repeat: int | str
    target: str
    kind: str
    backend: str | None
    rate: float  # callbacks answered per second of load
    requests: int
    load_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    # The service: events pending while wrk ran, and the drain after it stopped.
    pending_max: int | None = None
    pending_end: int | None = None  # when wrk stopped
    pending_growth: float | None = None  # events/s the backlog grew in the second half
    drain_s: float | None = None
    drained: bool | None = None
    sustained_rate: float = 0.0  # callbacks / (load + drain seconds)
    # CPU seconds: load (wrk running) and drain (after it, until pending = 0).
    worker_user_s: float = 0.0
    worker_sys_s: float = 0.0
    master_s: float = 0.0
    db_s: float = 0.0
    drain_cpu_s: float = 0.0  # workers + database during the drain
    cpu_ms: float = 0.0  # everything above per callback, in ms
    ctx_per_cb: float = 0.0
    client_ms: float = 0.0  # wrk's CPU per callback (not in cpu_ms)
    xact_per_cb: float | None = None  # PostgreSQL transactions committed per callback
    peak_rss_mb: float = 0.0
    errors: int = 0
    error_detail: dict[str, int] = field(default_factory=dict)
    locked: int = 0
    sent: int = 0
    distinct_sent: int = 0
    stored: int | None = None
    wraps: int = 0
    workers: int = 0
    ratio: float | None = None  # rate / ceiling
    sustained_ratio: float | None = None  # sustained_rate / ceiling
    breakdown: dict[str, float] = field(default_factory=dict)  # ms CPU per callback
    profile_samples: int = 0
    projector_alone: dict[str, float] = field(default_factory=dict)
    pending_samples: list[tuple[float, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def measure(t: Target, repeat: int | str, url: str | None, requests: RequestFile,
            warmup: RequestFile, args: argparse.Namespace, dbs: Databases | None,
            workdir: Path, profile: bool = False) -> Measurement:  # fmt: skip
    log_path = workdir / f"{t.name}-r{repeat}.log"
    server_env = {**args.server_env, **t.env}
    if url is not None:
        server_env["DATABASE_URL"] = url
        server_env["SINCH_WEBHOOK_SECRETS"] = SECRET
    sidecar_poll = server_env.pop("BENCH_SIDECAR", "")
    if sidecar_poll:  # the projector as its own process (the Procfile's worker)
        server_env["PROJECTOR"] = "off"
    projecting = t.kind == "service" and (
        server_env.get("PROJECTOR", "on") != "off" or bool(sidecar_poll)
    )
    server = start_server(t.app, server_env, log_path)
    sidecar = start_sidecar(server_env, sidecar_poll, log_path) if sidecar_poll else None
    extra = [sidecar.pid] if sidecar else []  # counted with the workers
    monitor = PendingMonitor(url) if t.kind == "service" and url else None
    spy_out = workdir / f"{t.name}-r{repeat}.stacks"
    stop = threading.Event()
    try:
        if args.warmup > 0:
            run_wrk(server.url, warmup.path, args.warmup, args.connections, args.wrk_threads)
        if monitor and projecting:  # the warm-up's backlog is not the measured run's
            monitor.drain(args.drain_timeout)
        before_rows = stored_events(url) if url else None
        workers = server.workers()

        def backends() -> list[int]:
            if dbs is None or url is None or t.backend != "postgresql":
                return []
            mine = monitor.pid if monitor else None
            return [p for p in dbs.backend_pids(url) if p != mine]

        pg0 = backends()
        proj_tids = projector_threads(workers) if profile and projecting else {}
        xact0 = monitor.transactions() if monitor else 0
        s0 = snapshot(server.proc.pid, workers + extra, pg0)
        started = time.monotonic()
        sampler = None
        if monitor:
            sampler = threading.Thread(target=monitor.run, args=(stop, started, profile),
                                       daemon=True)  # fmt: skip
            sampler.start()
        spy_proc = None
        if profile:
            spy_proc = spy.start_spy(server.proc.pid, args.duration, spy_out, gil=True)
        result = run_wrk(server.url, requests.path, args.duration, args.connections,
                         args.wrk_threads)  # fmt: skip
        stop.set()
        if sampler:
            sampler.join()
        pg1 = sorted(set(pg0) | set(backends()))
        s1 = snapshot(server.proc.pid, workers + extra, pg1)
        drain_s, drained, pending_end = None, None, None
        if monitor:
            pending_end = monitor.pending()
            if projecting:
                drain_s, drained = monitor.drain(args.drain_timeout)
        xacts = (monitor.transactions() - xact0) if monitor else 0
        pg2 = sorted(set(pg1) | set(backends()))
        s2 = snapshot(server.proc.pid, workers + extra, pg2)
        rss = max((peak_rss_mb(p) for p in server.workers()), default=0.0)
        worker_count = len(server.workers())
        if spy_proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy_proc.wait(timeout=60)
    finally:
        stop.set()
        if sidecar is not None:
            sidecar.terminate()
            try:
                sidecar.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sidecar.kill()
                sidecar.wait()
        stop_server(server)
    alone: dict[str, float] = {}
    if monitor and not projecting and url:
        alone = project_alone(url, dbs, monitor, args.drain_timeout)
        drain_s, drained = alone["seconds"], True
    if monitor:
        monitor.close()
    after_rows = stored_events(url) if url else None
    log_text = log_path.read_text(errors="replace")
    sent = sent_bodies(requests, result["sent"], args.wrk_threads)
    done = int(result["requests"])
    seconds = result["duration_us"] / 1e6
    errors = dict(result["errors"])
    w_user, w_sys = cpu_delta(s0, s1, workers + extra)
    master_u, master_s = cpu_delta(s0, s1, [server.proc.pid])
    db_u, db_s = cpu_delta(s0, s1, pg1)
    dr_w = sum(cpu_delta(s1, s2, workers + extra))
    dr_db = sum(cpu_delta(s1, s2, pg2))
    m = Measurement(
        repeat=repeat, target=t.name, kind=t.kind, backend=t.backend,
        rate=done / seconds, requests=done, load_s=seconds,
        p50_ms=result["latency_us"]["p50"] / 1000,
        p99_ms=result["latency_us"]["p99"] / 1000,
        p999_ms=result["latency_us"]["p999"] / 1000,
        pending_end=pending_end, drain_s=drain_s, drained=drained,
        worker_user_s=w_user, worker_sys_s=w_sys, master_s=master_u + master_s,
        db_s=db_u + db_s, drain_cpu_s=dr_w + dr_db,
        ctx_per_cb=(s1.ctx - s0.ctx) / max(done, 1),
        client_ms=float(result.get("client_cpu_s", 0.0)) / max(done, 1) * 1000,
        xact_per_cb=xacts / max(done, 1) if monitor and monitor.pg else None,
        peak_rss_mb=rss,
        errors=sum(errors.values()),
        error_detail={k: v for k, v in errors.items() if v},
        locked=log_text.count("database is locked"),
        sent=len(sent),
        distinct_sent=len({hashlib.sha256(b).digest() for b in sent}),
        stored=(after_rows - before_rows) if after_rows is not None and before_rows is not None
        else None,
        wraps=int(result["wraps"]),
        workers=worker_count,
        projector_alone=alone,
    )  # fmt: skip
    total_cpu = w_user + w_sys + m.master_s + m.db_s + m.drain_cpu_s
    if alone:
        total_cpu += alone["cpu_s"]
    m.cpu_ms = total_cpu / max(done, 1) * 1000
    m.sustained_rate = done / (seconds + (drain_s or 0.0))
    if monitor:
        m.pending_samples = [(round(ts, 2), n) for ts, n in monitor.samples]
        counts = [n for _, n in monitor.samples] + [pending_end or 0]
        m.pending_max = max(counts)
        half = [(ts, n) for ts, n in monitor.samples if ts >= seconds / 2]
        if len(half) >= 2:
            m.pending_growth = ((pending_end or 0) - half[0][1]) / max(seconds - half[0][0], 0.1)
    if profile:
        m.breakdown, m.profile_samples = breakdown(
            spy_out, server.proc.pid, workers, proj_tids, s0, s1, m, monitor
        )
        if alone:
            m.breakdown["projector_alone_ms"] = alone["cpu_s"] / max(done, 1) * 1000
    if m.wraps and url:
        m.notes.append(f"request file ran out ({m.wraps} wraps): bodies were reused")
    if m.stored is not None and abs(m.distinct_sent - m.stored) > args.connections:
        m.notes.append(f"stored {m.stored} events for {m.distinct_sent} distinct bodies sent")
    if drained is False:
        m.notes.append(f"still pending after the {args.drain_timeout:.0f} s drain timeout")
    drain = "" if drain_s is None else f" pending max {m.pending_max} end {pending_end} " \
        f"drain {drain_s:.1f} s sustained {m.sustained_rate:.0f}/s"  # fmt: skip
    log(f"{t.name:>22} r{repeat}: {m.rate:6.0f}/s p50 {m.p50_ms:.1f} ms p99 {m.p99_ms:.1f} ms "
        f"cpu {m.cpu_ms:.2f} ms/cb rss {rss:.0f} MB errors {m.errors} locked {m.locked} "
        f"sent {m.sent} distinct {m.distinct_sent} stored {m.stored}{drain}")  # fmt: skip
    return m


def start_sidecar(env: dict[str, str], poll: str, log_path: Path) -> subprocess.Popen[bytes]:
    """`flask events project --follow --poll <poll>` next to a service with PROJECTOR=off."""
    full_env = {**os.environ, **env, "FLASK_APP": "wsgi"}
    with log_path.with_suffix(".projector.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flask", "events", "project", "--follow", "--poll", poll],
            cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def project_alone(url: str, dbs: Databases | None, monitor: PendingMonitor,
                  timeout: float) -> dict[str, float]:  # fmt: skip
    """Drain the backlog with the projector alone (webhook.projection.projector.drain, in this
    process, nothing else running): its rate and CPU per event."""
    from webhook.projection.projector import drain

    engine = make_engine(url)
    backlog = monitor.pending()
    pg = make_url(url).get_backend_name() == "postgresql"
    wall0, cpu0 = time.perf_counter(), time.process_time()
    drain(engine)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    db = 0.0
    if pg and dbs is not None:
        mine = monitor.pid
        # The drain's backends are still pooled: their whole life was this drain.
        db = sum(cpu_split(p)[0] + cpu_split(p)[1] for p in dbs.backend_pids(url)
                 if p != mine) / CLK_TCK  # fmt: skip
    engine.dispose()
    return {"events": backlog, "seconds": wall, "rate": backlog / max(wall, 1e-9),
            "cpu_s": cpu + db, "python_ms": cpu / max(backlog, 1) * 1000,
            "db_ms": db / max(backlog, 1) * 1000}  # fmt: skip


def breakdown(stacks: Path, master: int, workers: list[int], proj_tids: dict[int, set[int]],
              s0: Snapshot, s1: Snapshot, m: Measurement, monitor: PendingMonitor | None
              ) -> tuple[dict[str, float], int]:  # fmt: skip
    """CPU per callback (ms) by part: thread CPU from /proc, split by py-spy's samples.

    The workers' CPU in the load window is taken per thread group: the projector
    thread (all of it "projector"), the main thread (gunicorn's event loop) and the
    request threads. A group's user time is divided among the parts in proportion to
    its own samples of the thread holding the GIL (py-spy --gil: where Python runs);
    its system time, spent in system calls made without the GIL (sockets to the client
    and to the database, epoll, futex waits and wake-ups), is its own row. The
    database's CPU is split between appends and the projector by which statements its
    backends were seen running (pg_stat_activity, every 50 ms).
    """
    groups = spy.read_groups(stacks, master)
    per_cb = 1000 / max(m.requests, 1)
    out: dict[str, float] = dict.fromkeys([*spy.PARTS, "kernel"], 0.0)
    for w in workers:
        tids = set(s1.threads.get(w, {}))
        proj = proj_tids.get(w, set())
        out["projector"] += sum(thread_delta(s0, s1, w, proj)) * per_cb
        for group, members in (("main", {w}), ("pool", tids - proj - {w})):
            user, system = thread_delta(s0, s1, w, members)
            out["kernel"] += system * per_cb
            prof = groups.get(group)
            if prof is None or not prof.samples:
                out["other"] += user * per_cb
                continue
            for part in spy.PARTS:
                if part != "projector":
                    out[part] += user * prof.share(part) * per_cb
    out["workers"] = (m.worker_user_s + m.worker_sys_s) * per_cb
    out["master"] = m.master_s * per_cb
    db_append, db_proj = m.db_s, 0.0
    if monitor is not None and monitor.activity:
        kinds: Counter[str] = Counter()
        for (_, kind), n in monitor.activity.items():
            kinds[kind] += n
        share = kinds["projector"] / max(sum(kinds.values()), 1)
        db_proj, db_append = m.db_s * share, m.db_s * (1 - share)
    out["db_append"] = db_append * per_cb
    out["db_projector"] = db_proj * per_cb
    out["drain"] = m.drain_cpu_s * per_cb
    out["total"] = m.cpu_ms
    samples = sum(p.samples for p in groups.values())
    return out, samples


# ---------------------------------------------------------------- report


def machine_note() -> dict[str, str]:
    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return "?"

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")  # fmt: skip
    dirty = sh("git", "status", "--porcelain", "--untracked-files=no")
    wrk = sh("wrk", "-v").split()[1] if shutil.which("wrk") else "?"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": sh("git", "rev-parse", "--short", "HEAD") + (" (modified)" if dirty else ""),
        "uptime": sh("uptime"),
        "machine": f"{os.cpu_count()} cores ({cpu}), {platform.python_implementation()} "
        f"{platform.python_version()}, wrk {wrk}",
    }  # fmt: skip


def gunicorn_settings(env: dict[str, str]) -> dict[str, str]:
    """What gunicorn.conf.py resolves to under ``env`` (the same for every target)."""
    import runpy

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {k: str(conf[k]) for k in ("worker_class", "workers", "threads", "keepalive")}


def _f(value: float | None, digits: int = 0, none: str = "–") -> str:
    return none if value is None else f"{value:,.{digits}f}"


def render(results: list[Measurement], info: dict[str, str], command: str,
           settings: dict[str, str], preloaded: dict[str, Any]) -> str:  # fmt: skip
    main = [m for m in results if isinstance(m.repeat, int)]
    lines = [
        f"Command: `{command}`  ",
        f"Date: {info['date']}, commit {info['commit']}  ",
        f"Machine: {info['machine']}  ",
        f"Load: `{info['uptime']}` (at the start) / `{info.get('uptime_end', '?')}` (at the end)  ",
        "Settings (identical for every target): "
        + ", ".join(f"`{k}={v}`" for k, v in settings.items()),
        "",
        "| repeat | target | callbacks/s | × ceiling | sustained /s (× ceiling) | p50 ms | "
        "p99 ms | pending max / at stop | drain s | CPU ms / callback (workers u+s, db, "
        "drain) | wrk CPU ms / cb | ctx sw / cb | PG xacts / cb | RSS MB | errors | locked | "
        "sent / distinct / stored |",
        "|---|---|---:|---:|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in main:
        ratio = _f(m.ratio, 2)
        sustained = "–" if m.kind != "service" else \
            f"{m.sustained_rate:.0f} ({_f(m.sustained_ratio, 2)})"  # fmt: skip
        pending = "–" if m.pending_max is None else f"{m.pending_max} / {m.pending_end}"
        per = 1000 / max(m.requests, 1)
        cpu = (f"{m.cpu_ms:.2f} ({(m.worker_user_s) * per:.2f}+{m.worker_sys_s * per:.2f}, "
               f"{m.db_s * per:.2f}, {m.drain_cpu_s * per:.2f})")  # fmt: skip
        counts = "–" if m.stored is None else f"{m.sent} / {m.distinct_sent} / {m.stored}"
        lines.append(
            f"| {m.repeat} | {m.target} | {m.rate:.0f} | {ratio} | {sustained} | "
            f"{m.p50_ms:.1f} | {m.p99_ms:.1f} | {pending} | {_f(m.drain_s, 1)} | {cpu} | "
            f"{m.client_ms:.2f} | {m.ctx_per_cb:.1f} | {_f(m.xact_per_cb, 2)} | "
            f"{m.peak_rss_mb:.0f} | {m.errors} | "
            f"{m.locked if m.stored is not None else '–'} | {counts} |"
        )
    notes = [f"- repeat {m.repeat} {m.target}: {n}" for m in results for n in m.notes]
    lines += [
        "",
        "× ceiling: over the mean of the ceiling's rate at the start and at the end of the "
        "same repeat. *Sustained*: callbacks answered / (load seconds + drain seconds), "
        "the rate the projector keeps up with. *Pending*: events appended but not yet "
        "projected, sampled every 0.25 s while wrk ran; *drain*: seconds from the end of "
        "the load until none is pending. CPU: user+system of the gunicorn workers and "
        "master and of the database backends (PostgreSQL; SQLite works inside the "
        "workers) while wrk ran, plus everything spent during the drain, per callback.",
    ]
    lines += ["", *notes] if notes else []
    ceilings = {"ceiling", "ceiling-end"}
    targets = [t for t in dict.fromkeys(m.target for m in main) if t not in ceilings]
    summary = ["", "Spread over repeats (min / median / max):", "",
               "| target | × ceiling | sustained × ceiling | callbacks/s | p99 ms | "
               "pending max | drain s | CPU ms / callback |",
               "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in targets:
        ms = [m for m in main if m.target == t]
        service = ms[0].kind == "service"
        summary.append(
            f"| {t} | {_spread([m.ratio or 0 for m in ms], 2)} | "
            f"{_spread([m.sustained_ratio or 0 for m in ms], 2) if service else '–'} | "
            f"{_spread([m.rate for m in ms], 0)} | {_spread([m.p99_ms for m in ms], 1)} | "
            f"{_spread([float(m.pending_max or 0) for m in ms], 0) if service else '–'} | "
            f"{_spread([m.drain_s or 0 for m in ms], 1) if service else '–'} | "
            f"{_spread([m.cpu_ms for m in ms], 2)} |"
        )
    ms = [m for m in main if m.target in ceilings]
    summary.append(f"| ceiling (start and end) | 1 | – | {_spread([m.rate for m in ms], 0)} | "
                   f"{_spread([m.p99_ms for m in ms], 1)} | – | – | "
                   f"{_spread([m.cpu_ms for m in ms], 2)} |")  # fmt: skip
    for backend in ("sqlite", "postgresql"):
        pairs = [(e.sustained_rate, s.sustained_rate) for e in main for s in main
                 if e.target == backend and s.target == f"{backend}-stored"
                 and e.repeat == s.repeat]  # fmt: skip
        if pairs:
            summary.append(f"\n{backend}: sustained rate with the store full / empty, same "
                           f"repeat: {_spread([s / e for e, s in pairs], 2)}")  # fmt: skip
    lines += summary
    lines += render_verdicts(main)
    lines += render_preload(preloaded)
    lines += render_profile([m for m in results if not isinstance(m.repeat, int)])
    return "\n".join(lines) + "\n"


def render_verdicts(main: list[Measurement]) -> list[str]:
    def values(target: str, get: Callable[[Measurement], float | None]) -> list[float]:
        return [v for m in main if m.target == target and (v := get(m)) is not None]

    def stored_ratios(backend: str) -> list[float]:
        return [s.sustained_rate / e.sustained_rate for e in main for s in main
                if e.target == backend and s.target == f"{backend}-stored"
                and e.repeat == s.repeat and e.sustained_rate]  # fmt: skip

    Check = Callable[[float], bool]
    rows: list[tuple[str, str, list[float], Check, int]] = [
        ("PostgreSQL, sustained × ceiling", "≥ 0.5", values("postgresql",
                                                            lambda m: m.sustained_ratio),
         lambda v: v >= 0.5, 2),
        ("SQLite, sustained × ceiling", "≥ 0.4", values("sqlite", lambda m: m.sustained_ratio),
         lambda v: v >= 0.4, 2),
        ("PostgreSQL p99 (16 connections)", "≤ 25 ms", values("postgresql", lambda m: m.p99_ms),
         lambda v: v <= 25, 1),
        ("PostgreSQL, 1,000,000 stored / empty", "≥ 0.9", stored_ratios("postgresql"),
         lambda v: v >= 0.9, 2),
        ("SQLite, 1,000,000 stored / empty", "≥ 0.9", stored_ratios("sqlite"),
         lambda v: v >= 0.9, 2),
    ]  # fmt: skip
    out = ["", "Targets, this run (min / median / max over repeats; met if the median is):", "",
           "| target | goal | measured | |", "|---|---|---|---|"]  # fmt: skip
    for name, goal, vals, ok, digits in rows:
        if not vals:
            continue
        verdict = "met" if ok(statistics.median(vals)) else "**missed**"
        out.append(f"| {name} | {goal} | {_spread(vals, digits)} | {verdict} |")
    return out


def render_preload(preloaded: dict[str, Any]) -> list[str]:
    rebuilds = preloaded.get("rebuild") or {}
    out: list[str] = []
    for backend, r in rebuilds.items():
        if not r:
            continue
        cached = " (loaded from the cache; measured when it was built)" \
            if preloaded.get("cached", {}).get(backend) else ""  # fmt: skip
        db = f", database {r['cpu_us_db']:.0f} µs" if r.get("cpu_us_db") is not None else ""
        out.append(f"- {backend}: `rebuild()` projected {r['events']:,} pending events in "
                   f"{r['seconds']:.0f} s = **{r['rate']:,.0f} events/s** ({r['date']}, "
                   f"{r['parse_workers']} parsing processes; CPU per event: main process "
                   f"{r['cpu_us_main']:.0f} µs, parsers {r['cpu_us_parsers']:.0f} µs{db})"
                   f"{cached}")  # fmt: skip
    if out:
        out = ["", "The stored events of the `-stored` targets, projected by the product's "
               "own `webhook.replay.rebuild` (bench/preload.py):", "", *out]  # fmt: skip
    return out


PROFILE_ROWS = (
    ("gunicorn", "gunicorn: HTTP parsing, sockets, event loop"),
    ("flask", "Flask/Werkzeug and the app's hooks"),
    ("app", "the app's own code"),
    ("driver", "driver (SQLAlchemy, psycopg / sqlite3) and its waits"),
    ("handoff", "thread hand-offs (locks, events, pool queue)"),
    ("other", "other / unattributed"),
    ("kernel", "kernel time of those threads (sockets, epoll, futex)"),
    ("projector", "projector thread (in the workers), during the load"),
    ("workers", "= workers, measured (/proc)"),
    ("master", "gunicorn master"),
    ("db_append", "database backends: appends"),
    ("db_projector", "database backends: projector"),
    ("drain", "drain after the load (workers + database)"),
    ("projector_alone_ms", "projector alone afterwards (process + database)"),
    ("total", "total CPU per callback"),
)


def render_profile(profiled: list[Measurement]) -> list[str]:
    with_breakdown = [m for m in profiled if m.breakdown]
    if not with_breakdown:
        return []
    out = ["", "CPU per callback by part, ms (profile phase of this run: each target once "
           "more, with py-spy attached; bench/profile.py):", "",
           "| part | " + " | ".join(m.target for m in with_breakdown) + " |",
           "|---|" + "---:|" * len(with_breakdown)]  # fmt: skip
    for key, label in PROFILE_ROWS:
        if not any(key in m.breakdown for m in with_breakdown):
            continue
        cells = [f"{m.breakdown[key]:.3f}" if key in m.breakdown else "–"
                 for m in with_breakdown]  # fmt: skip
        bold = key in ("workers", "total")
        label = f"**{label}**" if bold else label
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("| callbacks/s under the profiler | " + " | ".join(
        f"{m.rate:.0f}" for m in with_breakdown) + " |")  # fmt: skip
    out.append("| wrk (the client, same two cores), not in the total | " + " | ".join(
        f"{m.client_ms:.3f}" for m in with_breakdown) + " |")  # fmt: skip
    out.append("| PostgreSQL transactions committed / callback | " + " | ".join(
        _f(m.xact_per_cb, 2) for m in with_breakdown) + " |")  # fmt: skip
    out.append("| context switches / callback | " + " | ".join(
        f"{m.ctx_per_cb:.1f}" for m in with_breakdown) + " |")  # fmt: skip
    out.append("| py-spy samples | " + " | ".join(
        f"{m.profile_samples}" for m in with_breakdown) + " |")  # fmt: skip
    alone = [m for m in profiled if m.projector_alone]
    if alone:
        out += ["", "The projector alone (the service with `PROJECTOR=off` under the same "
                "load, then `webhook.projection.projector.drain` over its backlog, nothing else "
                "running):",
                "", "| target | appended /s (× ceiling) | p99 ms | backlog | drained in s | "
                "projected /s | CPU per event: Python ms | CPU per event: database ms |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for m in alone:
            a = m.projector_alone
            out.append(f"| {m.target} | {m.rate:.0f} ({_f(m.ratio, 2)}) | {m.p99_ms:.1f} | "
                       f"{a['events']:.0f} | {a['seconds']:.1f} | {a['rate']:,.0f} | "
                       f"{a['python_ms']:.3f} | {a['db_ms']:.3f} |")  # fmt: skip
    others = [m for m in profiled if not m.breakdown and not m.projector_alone]
    if others:
        out += ["", "Other profile-phase runs:", ""]
        out += [
            f"- {m.target}: {m.rate:.0f}/s (× ceiling {_f(m.ratio, 2)}), p99 "
            f"{m.p99_ms:.1f} ms, CPU {m.cpu_ms:.2f} ms per callback"
            for m in others
        ]
    return out


def _spread(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    fmt = f"{{:,.{digits}f}}"
    if len(values) == 1:
        return fmt.format(values[0])
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values),
                                              max(values)))  # fmt: skip


def write_doc(block: str) -> None:
    """Replace the generated block of the Ingestion section of docs/performance.md."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    current = DOC.read_text() if DOC.exists() else "# Performance\n"
    generated = f"{START}\n{block}{END}"
    if START in current and END in current:
        head, rest = current.split(START, 1)
        updated = head + generated + rest.split(END, 1)[1]
    else:
        updated = current.rstrip("\n") + (
            "\n\n## Ingestion\n\nLatest run of `make bench` (written by bench/run.py):\n\n"
            f"{generated}\n"
        )
    DOC.write_text(updated)


# ---------------------------------------------------------------- main


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """--pg-url and --env, as every benchmark that starts the service takes them."""
    p.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("TEST_DATABASE_URL")
        or "postgresql://127.0.0.1:5432/test",
        help="PostgreSQL server to create the throwaway databases on",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every gunicorn (e.g. WEB_CONCURRENCY=3)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=20, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3, help="seconds of warm-up per server")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2, help="repeat every target this often")
    p.add_argument(
        "--stored",
        type=int,
        default=1_000_000,
        help="events already stored for the '-stored' runs (0: skip them)",
    )
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--stored-backends", default="sqlite,postgresql")
    p.add_argument(
        "--textbook-backends",
        default="postgresql,sqlite",
        help="backends of the textbook handler (bench/textbook_app.py)",
    )
    p.add_argument("--variant", action="append", default=[], metavar="NAME:BACKEND:K=V,K=V",
                   help="one more service target per repeat, with this environment (APP=mod:app "
                   "serves another app, BENCH_SIDECAR=<poll s> runs the projector as `flask "
                   "events project --follow` beside PROJECTOR=off workers); e.g. "
                   "sync8:postgresql:GUNICORN_WORKER_CLASS=sync,WEB_CONCURRENCY=8")  # fmt: skip
    p.add_argument("--drain-timeout", type=float, default=300,
                   help="seconds to wait for the backlog to drain after a run")  # fmt: skip
    p.add_argument(
        "--profile",
        default="ceiling,ceiling-wsgi,postgresql,sqlite",
        help="targets of the profile phase (py-spy), after the repeats; '' for none "
        "(ceiling-wsgi: the ceiling without Flask, bench/wsgi_ceiling_app.py)",
    )
    p.add_argument(
        "--alone",
        default="postgresql,sqlite",
        help="backends whose projector is measured alone in the profile phase",
    )
    p.add_argument("--duplicates", type=float, default=0.03, help="share of exact duplicates")
    add_server_arguments(p)
    p.add_argument("--no-write", action="store_true", help="do not update docs/performance.md")
    p.add_argument("--keep", action="store_true", help="keep logs and request files")
    return p.parse_args(argv)  # fmt: skip


def pg_reachable(url: str) -> str | None:
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as err:  # any failure means: no PostgreSQL here
        return str(err).splitlines()[0]


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    path = RESULTS / time.strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if not keep:
            for f in path.glob("*.req"):
                f.unlink()


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: servers stopped, databases dropped


SERVICE, CEILING, TEXTBOOK = "wsgi:app", "bench.ceiling_app:app", "bench.textbook_app:app"
WSGI_CEILING = "bench.wsgi_ceiling_app:app"  # the ceiling without Flask


def parse_variant(spec: str) -> Target:
    """NAME:BACKEND:K=V,K=V (see --variant)."""
    name, backend, assignments = [*spec.split(":", 2), "", ""][:3]
    env = dict(kv.split("=", 1) for kv in assignments.split(",") if kv)
    app = env.pop("APP", SERVICE)
    return Target(name, "service", app, backend, env)


def ratio_to(ms: list[Measurement], start: Measurement, end: Measurement) -> None:
    ceiling = (start.rate + end.rate) / 2
    for m in ms:
        m.ratio = m.rate / ceiling
        m.sustained_ratio = m.sustained_rate / ceiling


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (bench/run.sh installs it)")
    backends = [b for b in args.backends.split(",") if b]
    stored_backends = [b for b in args.stored_backends.split(",") if b and args.stored > 0]
    textbook_backends = [b for b in args.textbook_backends.split(",") if b]
    variants = [parse_variant(v) for v in args.variant]
    profiled = [t for t in args.profile.split(",") if t]
    alone = [b for b in args.alone.split(",") if b]
    if (profiled or alone) and spy.py_spy() is None:
        log("py-spy is not installed: no profile phase (pip install py-spy)")
        profiled = []
    pg_url = normalize_database_url(args.pg_url)
    wanted = set(
        backends + stored_backends + textbook_backends + [v.backend or "" for v in variants] + alone
    )
    if "postgresql" in wanted:
        problem = pg_reachable(pg_url)
        if problem:
            log(f"PostgreSQL unreachable at {args.pg_url} ({problem}): skipping it")
            backends = [b for b in backends if b != "postgresql"]
            stored_backends = [b for b in stored_backends if b != "postgresql"]
            textbook_backends = [b for b in textbook_backends if b != "postgresql"]
            variants = [v for v in variants if v.backend != "postgresql"]
            alone = [b for b in alone if b != "postgresql"]
            profiled = [b for b in profiled if b != "postgresql"]
            wanted.discard("postgresql")
    env = dict(kv.split("=", 1) for kv in args.env)
    env.setdefault("GUNICORN_ACCESSLOG", "")  # no access log: the ceiling as fast as it gets
    env.setdefault("LOG_LEVEL", "warning")
    args.server_env = env
    settings = {**gunicorn_settings(env), **{k: env.get(k, "") for k in sorted(env)}}
    info = machine_note()
    log(f"load: {info['uptime']}")
    results: list[Measurement] = []
    preloaded: dict[str, Any] = {}
    with workspace(args.keep) as workdir:
        dbs = Databases(pg_url if "postgresql" in wanted else None, workdir)
        stored_urls: dict[str, str] = {}
        try:
            if stored_backends:
                for backend in stored_backends:
                    stored_urls[backend] = dbs.create(backend)
                log(f"storing {args.stored:,} events in {', '.join(stored_backends)} ...")
                preloaded = preload(list(stored_urls.values()), args.stored, 97, SECRET, log=log)
                log(f"stored in {preloaded['load_s']:.0f} s (cached: {preloaded['cached']}; "
                    f"+{preloaded['settle_s']:.0f} s VACUUM ANALYZE)")  # fmt: skip
            ceiling_rate = 0.0
            ceiling_t = Target("ceiling", "ceiling", CEILING)
            for r in range(1, args.repeat + 1):
                warm = write_requests(workdir / f"warm{r}.req", 5000 + r,
                                      int(4000 * args.warmup) + 1000, args.duplicates)  # fmt: skip
                fresh = write_requests(workdir / f"fresh{r}.req", 1000 + r,
                                       int(max(ceiling_rate, 4000) * 1.3 * args.duration),
                                       args.duplicates)  # fmt: skip
                ceiling = measure(ceiling_t, r, None, fresh, warm, args, None, workdir)
                ceiling_rate = max(ceiling_rate, ceiling.rate)
                results.append(ceiling)
                needed = int(ceiling.rate * 1.3 * args.duration)
                if len(fresh.bodies) < needed:
                    fresh = write_requests(fresh.path, 1000 + r, needed, args.duplicates)
                runs: list[tuple[Target, str, RequestFile, RequestFile, bool]] = []
                for backend in backends:
                    runs.append((Target(backend, "service", SERVICE, backend), backend, fresh,
                                 warm, True))  # fmt: skip
                    for v in variants:
                        if v.backend == backend:
                            runs.append((v, backend, fresh, warm, True))
                for backend in textbook_backends:
                    runs.append((Target(f"textbook-{backend}", "textbook", TEXTBOOK, backend),
                                 backend, fresh, warm, True))  # fmt: skip
                for v in variants:
                    if v.backend not in backends:
                        runs.append((v, v.backend or "postgresql", fresh, warm, True))
                if stored_urls:
                    more = write_requests(workdir / f"stored{r}.req", 2000 + r, needed,
                                          args.duplicates)  # fmt: skip
                    warm2 = write_requests(workdir / f"warm-stored{r}.req", 6000 + r,
                                           int(4000 * args.warmup) + 1000,
                                           args.duplicates)  # fmt: skip
                    for backend in stored_urls:
                        runs.append((Target(f"{backend}-stored", "service", SERVICE, backend),
                                     backend, more, warm2, False))  # fmt: skip
                measured = []
                for target, backend, requests, warmup, fresh_db in runs:
                    url = dbs.create(backend) if fresh_db else stored_urls[backend]
                    measured.append(measure(target, r, url, requests, warmup, args, dbs,
                                            workdir))  # fmt: skip
                    if fresh_db:
                        dbs.drop(url)
                # The ceiling again at the end: each ratio is to the mean of the two, so a
                # change of load on the machine during the repeat weighs on both sides.
                ceiling_end = measure(Target("ceiling-end", "ceiling", CEILING), r, None, fresh,
                                      warm, args, None, workdir)  # fmt: skip
                ratio_to(measured, ceiling, ceiling_end)
                results += [*measured, ceiling_end]
            if profiled or alone:
                results += profile_phase(profiled, alone, args, dbs, workdir)
        finally:
            dbs.close()
            for url in stored_urls.values():
                dbs.drop(url)
    info["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    command = "make bench" + (f"  # bench/run.py {' '.join(argv or sys.argv[1:])}"
                              if (argv or sys.argv[1:]) else "")  # fmt: skip
    block = render(results, info, command, {**settings, "connections": str(args.connections),
                                             "duration": f"{args.duration:g}s"},
                   preloaded)  # fmt: skip
    print(block)
    (workdir / "results.json").write_text(json.dumps(
        {"info": info, "preloaded": preloaded, "results": [asdict(m) for m in results]},
        indent=1, default=str))  # fmt: skip
    if not args.no_write:
        write_doc(block)
        log(f"wrote {DOC.relative_to(ROOT)}")
    return 0


def profile_phase(profiled: list[str], alone: list[str], args: argparse.Namespace,
                  dbs: Databases, workdir: Path) -> list[Measurement]:  # fmt: skip
    """Each profiled target once more with py-spy attached, between two ceilings; then
    the service with PROJECTOR=off and its projector alone over the backlog."""
    warm = write_requests(workdir / "warm-p.req", 7000, int(4000 * args.warmup) + 1000,
                          args.duplicates)  # fmt: skip
    fresh = write_requests(workdir / "fresh-p.req", 8000, int(4000 * 1.3 * args.duration),
                           args.duplicates)  # fmt: skip
    out: list[Measurement] = []
    ceiling = measure(Target("ceiling", "ceiling", CEILING), "P", None, fresh, warm, args, None,
                      workdir)  # fmt: skip
    measured: list[Measurement] = []
    for name in profiled:
        if name in ("ceiling", "ceiling-wsgi"):
            app = CEILING if name == "ceiling" else WSGI_CEILING
            t = Target(f"{name} (profiled)", "ceiling", app)
            measured.append(measure(t, "P", None, fresh, warm, args, None, workdir, True))
            continue
        url = dbs.create(name)
        t = Target(f"{name} (profiled)", "service", SERVICE, name)
        measured.append(measure(t, "P", url, fresh, warm, args, dbs, workdir, True))
        dbs.drop(url)
    for name in alone:
        url = dbs.create(name)
        t = Target(f"{name}, PROJECTOR=off", "service", SERVICE, name, {"PROJECTOR": "off"})
        measured.append(measure(t, "P", url, fresh, warm, args, dbs, workdir))
        dbs.drop(url)
    ceiling_end = measure(Target("ceiling-end", "ceiling", CEILING), "P", None, fresh, warm, args,
                          None, workdir)  # fmt: skip
    ratio_to(measured, ceiling, ceiling_end)
    # The profiled ceiling's breakdown is per callback like the others'.
    out += [ceiling, *measured, ceiling_end]
    return out


if __name__ == "__main__":
    sys.exit(main())
