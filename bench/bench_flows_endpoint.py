"""Benchmark POST /flows/data under gunicorn with the example booking handler.

Starts gunicorn on its own free 127.0.0.1 port against its own SQLite file (or a
throwaway database on --database-url's PostgreSQL server), pre-generates distinct
encrypted and signed requests (a mix of INIT, BACK, data_exchange and ping), then runs:

  serial    one client, one request at a time: the service time
  closed    N clients each sending its next request as soon as the last one answered
  open      requests fired at a fixed rate whatever the answers (latency measured from
            the scheduled send time, so a stalled server cannot hide its queue)

Latency is client-side (connect -> last byte). Every answer is decrypted and checked
after the run, and flow_exchanges is counted. Prints a Markdown table row per run and
writes JSON to bench/results/.

    .venv/bin/python bench/bench_flows_endpoint.py                     # default matrix
    .venv/bin/python bench/bench_flows_endpoint.py --setups sync:2:1 --rates 150
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from webhook.core.settings import normalize_database_url  # noqa: E402
from webhook.db import migrate  # noqa: E402
from webhook.db.engine import make_engine  # noqa: E402
from webhook.flows import crypto  # noqa: E402

APP_SECRET = "bench-app-secret"
PASSPHRASE = "bench passphrase"
HANDLER = "webhook.flows.example_booking:handler"


@dataclass
class Prepared:
    raw: bytes  # the full HTTP request
    aes_key: bytes
    iv: bytes
    action: str


@dataclass
class RunResult:
    name: str
    setup: str
    mode: str
    concurrency: int | None
    rate: float | None
    latencies_ms: list[float] = field(default_factory=list)
    # Open loop: how late the client itself started each send (its own CPU starvation).
    lags_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    bad_answers: int = 0
    load_before: str = ""
    load_after: str = ""

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        done = len(lat)

        def pct(p: float, values: list[float] = lat) -> float:
            n = len(values)
            return values[min(n - 1, max(0, round(p / 100 * n + 0.5) - 1))] if values else 0

        return {
            "name": self.name,
            "setup": self.setup,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "requests": done,
            "throughput_rps": round(done / self.wall_s, 1) if self.wall_s else 0,
            "p50_ms": round(pct(50), 2),
            "p90_ms": round(pct(90), 2),
            "p99_ms": round(pct(99), 2),
            "max_ms": round(lat[-1], 2) if lat else 0,
            "client_lag_p99_ms": round(pct(99, sorted(self.lags_ms)), 2),
            "statuses": self.statuses,
            "errors": self.errors,
            "bad_answers": self.bad_answers,
            "client_cpu_pct": round(100 * self.client_cpu_s / self.wall_s, 1) if self.wall_s else 0,
            "server_cpu_ms_per_request": round(1000 * self.server_cpu_s / done, 3) if done else 0,
            "load_before": self.load_before,
            "load_after": self.load_after,
        }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU time (user + system) of a process and its direct children (gunicorn workers)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(entry) == root_pid or int(fields[1]) == root_pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_load: float, max_wait: float) -> None:
    """Wait (bounded) until the 1-minute load average drops below ``max_load``."""
    deadline = time.time() + max_wait
    while time.time() < deadline and float(loadavg().split()[0]) >= max_load:
        time.sleep(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- requests -------------------------------------------------------------------------


def payload_for(i: int, rng: random.Random) -> dict[str, Any]:
    token = f"bench-{i}-{uuid.uuid4().hex[:12]}"
    roll = rng.random()
    base = {"version": "3.0", "flow_token": token}
    if roll < 0.05:
        return {"version": "3.0", "action": "ping"}
    if roll < 0.35:
        return {**base, "action": "INIT"}
    if roll < 0.50:
        slot = rng.choice(["2024-01-01T10:30", "2024-01-01T11:30"])
        return {**base, "action": "data_exchange", "screen": "APPOINTMENT", "data": {"slot": slot}}
    if roll < 0.80:
        email = "ana@example.com" if rng.random() < 0.7 else "not-an-email"
        data = {"name": "Zoë Núñez", "email": email, "party_size": 2}
        return {**base, "action": "data_exchange", "screen": "DETAILS", "data": data}
    if roll < 0.90:
        return {**base, "action": "BACK", "screen": "DETAILS", "data": {}}
    data = {"slot": "2024-01-01T10:30", "name": "Ana", "email": "ana@example.com", "terms": True}
    return {**base, "action": "data_exchange", "screen": "SUMMARY", "data": data}


def prepare(count: int, public_key: Any, port: int, seed: int) -> list[Prepared]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        payload = payload_for(i, rng)
        fields, aes_key, iv = crypto.encrypt_request(payload, public_key)
        body = json.dumps(fields, separators=(",", ":")).encode()
        head = (
            f"POST /flows/data HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nConnection: close\r\n"
            f"X-Hub-Signature-256: {crypto.signature_for(body, APP_SECRET)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(Prepared(head + body, aes_key, iv, payload["action"]))
    return out


# --- the client -----------------------------------------------------------------------


async def send(port: int, req: Prepared) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(req.raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        return status, body
    finally:
        writer.close()


def check_answer(req: Prepared, status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        answer = crypto.decrypt_response(body, req.aes_key, req.iv)
    except Exception:
        return False
    if req.action == "ping":
        return bool(answer == {"data": {"status": "active"}})
    return isinstance(answer, dict) and isinstance(answer.get("screen"), str)


async def closed_loop(
    port: int, reqs: list[Prepared], clients: int, duration: float, result: RunResult
) -> list[tuple[Prepared, int, bytes]]:
    answers: list[tuple[Prepared, int, bytes]] = []
    next_index = 0
    deadline = time.perf_counter() + duration

    async def client() -> None:
        nonlocal next_index
        while time.perf_counter() < deadline and next_index < len(reqs):
            req = reqs[next_index]
            next_index += 1
            started = time.perf_counter()
            try:
                status, body = await send(port, req)
            except OSError:
                result.errors += 1
                continue
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            answers.append((req, status, body))

    await asyncio.gather(*(client() for _ in range(clients)))
    return answers


async def open_loop(
    port: int, reqs: list[Prepared], rate: float, duration: float, result: RunResult
) -> list[tuple[Prepared, int, bytes]]:
    answers: list[tuple[Prepared, int, bytes]] = []
    total = min(len(reqs), int(rate * duration))
    start = time.perf_counter()

    async def one(i: int) -> None:
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        result.lags_ms.append((time.perf_counter() - scheduled) * 1000)
        try:
            status, body = await send(port, reqs[i])
        except OSError:
            result.errors += 1
            return
        result.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        answers.append((reqs[i], status, body))

    await asyncio.gather(*(one(i) for i in range(total)))
    return answers


def run(
    name: str,
    setup: str,
    mode: str,
    port: int,
    reqs: list[Prepared],
    *,
    server_pid: int,
    clients: int | None = None,
    rate: float | None = None,
    duration: float,
) -> RunResult:
    result = RunResult(name, setup, mode, clients, rate, load_before=loadavg())
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    server0 = tree_cpu_seconds(server_pid)
    t0 = time.perf_counter()
    if mode == "open":
        assert rate is not None
        answers = asyncio.run(open_loop(port, reqs, rate, duration, result))
    else:
        answers = asyncio.run(closed_loop(port, reqs, clients or 1, duration, result))
    result.wall_s = time.perf_counter() - t0
    time.sleep(0.5)  # the workers' last background inserts count too
    result.server_cpu_s = tree_cpu_seconds(server_pid) - server0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result.client_cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    result.load_after = loadavg()
    for req, status, body in answers:
        result.statuses[status] = result.statuses.get(status, 0) + 1
        result.bad_answers += not check_answer(req, status, body)
    return result


# --- the server -----------------------------------------------------------------------


class Server:
    def __init__(self, workdir: Path, database_url: str, setup: str) -> None:
        worker_class, workers, threads = setup.split(":")
        self.port = free_port()
        self.log = open(workdir / f"gunicorn-{setup.replace(':', '-')}.log", "wb")  # noqa: SIM115
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "FLOWS_PRIVATE_KEY": str(workdir / "flows_private_key.pem"),
            "FLOWS_PRIVATE_KEY_PASSPHRASE": PASSPHRASE,
            "FLOWS_HANDLER": HANDLER,
            "META_APP_SECRET": APP_SECRET,
            "BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": workers,
            "GUNICORN_THREADS": threads,
            "GUNICORN_WORKER_CLASS": worker_class,
            "LOG_LEVEL": "warning",
        }
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "gunicorn"), "--config", "gunicorn.conf.py",
             "--backlog", "2048", "wsgi:app"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"gunicorn did not start; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def make_database(workdir: Path, pg_url: str | None) -> tuple[str, Any]:
    """A migrated database for the run, and a function that drops it afterwards."""
    if not pg_url:
        url = f"sqlite:///{workdir / 'bench.db'}"
        cleanup = None
    else:
        admin_url = normalize_database_url(pg_url)
        name = f"bench_flows_{uuid.uuid4().hex[:10]}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)

        def cleanup() -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url, cleanup


def count_exchanges(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM flow_exchanges")).scalar_one())
    finally:
        engine.dispose()


def server_latency(url: str, since_id: int) -> dict[str, float]:
    """Server-side latency (request start -> answer built) from flow_exchanges."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            values = sorted(
                float(v)
                for (v,) in conn.execute(
                    text("SELECT latency_ms FROM flow_exchanges WHERE id > :i"), {"i": since_id}
                )
            )
    finally:
        engine.dispose()
    if not values:
        return {}
    n = len(values)
    return {f"server_p{p}_ms": round(values[min(n - 1, int(p / 100 * n))], 2) for p in (50, 99)}


