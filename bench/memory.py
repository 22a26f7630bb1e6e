"""Memory of a gunicorn worker serving callbacks: VmHWM and VmRSS of every worker.

Starts the service as the ingestion benchmark does (bench/run.py ``start_server``:
gunicorn.conf.py, no access log, LOG_LEVEL=warning) on a throwaway SQLite file and a
throwaway PostgreSQL database (created on --pg-url, migrated with the served tree's
``flask db upgrade``, dropped after), sends --callbacks signed simulated callbacks
(webhook.replay.simulate, signed with bench/run.py's secret) from 8 concurrent clients,
with /healthz, /readyz and /metrics in between, then prints each worker's VmHWM (peak
resident memory) and VmRSS (resident now) from /proc/<pid>/status. Every answer must
be 200; a run with any other answer fails.

--flows also measures each database with the Flows data endpoint configured (a fresh
RSA key, the example booking handler, a Meta app secret) and sends it encrypted
INIT, data_exchange and ping requests besides the callbacks.

--rev REV (repeatable) measures a commit instead of the working tree: the commit is
exported with ``git archive`` into a temporary directory and served from there with
this virtualenv, so before/after numbers come from one run on one machine state.
"--rev ." is the working tree itself.

    .venv/bin/python -m bench.memory                          # the working tree
    .venv/bin/python -m bench.memory --rev main --rev . --flows
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.run import ROOT, SECRET, add_server_arguments, pg_reachable, start_server, stop_server
from webhook.core.settings import normalize_database_url
from webhook.ingest.signing import sign_headers
from webhook.replay.simulate import SimulationConfig, simulate

CLIENTS = 8
FLOWS_PASSPHRASE = "memory bench passphrase"
FLOWS_APP_SECRET = "memory-bench-app-secret"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Worker:
    pid: int
    hwm_mb: float
    rss_mb: float


@dataclass
class Result:
    tree: str
    database: str
    flows: bool
    workers: list[Worker]
    answers: dict[str, int]


def proc_status_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process in MB, from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmHWM"], values["VmRSS"]


# ---------------------------------------------------------------- trees and databases


@contextlib.contextmanager
def tree_at(rev: str) -> Iterator[Path]:
    """The working tree for ".", else the commit exported into a temporary directory."""
    if rev == ".":
        yield ROOT
        return
    with tempfile.TemporaryDirectory(prefix="memory-tree-") as tmp:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True
        ).stdout
        tar_path = Path(tmp) / "tree.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(Path(tmp) / "tree", filter="data")
        yield Path(tmp) / "tree"


def describe(rev: str) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    if rev == ".":
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return f"working tree ({git('rev-parse', '--short', 'HEAD')}{' modified' if dirty else ''})"
    return f"{rev} ({git('rev-parse', '--short', rev + '^{commit}')})"


@contextlib.contextmanager
def database(backend: str, pg_url: str, workdir: Path, tree: Path) -> Iterator[str]:
    """A new database, migrated by the served tree's own `flask db upgrade`."""
    name = f"mem_{uuid.uuid4().hex[:10]}"
    admin = None
    if backend == "sqlite":
        url = f"sqlite:///{workdir / (name + '.db')}"
    else:
        admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(pg_url).set(database=name).render_as_string(False)
    try:
        env = {**os.environ, "DATABASE_URL": url, "FLASK_APP": "wsgi", "LOG_LEVEL": "warning"}
        subprocess.run(
            [sys.executable, "-m", "flask", "db", "upgrade"],
            cwd=tree,
            env=env,
            check=True,
            capture_output=True,
        )
        yield url
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


# ---------------------------------------------------------------- traffic


@dataclass
class Request:
    label: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] | None = None


