"""Profile the ingest path under load: py-spy samples every gunicorn worker while wrk runs.

    .venv/bin/python -m bench.profile --backend postgresql --seconds 15

Needs py-spy (`pip install py-spy`; not a project dependency). Samples only the thread
holding the GIL, so the shares are of the Python CPU time (waits on the database or the
network do not show). Prints the functions with the most samples, by own time and by
total time, for docs/performance.md.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.run import (
    SECRET,
    Databases,
    log,
    normalize_database_url,
    pg_reachable,
    run_wrk,
    start_server,
    stop_server,
    write_requests,
)


def top(collapsed: Path, n: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  for f in stack.split(";")]  # fmt: skip
        c = int(count)
        samples += c
        own[frames[-1]] += c
        for f in set(frames):
            total[f] += c
    out = [f"{samples} samples", "", "own time:"]
    out += [f"  {100 * c / samples:5.1f}%  {f}" for f, c in own.most_common(n)]
    out += ["", "total time (function and what it calls):"]
    out += [f"  {100 * c / samples:5.1f}%  {f}" for f, c in total.most_common(n)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--backend", choices=["sqlite", "postgresql", "ceiling"], default="postgresql")
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--pg-url", default="postgresql://127.0.0.1:5432/test")
    args = p.parse_args()
    spy = shutil.which("py-spy")
    if not spy:
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
                server = start_server("wsgi:app", {**env, "DATABASE_URL": url,
                                                   "SINCH_WEBHOOK_SECRETS": SECRET},
                                      work / "log")  # fmt: skip
            try:
                out = work / "stacks.txt"
                spy_proc = subprocess.Popen(
                    [spy, "record", "--pid", str(server.proc.pid), "--subprocesses",
                     "--rate", "250", "--format", "raw", "--nonblocking", "--gil",
                     "--duration", str(args.seconds), "-o", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                result = run_wrk(server.url, requests.path, args.seconds, args.connections, 1)
                spy_proc.wait(timeout=60)
            finally:
                stop_server(server)
            rate = result["requests"] / (result["duration_us"] / 1e6)
            log(f"{args.backend}: {rate:.0f}/s under the profiler")
            print(top(out, args.top))
        finally:
            dbs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