def max_id(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM flow_exchanges")).scalar_one()
            )
    finally:
        engine.dispose()


# --- main -----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--setups", default="sync:2:1,sync:4:1,gthread:2:4",
        help="gunicorn worker_class:workers:threads, comma-separated")  # fmt: skip
    add("--clients", type=int, default=50, help="closed-loop clients")
    add("--rates", default="100,200", help="open-loop rates (req/s), comma-separated")
    add("--duration", type=float, default=10.0, help="seconds per run")
    add("--serial", type=int, default=300, help="requests sent one at a time (service time)")
    add("--database-url", default="", help="PostgreSQL server: a throwaway database is made there")
    add("--seed", type=int, default=6)
    add("--max-load", type=float, default=2.0, help="wait for the 1-min load to drop below this")
    add("--max-wait", type=float, default=120.0, help="...but at most this many seconds")
    add("--rounds", type=int, default=1, help="repeat the setups, interleaved, this many times")
    return parser.parse_args()


def bench_setup(
    args: argparse.Namespace, setup: str, workdir: Path, url: str, public_key: Any
) -> list[dict[str, Any]]:
    """Start gunicorn with one worker setup, run serial, closed and open loops, stop it."""
    rates = [float(r) for r in args.rates.split(",") if r]
    server = Server(workdir, url, setup)
    results = []
    try:
        pid, port = server.proc.pid, server.port
        need = 200 + args.serial + int(args.duration * (2500 + sum(rates)))
        pool = prepare(need, public_key, port, args.seed)
        run("warm-up", setup, "closed", port, pool[:200], server_pid=pid, clients=4, duration=30)
        used = 200
        plan: list[tuple[str, dict[str, Any]]] = [
            ("serial", {"mode": "closed", "clients": 1}),
            (f"closed {args.clients}", {"mode": "closed", "clients": args.clients}),
            *((f"open {r:g}/s", {"mode": "open", "rate": r}) for r in rates),
        ]
        for name, kw in plan:
            before = max_id(url)
            batch = pool[used : used + args.serial] if name == "serial" else pool[used:]
            kw.update(port=port, reqs=batch, server_pid=pid, duration=args.duration)
            res = run(name, setup, **kw)
            used += len(res.latencies_ms) + res.errors
            time.sleep(1.0)  # let the last background inserts land
            summary = {**res.summary(), **server_latency(url, before)}
            results.append(summary)
            print_row(summary)
    finally:
        server.stop()
    return results


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-flows-"))
    key_pem, _ = crypto.generate_key_pair(PASSPHRASE)
    (workdir / "flows_private_key.pem").write_bytes(key_pem)
    public_key = crypto.load_private_key(key_pem, PASSPHRASE).public_key()
    url, cleanup = make_database(workdir, args.database_url or None)
    backend = "postgresql" if args.database_url else "sqlite"
    results: list[dict[str, Any]] = []
    print(f"# flows endpoint benchmark: {backend}, {os.cpu_count()} CPUs, load {loadavg()}")
    print(
        "| setup | run | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | "
        "client lag p99 ms | server p50 / p99 ms | answers | server CPU ms/req | client CPU | "
        "load before -> after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for round_no in range(1, args.rounds + 1):
            for setup in args.setups.split(","):
                wait_for_quiet(args.max_load, args.max_wait)
                for summary in bench_setup(args, setup, workdir, url, public_key):
                    results.append({**summary, "backend": backend, "round": round_no})
        print(f"flow_exchanges rows: {count_exchanges(url)}; load after: {loadavg()}")
    finally:
        if cleanup:
            cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.rounds > 1:
        print_medians(results)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out / f"flows-{backend}-{stamp}.json").write_text(json.dumps(results, indent=2))


