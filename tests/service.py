"""The real service under gunicorn, and a sender that drives signed traffic into it.

Used by the fault and concurrency tests and by bench/soak.py. gunicorn binds
127.0.0.1 port 0 (the OS picks a free port, read back from its log), runs in its own
process group, and can lose one worker or the whole server to SIGKILL.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from webhook.ingest.signing import sign_headers

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (gunicorn's workers, for its master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Service:
    """gunicorn serving wsgi:app on a free loopback port, for one database."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *,
        secret: str,
        workers: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.log_path = log_path
        self.secret = secret
        self.workers = workers
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Service:
        env = {
            **os.environ,
            "BIND": "127.0.0.1:0",
            "DATABASE_URL": self.database_url,
            "SINCH_WEBHOOK_SECRETS": self.secret,
            "WEB_CONCURRENCY": str(self.workers),
            "LOG_LEVEL": "info",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        log.write(f"\n==== start {self.starts + 1}\n".encode())
        log.flush()
        offset = log.tell()
        self.proc = subprocess.Popen(
            # No control socket: its default path is shared by every gunicorn on the host.
            [str(GUNICORN), "--config", "gunicorn.conf.py", "--no-control-socket", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so crash() takes every worker
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        self.port = 0
        while not self.port:
            self._check_alive(deadline)
            with self.log_path.open("rb") as f:
                f.seek(offset)
                found = _LISTENING.search(f.read().decode("utf-8", "replace"))
            if found:
                self.port = int(found.group(1))
            else:
                time.sleep(0.05)
        self.wait_ready(deadline)
        return self

    def wait_ready(self, deadline: float) -> None:
        """Until every worker is up and /readyz answers 200."""
        while True:
            self._check_alive(deadline)
            if len(self.worker_pids()) >= self.workers:
                try:
                    if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited ({self.proc.returncode}); see {self.log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn did not become ready; see {self.log_path}")

    @property
    def master_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        return children(self.master_pid)

    def kill_worker(self) -> int:
        """SIGKILL one worker (gunicorn's master starts a replacement)."""
        pid = self.worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def crash(self) -> None:
        """SIGKILL the master and every worker at once."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()


@dataclass
class Attempt:
    status: int | None  # None: no answer (connection refused, reset, timeout)
    seconds: float
    retry_after: str | None
    at: float  # time.monotonic() when the answer (or failure) came


@dataclass
class Sender:
    """Posts each body, freshly signed, from several threads until it is answered 200.

    ``acked`` holds the digest of every body answered 200: the claim under test is
    that each of them is in callback_events afterwards.
    """

    service: Service
    bodies: Sequence[bytes]
    threads: int = 4
    retry_pause: float = 0.05
    request_timeout: float = 60
    acked: set[str] = field(default_factory=set)
    attempts: list[Attempt] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Sender:
        for _ in range(self.threads):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(deadline - time.monotonic(), 0))
        self._stop.set()
        if any(thread.is_alive() for thread in self._workers):
            raise AssertionError(f"sender did not finish in {timeout} s: {self.summary()}")

    @property
    def done(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_for(self, acked: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.done < acked:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.done} of {acked} acknowledged in {timeout} s")
            time.sleep(0.01)

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter[int | None]:
        with self._lock:
            return Counter(a.status for a in self.attempts if since <= a.at <= until)

    def summary(self) -> str:
        return f"{self.done}/{len(self.bodies)} acknowledged; answers {dict(self.statuses())}"

    def _take(self) -> bytes | None:
        with self._lock:
            if self._next >= len(self.bodies):
                return None
            body = self.bodies[self._next]
            self._next += 1
            return body

    def _run(self) -> None:
        with httpx.Client(timeout=self.request_timeout) as client:
            while not self._stop.is_set() and (body := self._take()) is not None:
                self._deliver(client, body)

    def _deliver(self, client: httpx.Client, body: bytes) -> None:
        key = digest(body)
        while not self._stop.is_set():
            headers = {
                "Content-Type": "application/json",
                **sign_headers(self.service.secret, body, uuid.uuid4().hex),
            }
            started = time.monotonic()
            status: int | None = None
            retry_after = None
            try:
                response = client.post(
                    self.service.url + "/sinch/callbacks", content=body, headers=headers
                )
                status, retry_after = response.status_code, response.headers.get("Retry-After")
            except httpx.HTTPError:
                pass
            now = time.monotonic()
            with self._lock:
                self.attempts.append(Attempt(status, now - started, retry_after, now))
                if status == 200:
                    self.acked.add(key)
                    return
            time.sleep(self.retry_pause)  # Sinch retries too; the tests do it sooner
