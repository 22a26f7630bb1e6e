"""Ingestion benchmark: the real service on SQLite and PostgreSQL against a bare Flask ceiling.

Every target runs under the same gunicorn settings (gunicorn.conf.py plus the same
environment) and is fed by wrk through bench/replay.lua with pre-generated, distinct,
correctly signed callbacks (webhook.replay.simulate: submits, delivery reports, flow
completions, ~3% exact duplicates). Ratios to the ceiling are taken within one
repeat, so a noisy machine moves both sides together. See README "Benchmarks".
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
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

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


def cpu_ticks(pid: int) -> int:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    return 0


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
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", app],
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
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line[len("BENCH_JSON ") :])
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


# ---------------------------------------------------------------- one measurement


@dataclass
class Measurement:
    repeat: int
    target: str
    rate: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    cpu_s_per_1000: float
    service_cpu_s: float
    db_cpu_s: float
    peak_rss_mb: float
    errors: int
    error_detail: dict[str, int]
    locked: int
    sent: int
    distinct_sent: int
    stored: int | None
    wraps: int
    workers: int
    ratio: float | None = None
    notes: list[str] = field(default_factory=list)


def measure(target: str, repeat: int, app: str, env: dict[str, str], url: str | None,
            requests: RequestFile, warmup: RequestFile, args: argparse.Namespace,
            dbs: Databases | None, workdir: Path) -> Measurement:  # fmt: skip
    log_path = workdir / f"{target}-r{repeat}.log"
    server_env = dict(env)
    if url is not None:
        server_env["DATABASE_URL"] = url
        server_env["SINCH_WEBHOOK_SECRETS"] = SECRET
    server = start_server(app, server_env, log_path)
    try:
        if args.warmup > 0:
            run_wrk(server.url, warmup.path, args.warmup, args.connections, args.wrk_threads)
        before_rows = stored_events(url) if url else None
        workers = server.workers()
        pg_pids = dbs.backend_pids(url) if dbs and url else []
        service_pids = [server.proc.pid, *workers]
        cpu0 = {p: cpu_ticks(p) for p in service_pids + pg_pids}
        result = run_wrk(server.url, requests.path, args.duration, args.connections,
                         args.wrk_threads)  # fmt: skip
        # Backends that appeared during the run started from zero.
        pg_pids = sorted(set(pg_pids) | set(dbs.backend_pids(url) if dbs and url else []))
        # A process gone by the end (a pooled connection closed) reads 0: count nothing.
        service_cpu = sum(max(0, cpu_ticks(p) - cpu0.get(p, 0)) for p in service_pids) / CLK_TCK
        db_cpu = sum(max(0, cpu_ticks(p) - cpu0.get(p, 0)) for p in pg_pids) / CLK_TCK
        rss = max((peak_rss_mb(p) for p in server.workers()), default=0.0)
        worker_count = len(server.workers())
    finally:
        stop_server(server)
    after_rows = stored_events(url) if url else None
    log_text = log_path.read_text(errors="replace")
    locked = log_text.count("database is locked")
    sent = sent_bodies(requests, result["sent"], args.wrk_threads)
    requests_done = int(result["requests"])
    seconds = result["duration_us"] / 1e6
    errors = dict(result["errors"])
    m = Measurement(
        repeat=repeat,
        target=target,
        rate=requests_done / seconds,
        p50_ms=result["latency_us"]["p50"] / 1000,
        p99_ms=result["latency_us"]["p99"] / 1000,
        p999_ms=result["latency_us"]["p999"] / 1000,
        cpu_s_per_1000=(service_cpu + db_cpu) / requests_done * 1000,
        service_cpu_s=service_cpu,
        db_cpu_s=db_cpu,
        peak_rss_mb=rss,
        errors=sum(errors.values()),
        error_detail={k: v for k, v in errors.items() if v},
        locked=locked,
        sent=len(sent),
        distinct_sent=len({hashlib.sha256(b).digest() for b in sent}),
        stored=(after_rows - before_rows) if after_rows is not None and before_rows is not None
        else None,
        wraps=int(result["wraps"]),
        workers=worker_count,
    )  # fmt: skip
    if m.wraps and url:
        m.notes.append(f"request file ran out ({m.wraps} wraps): bodies were reused")
    if m.stored is not None and abs(m.distinct_sent - m.stored) > args.connections:
        m.notes.append(f"stored {m.stored} events for {m.distinct_sent} distinct bodies sent")
    log(f"{target:>16} r{repeat}: {m.rate:7.0f}/s p50 {m.p50_ms:.1f} ms p99 {m.p99_ms:.1f} ms "
        f"cpu {m.cpu_s_per_1000:.2f} s/1000 rss {m.peak_rss_mb:.0f} MB errors {m.errors} "
        f"locked {locked} sent {m.sent} distinct {m.distinct_sent} stored {m.stored}")  # fmt: skip
    return m


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


def render(results: list[Measurement], info: dict[str, str], command: str,
           settings: dict[str, str]) -> str:  # fmt: skip
    lines = [
        f"Command: `{command}`  ",
        f"Date: {info['date']}, commit {info['commit']}  ",
        f"Machine: {info['machine']}  ",
        f"Load: `{info['uptime']}` (at the start) / `{info.get('uptime_end', '?')}` (at the end)  ",
        "Settings (identical for every target): "
        + ", ".join(f"`{k}={v}`" for k, v in settings.items()),
        "",
        "| repeat | target | callbacks/s | × ceiling | p50 ms | p99 ms | CPU s / 1000 "
        "(service + db) | peak RSS / worker MB | errors | database is locked | sent / distinct "
        "/ stored |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for m in results:
        ratio = f"{m.ratio:.2f}" if m.ratio is not None else "–"
        cpu = f"{m.cpu_s_per_1000:.2f} ({m.service_cpu_s:.0f} + {m.db_cpu_s:.0f} s)"
        stored = "–" if m.stored is None else str(m.stored)
        counts = "–" if m.stored is None else f"{m.sent} / {m.distinct_sent} / {stored}"
        lines.append(
            f"| {m.repeat} | {m.target} | {m.rate:.0f} | {ratio} | {m.p50_ms:.1f} | "
            f"{m.p99_ms:.1f} | {cpu} | {m.peak_rss_mb:.0f} | {m.errors} | "
            f"{m.locked if m.stored is not None else '–'} | {counts} |"
        )
    notes = [f"- repeat {m.repeat} {m.target}: {n}" for m in results for n in m.notes]
    lines += [
        "",
        "× ceiling: callbacks/s over the mean of the ceiling's at the start and at the "
        "end of the same repeat. CPU: gunicorn master + workers, plus the PostgreSQL "
        "backends of the benchmark database (SQLite works inside the workers).",
    ]
    lines += ["", *notes] if notes else []
    ceilings = {"ceiling", "ceiling-end"}
    targets = [t for t in dict.fromkeys(m.target for m in results) if t not in ceilings]
    summary = ["", "Spread over repeats (min / median / max):", "",
               "| target | × ceiling | callbacks/s | p99 ms |", "|---|---|---|---|"]  # fmt: skip
    for t in targets:
        ms = [m for m in results if m.target == t]
        summary.append(
            f"| {t} | {_spread([m.ratio or 0 for m in ms], 2)} | "
            f"{_spread([m.rate for m in ms], 0)} | {_spread([m.p99_ms for m in ms], 1)} |"
        )
    ms = [m for m in results if m.target in ceilings]
    summary.append(f"| ceiling (start and end) | 1 | {_spread([m.rate for m in ms], 0)} | "
                   f"{_spread([m.p99_ms for m in ms], 1)} |")  # fmt: skip
    for backend in ("sqlite", "postgresql"):
        pairs = [(e.rate, s.rate) for e in results for s in results if e.target == backend
                 and s.target == f"{backend}-stored" and e.repeat == s.repeat]  # fmt: skip
        if pairs:
            ratios = [s / e for e, s in pairs]
            summary.append(f"\n{backend}: with the store full / empty, same repeat: "
                           f"{_spread(ratios, 2)}")  # fmt: skip
    return "\n".join(lines + summary) + "\n"


def _spread(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    fmt = f"{{:.{digits}f}}"
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


def main(argv: list[str] | None = None) -> int:  # noqa: C901 (the benchmark's steps in order)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (bench/run.sh installs it)")
    backends = [b for b in args.backends.split(",") if b]
    stored_backends = [b for b in args.stored_backends.split(",") if b and args.stored > 0]
    pg_url = normalize_database_url(args.pg_url)
    if "postgresql" in backends + stored_backends:
        problem = pg_reachable(pg_url)
        if problem:
            log(f"PostgreSQL unreachable at {args.pg_url} ({problem}): skipping it")
            backends = [b for b in backends if b != "postgresql"]
            stored_backends = [b for b in stored_backends if b != "postgresql"]
    env = dict(kv.split("=", 1) for kv in args.env)
    env.setdefault("GUNICORN_ACCESSLOG", "")  # no access log: the ceiling as fast as it gets
    env.setdefault("LOG_LEVEL", "warning")
    settings = {**gunicorn_settings(env), **{k: env.get(k, "") for k in sorted(env)}}
    info = machine_note()
    log(f"load: {info['uptime']}")
    results: list[Measurement] = []
    with workspace(args.keep) as workdir:
        dbs = Databases(pg_url if "postgresql" in backends + stored_backends else None, workdir)
        try:
            stored_urls: dict[str, str] = {}
            if stored_backends:
                for backend in stored_backends:
                    stored_urls[backend] = dbs.create(backend)
                log(f"storing {args.stored} events in {', '.join(stored_backends)} ...")
                timing = preload(list(stored_urls.values()), args.stored, 97, SECRET)
                source = "from the cache" if timing["cached"] else "generated, now cached"
                settle = timing["settle_s"]
                log(f"stored in {timing['load_s']:.0f} s ({source}; +{settle:.0f} s analyze)")
            ceiling_rate = 0.0
            for r in range(1, args.repeat + 1):
                warm = write_requests(
                    workdir / f"warm{r}.req",
                    5000 + r,
                    int(4000 * args.warmup) + 1000,
                    args.duplicates,
                )
                fresh = write_requests(workdir / f"fresh{r}.req", 1000 + r,
                                       int(max(ceiling_rate, 4000) * 1.3 * args.duration),
                                       args.duplicates)  # fmt: skip
                ceiling = measure("ceiling", r, "bench.ceiling_app:app", env, None, fresh,
                                  warm, args, None, workdir)  # fmt: skip
                ceiling_rate = max(ceiling_rate, ceiling.rate)
                results.append(ceiling)
                needed = int(ceiling.rate * 1.3 * args.duration)
                if len(fresh.bodies) < needed:
                    fresh = write_requests(fresh.path, 1000 + r, needed, args.duplicates)
                runs: list[tuple[str, str, RequestFile, RequestFile]] = []
                for backend in backends:
                    runs.append((backend, dbs.create(backend), fresh, warm))
                if stored_urls:
                    more = write_requests(workdir / f"stored{r}.req", 2000 + r, needed,
                                          args.duplicates)  # fmt: skip
                    warm2 = write_requests(
                        workdir / f"warm-stored{r}.req",
                        6000 + r,
                        int(4000 * args.warmup) + 1000,
                        args.duplicates,
                    )
                    for backend, url in stored_urls.items():
                        runs.append((f"{backend}-stored", url, more, warm2))
                measured = []
                for target, url, requests, warmup in runs:
                    measured.append(measure(target, r, "wsgi:app", env, url, requests, warmup,
                                            args, dbs, workdir))  # fmt: skip
                    if not target.endswith("-stored"):
                        dbs.drop(url)
                # The ceiling again at the end: each ratio is to the mean of the two, so a
                # change of load on the machine during the repeat weighs on both sides.
                ceiling_end = measure("ceiling-end", r, "bench.ceiling_app:app", env, None,
                                      fresh, warm, args, None, workdir)  # fmt: skip
                for m in measured:
                    m.ratio = m.rate / ((ceiling.rate + ceiling_end.rate) / 2)
                results += [*measured, ceiling_end]
        finally:
            dbs.close()
            for url in locals().get("stored_urls", {}).values():
                dbs.drop(url)
    info["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    command = "make bench" + (f"  # bench/run.py {' '.join(argv or sys.argv[1:])}"
                              if (argv or sys.argv[1:]) else "")  # fmt: skip
    block = render(results, info, command, {**settings, "connections": str(args.connections),
                                             "duration": f"{args.duration:g}s"})  # fmt: skip
    print(block)
    (workdir / "results.json").write_text(json.dumps([asdict(m) for m in results], indent=1))
    if not args.no_write:
        write_doc(block)
        log(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