def print_medians(results: list[dict[str, Any]]) -> None:
    """Median over the rounds of each (setup, run): the neighbours' load varies a lot."""
    print("\nmedians over rounds")
    print("| setup | run | req/s | p50 ms | p90 ms | p99 ms | server CPU ms/req |")
    print("|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["setup"], r["name"]), []).append(r)
    for (setup, name), rs in groups.items():
        cols = ["throughput_rps", "p50_ms", "p90_ms", "p99_ms", "server_cpu_ms_per_request"]
        medians = [sorted(r[c] for r in rs)[len(rs) // 2] for c in cols]
        print(f"| {setup} | {name} | " + " | ".join(str(m) for m in medians) + " |")


def print_row(s: dict[str, Any]) -> None:
    ok = s["statuses"].get(200, 0)
    print(
        f"| {s['setup']} | {s['name']} | {s['requests']} | {s['throughput_rps']} | "
        f"{s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} | {s['max_ms']} | "
        f"{s['client_lag_p99_ms'] if s['mode'] == 'open' else ''} | "
        f"{s.get('server_p50_ms', '')} / {s.get('server_p99_ms', '')} | "
        f"{ok}/{s['requests']} ok, {s['bad_answers']} bad, {s['errors']} errors | "
        f"{s['server_cpu_ms_per_request']} | {s['client_cpu_pct']}% | "
        f"{s['load_before']} -> {s['load_after']} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
