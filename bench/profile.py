"""Where a callback's CPU goes: py-spy samples of the gunicorn workers, sorted into parts.

    .venv/bin/python -m bench.profile --backend postgresql --seconds 15

Standalone, it starts one server (the service on a throwaway database, or the
ceiling), drives it with wrk and prints the breakdown and the busiest functions.
bench/run.py uses the same functions for the CPU table of `make bench`.

py-spy (`pip install py-spy`, which bench/run.sh does) samples every thread that is
running or runnable (not the idle ones), so a sample is a slice of CPU time, in user
or kernel mode alike (a thread in send() is on a CPU). Each sample is given to one
part by its innermost frame that belongs to a part (PARTS below); the samples of the
projector thread all go to "projector". The shares are then scaled by the workers'
CPU time measured in /proc over the same seconds.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# The parts of a callback's CPU, in the order of the published table.
PARTS = {
    "gunicorn": "gunicorn: HTTP parsing, sockets, its event loop",
    "flask": "Flask/Werkzeug and the app's hooks (request id, deadline, metrics, log)",
    "app": "the app's own code (signature, JSON, append and its group commit)",
    "driver": "database driver (SQLAlchemy, psycopg / sqlite3) and its waits",
    "handoff": "thread hand-offs (locks, events, the thread pool's queue)",
    "projector": "projector thread (read, parse, fold, upsert, commit)",
    "other": "other (interpreter start-up, GC, unattributed)",
}
# py-spy names files relative to sys.path: "flask/app.py", "threading.py", "webhook/ingest.py".
_HOOKS = {"webhook/observe.py", "webhook/logs.py", "webhook/metrics.py", "webhook/deadline.py",
          "webhook/errors.py", "webhook/state.py"}  # fmt: skip
_HOOK_FUNCS = {"_bound_database_waits", "_end_database_bound"}  # in webhook/routes.py
_DRIVER = {"sqlalchemy", "psycopg", "psycopg_binary", "psycopg_pool", "sqlite3"}
_DRIVER_FILES = {"webhook/db_psycopg.py", "webhook/db.py"}
_HANDOFF_FILES = {"threading.py", "queue.py"}
_GUNICORN_FILES = {"selectors.py", "socket.py", "ssl.py"}
_FLASK = {"flask", "werkzeug", "prometheus_client", "logging", "click", "blinker",
          "itsdangerous", "markupsafe", "jinja2"}  # fmt: skip
_APP = {"webhook", "bench", "orjson", "gevent"}
# Standard-library helpers: a sample in one belongs to whoever called it (uuid4 for
# the request id: the hooks; hmac for the signature: the app; json for get_json: Flask).
_GENERIC = {"hmac.py", "hashlib.py", "datetime.py", "uuid.py", "re.py", "enum.py",
            "functools.py", "typing.py", "random.py", "base64.py", "contextlib.py",
            "copy.py", "weakref.py", "abc.py", "<string>"}  # fmt: skip
_GENERIC_ROOTS = {"json", "email", "collections", "urllib", "http", "encodings", "re",
                  "importlib", "<frozen importlib._bootstrap>"}  # fmt: skip


def py_spy() -> str | None:
    """py-spy on PATH, or next to this interpreter (the virtualenv's bin)."""
    found = shutil.which("py-spy")
    if found:
        return found
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else None


def start_spy(pid: int, seconds: float, out: Path, rate: int = 200,
              gil: bool = False) -> subprocess.Popen[bytes]:  # fmt: skip
    """py-spy record on ``pid`` and its children (gunicorn's workers), raw stacks to ``out``.

    ``gil``: sample only the thread holding the GIL (Python CPU) instead of every
    running or runnable thread.
    """
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--subprocesses", "--rate", str(rate),
         "--format", "raw", "--nonblocking", "--duration", str(max(1, round(seconds))),
         "-o", str(out), *(["--gil"] if gil else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _frame(text: str) -> tuple[str, str]:
    """'function (path/file.py:123)' -> (function, path/file.py)."""
    name, _, rest = text.partition(" (")
    path = rest.rsplit(":", 1)[0] if ":" in rest else rest.rstrip(")")
    return name, path


def classify(frames: list[tuple[str, str]]) -> str:
    """The part one stack (root first) belongs to."""
    for name, path in frames:
        if name.endswith("_run") and path == "webhook/projector.py":
            return "projector"
    for name, path in reversed(frames):
        root = path.split("/", 1)[0]
        if path in _HOOKS or (path == "webhook/routes.py" and name in _HOOK_FUNCS):
            return "flask"
        if root in _DRIVER or path in _DRIVER_FILES:
            return "driver"
        if path in _HANDOFF_FILES or path.startswith("concurrent/futures/"):
            return "handoff"
        if root == "gunicorn" or path in _GUNICORN_FILES:
            return "gunicorn"
        if root in _FLASK:
            return "flask"
        if root in _APP:
            return "app"
        if path in _GENERIC or root in _GENERIC_ROOTS:
            continue
    return "other"


@dataclass
class Profile:
    samples: int = 0
    parts: collections.Counter[str] = field(default_factory=collections.Counter)
    # Innermost frames per part: what inside each part takes the time.
    leaves: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    functions: collections.Counter[str] = field(default_factory=collections.Counter)  # total

    def share(self, part: str) -> float:
        return self.parts[part] / self.samples if self.samples else 0.0


def thread_group(frames: list[tuple[str, str]]) -> str:
    """Which thread a stack is from: "projector", "pool" (a request thread) or "main"."""
    for name, path in frames:
        if name.endswith("_run") and path == "webhook/projector.py":
            return "projector"
    for name, path in frames:
        if name == "_worker" and path == "concurrent/futures/thread.py":
            return "pool"
    return "main"


def read_groups(collapsed: Path, master_pid: int | None = None) -> dict[str, Profile]:
    """read_profile per thread group (see thread_group)."""
    groups: dict[str, Profile] = {}
    read_profile(collapsed, master_pid, groups)
    return groups


def read_profile(collapsed: Path, master_pid: int | None = None,
                 groups: dict[str, Profile] | None = None) -> Profile:  # fmt: skip
    """Sort the samples of a py-spy raw file into parts (the master's samples left out).

    With ``groups``, also sort them per thread group into that dict.
    """
    prof = Profile()
    if not collapsed.exists():
        return prof
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        raw = stack.split(";")
        processes = [f for f in raw[:2] if f.startswith("process ")]
        if master_pid is not None and len(processes) == 1:  # the master's own thread
            continue
        frames = [_frame(f) for f in raw if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        c = int(count)
        part = classify(frames)
        targets = [prof]
        if groups is not None:
            targets.append(groups.setdefault(thread_group(frames), Profile()))
        for target in targets:
            target.samples += c
            target.parts[part] += c
            name, path = frames[-1]
            target.leaves[part][f"{name} ({path})"] += c
            for name, path in set(frames):
                target.functions[f"{name} ({path})"] += c
    return prof


def describe(prof: Profile, n: int = 25) -> str:
    out = [f"{prof.samples} samples", ""]
    for part in PARTS:
        out.append(f"{100 * prof.share(part):5.1f}%  {part}")
        for leaf, c in prof.leaves[part].most_common(4):
            out.append(f"         {100 * c / max(prof.samples, 1):5.1f}%  {leaf}")
    out += ["", "total time (function and what it calls):"]
    out += [f"  {100 * c / max(prof.samples, 1):5.1f}%  {f}"
            for f, c in prof.functions.most_common(n)]  # fmt: skip
    return "\n".join(out)


def main() -> int:
    from bench.run import (
        SECRET,
        Databases,
        log,
        pg_reachable,
        run_wrk,
        start_server,
        stop_server,
        write_requests,
    )
    from webhook.core.settings import normalize_database_url

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--backend", choices=["sqlite", "postgresql", "ceiling"], default="postgresql")
    p.add_argument("--app", default="wsgi:app", help="the app to serve (not for ceiling)")
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--gil", action="store_true", help="sample only the GIL holder")
    p.add_argument("--no-spy", action="store_true", help="the same run without py-spy")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--pg-url", default="postgresql://127.0.0.1:5432/test")
    args = p.parse_args()
    if not py_spy():
        sys.exit("py-spy is not installed (pip install py-spy)")
    env = {"GUNICORN_ACCESSLOG": "", "LOG_LEVEL": "warning",
           **dict(kv.split("=", 1) for kv in args.env)}  # fmt: skip
    pg_url = normalize_database_url(args.pg_url)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dbs = Databases(pg_url if args.backend == "postgresql" and not pg_reachable(pg_url)
                        else None, work)  # fmt: skip
        try:
            requests = write_requests(work / "req", 4242, 3000 * args.seconds, 0.03)
            if args.backend == "ceiling":
                server = start_server("bench.ceiling_app:app", env, work / "log")
            else:
                url = dbs.create(args.backend)
                server = start_server(args.app, {**env, "DATABASE_URL": url,
                                                 "SINCH_WEBHOOK_SECRETS": SECRET},
                                      work / "log")  # fmt: skip
            try:
                out = work / "stacks.txt"
                spy_proc = None
                if not args.no_spy:
                    spy_proc = start_spy(server.proc.pid, args.seconds, out, args.rate, args.gil)
                result = run_wrk(server.url, requests.path, args.seconds, args.connections, 1)
                if spy_proc is not None:
                    spy_proc.wait(timeout=60)
            finally:
                stop_server(server)
            rate = result["requests"] / (result["duration_us"] / 1e6)
            log(f"{args.backend}: {rate:.0f}/s under the profiler")
            groups = read_groups(out, server.proc.pid)
            print(describe(read_profile(out, server.proc.pid), args.top))
            for name, prof in sorted(groups.items()):
                print(f"\n==== thread group: {name}\n{describe(prof, args.top)}")
        finally:
            dbs.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