def callback_requests(count: int) -> list[Request]:
    bodies = simulate(SimulationConfig(messages=count // 3 + 10, seed=7))[1][:count]
    now = int(time.time())
    out = []
    for i, body in enumerate(bodies):
        headers = {
            "Content-Type": "application/json",
            **sign_headers(SECRET, body, f"mem{i:x}", now),
        }
        out.append(Request("callback", "/sinch/callbacks", body, headers))
    return out


def flows_setup(workdir: Path, count: int) -> tuple[dict[str, str], list[Request]]:
    """Environment configuring the Flows endpoint, and encrypted, signed requests for it."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from webhook.flows import crypto

    private_pem, public_pem = crypto.generate_key_pair(FLOWS_PASSPHRASE)
    key_file = workdir / "flows_private_key.pem"
    key_file.write_bytes(private_pem)
    public_key = load_pem_public_key(public_pem)
    assert isinstance(public_key, RSAPublicKey)
    env = {
        "FLOWS_PRIVATE_KEY": str(key_file),
        "FLOWS_PRIVATE_KEY_PASSPHRASE": FLOWS_PASSPHRASE,
        "FLOWS_HANDLER": "webhook.flows.example_booking:handler",
        "META_APP_SECRET": FLOWS_APP_SECRET,
    }
    payloads: list[dict[str, Any]] = [
        {"version": "3.0", "action": "ping"},
        {"version": "3.0", "action": "INIT", "flow_token": "mem-init"},
        {
            "version": "3.0",
            "action": "data_exchange",
            "screen": "APPOINTMENT",
            "flow_token": "mem-slot",
            "data": {"slot": "2024-01-01T10:30"},
        },
    ]
    out = []
    for i in range(count):
        fields, _, _ = crypto.encrypt_request(payloads[i % len(payloads)], public_key)
        body = json.dumps(fields).encode()
        signature = crypto.signature_for(body, FLOWS_APP_SECRET)
        headers = {"Content-Type": "application/json", crypto.SIGNATURE_HEADER: signature}
        out.append(Request("flows", "/flows/data", body, headers))
    return env, out


def with_probes(requests: list[Request], every: int = 50) -> list[Request]:
    out: list[Request] = []
    for i, req in enumerate(requests):
        if i % every == 0:
            out += [Request(p.strip("/"), p) for p in ("/healthz", "/readyz", "/metrics")]
        out.append(req)
    return out


def send_all(port: int, requests: list[Request]) -> dict[str, int]:
    """Send every request (a new connection each, so both workers get a share)."""

    def one(req: Request) -> str:
        r = urllib.request.Request(
            f"http://127.0.0.1:{port}{req.path}",
            data=req.body,
            headers=req.headers or {},
            method="POST" if req.body is not None else "GET",
        )
        try:
            with urllib.request.urlopen(r, timeout=30) as answer:
                answer.read()
                return f"{req.label} {answer.status}"
        except urllib.error.HTTPError as err:
            return f"{req.label} {err.code}"

    with ThreadPoolExecutor(CLIENTS) as pool:
        return dict(sorted(Counter(pool.map(one, requests)).items()))


# ---------------------------------------------------------------- one measurement


def measure(
    tree_label: str, tree: Path, backend: str, flows: bool, args: argparse.Namespace, workdir: Path
) -> Result:
    env = {
        "GUNICORN_ACCESSLOG": "",
        "LOG_LEVEL": "warning",
        "SINCH_WEBHOOK_SECRETS": SECRET,
        **dict(kv.split("=", 1) for kv in args.env),
    }
    requests = callback_requests(args.callbacks)
    if flows:
        flows_env, flows_requests = flows_setup(workdir, max(30, args.callbacks // 10))
        env.update(flows_env)
        mixed = []
        for i, req in enumerate(requests):
            mixed += [req, flows_requests[i]] if i < len(flows_requests) else [req]
        requests = mixed
    with database(backend, args.pg_url, workdir, tree) as url:
        env["DATABASE_URL"] = url
        log_path = workdir / f"{backend}{'-flows' if flows else ''}.log"
        server = start_server("wsgi:app", env, log_path, cwd=tree)
        try:
            answers = send_all(server.port, with_probes(requests))
            time.sleep(0.5)
            workers = [Worker(pid, *proc_status_mb(pid)) for pid in sorted(server.workers())]
        finally:
            stop_server(server)
    bad = {k: v for k, v in answers.items() if not k.endswith(" 200")}
    if bad:
        raise SystemExit(f"{tree_label} {backend}: unexpected answers {bad}; see {log_path}")
    result = Result(tree_label, backend, flows, workers, answers)
    peaks = ", ".join(f"{w.hwm_mb:.1f}" for w in workers)
    log(f"{tree_label} {backend}{' +flows' if flows else ''}: VmHWM {peaks} MB ({answers})")
    return result


def render(results: list[Result]) -> str:
    lines = [
        "| tree | database | Flows endpoint | worker | VmHWM MB | VmRSS MB |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in results:
        for w in r.workers:
            lines.append(
                f"| {r.tree} | {r.database} | {'configured' if r.flows else 'off'} | "
                f"{w.pid} | {w.hwm_mb:.1f} | {w.rss_mb:.1f} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--rev",
        action="append",
        default=[],
        help="commit to measure (repeatable); '.' is the working tree (default)",
    )
    p.add_argument("--callbacks", type=int, default=300, help="callbacks sent per server")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument(
        "--flows", action="store_true", help="also measure with the Flows data endpoint configured"
    )
    add_server_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.pg_url = normalize_database_url(args.pg_url)
    backends = [b for b in args.backends.split(",") if b]
    if "postgresql" in backends and (problem := pg_reachable(args.pg_url)):
        log(f"PostgreSQL unreachable at {args.pg_url} ({problem}): skipping it")
        backends.remove("postgresql")
    results = []
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        for rev in args.rev or ["."]:
            label = describe(rev)
            with tree_at(rev) as tree:
                for backend in backends:
                    for flows in (False, True) if args.flows else (False,):
                        results.append(measure(label, tree, backend, flows, args, Path(tmp)))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
