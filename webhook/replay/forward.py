"""Send callback bodies to an HTTP endpoint, signed the way Sinch signs them.

Used by `events forward` (stored bodies, byte-exact) and `events simulate` (generated
traffic). Each attempt is signed afresh (new nonce and timestamp) with
webhook.ingest.signing.sign_headers. Sends run on a few threads (bounded concurrency),
paced to an optional rate; 5xx, 429 and timeouts are retried with exponential
backoff (Retry-After is honoured, capped); any other answer is final. When the
endpoint cannot be reached at all, sending stops and the report says so once.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import httpx

from webhook.ingest.signing import sign_headers

REPLAY_HEADER = "X-Flowhooks-Replay"
EVENT_ID_HEADER = "X-Flowhooks-Event-Id"
SIMULATION_HEADER = "X-Flowhooks-Simulation"
FAILURES_LISTED = 20


@dataclass(frozen=True)
class SendOptions:
    url: str
    secret: str
    concurrency: int = 4
    rate: float | None = None  # sends per second, all threads together; None: no limit
    retries: int = 3  # further attempts after the first
    backoff: float = 0.5  # seconds before the first retry; doubles each time
    max_backoff: float = 30.0
    timeout: float = 10.0


@dataclass(frozen=True)
class Outbound:
    """One body to send; ``label`` names it in reports (e.g. "event 42")."""

    label: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    label: str
    ok: bool
    attempts: int
    status: int | None  # the last HTTP status, None if no answer
    error: str | None  # why it failed
    unreachable: bool = False  # no connection could be made at all


@dataclass
class SendReport:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    retries: int = 0
    unreachable: str | None = None  # why, when it was
    failures: list[Result] = field(default_factory=list)  # the first FAILURES_LISTED
    seconds: float = 0.0


class _Pacer:
    """At most ``rate`` starts per second across threads (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_at)
            self.next_at = start + self.interval
        if start > now:
            time.sleep(start - now)


def _retry_after(response: httpx.Response, cap: float) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        return min(max(float(value), 0.0), cap) if value else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


def send_one(client: httpx.Client, item: Outbound, opts: SendOptions, pacer: _Pacer) -> Result:
    """POST one body until it is accepted, refused, or the retries run out."""
    attempt = 0
    while True:
        attempt += 1
        pacer.wait()
        headers = {
            "Content-Type": "application/json",
            **sign_headers(opts.secret, item.body, secrets.token_hex(16)),
            **item.headers,
        }
        delay: float | None = None
        unreachable = False
        try:
            response = client.post(opts.url, content=item.body, headers=headers)
        except httpx.TimeoutException:
            status, error = None, f"timed out after {opts.timeout:g} s"
        except httpx.TransportError as err:
            status, error = None, f"cannot connect: {err}" if str(err) else type(err).__name__
            unreachable = isinstance(err, httpx.ConnectError)
        else:
            status = response.status_code
            if 200 <= status < 300:
                return Result(item.label, True, attempt, status, None)
            error = f"HTTP {status} {response.reason_phrase}".rstrip()
            if status != 429 and status < 500:
                return Result(item.label, False, attempt, status, error)
            delay = _retry_after(response, opts.max_backoff)
        if attempt > opts.retries:
            return Result(item.label, False, attempt, status, error, unreachable)
        if delay is None:
            delay = min(opts.backoff * 2 ** (attempt - 1), opts.max_backoff)
        time.sleep(delay)


def send_all(
    items: Iterable[Outbound],
    opts: SendOptions,
    on_result: Callable[[Result], None] | None = None,
) -> SendReport:
    """Send every item with bounded concurrency; stop early if the endpoint is unreachable."""
    started = time.perf_counter()
    report = SendReport()
    pacer = _Pacer(opts.rate)
    limits = httpx.Limits(max_connections=opts.concurrency)
    with (
        httpx.Client(timeout=opts.timeout, limits=limits) as client,
        ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="send") as pool,
    ):
        pending: set[Future[Result]] = set()

        def collect(done: Iterable[Future[Result]]) -> None:
            for future in done:
                result = future.result()
                report.sent += 1
                report.retries += result.attempts - 1
                if result.ok:
                    report.delivered += 1
                else:
                    report.failed += 1
                    if result.unreachable and report.unreachable is None:
                        report.unreachable = result.error
                    if len(report.failures) < FAILURES_LISTED:
                        report.failures.append(result)
                if on_result:
                    on_result(result)

        for item in items:
            if report.unreachable:
                break  # the caller counts what was left unsent
            pending.add(pool.submit(send_one, client, item, opts, pacer))
            if len(pending) >= opts.concurrency * 2:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        done, _ = wait(pending)
        collect(done)
    report.seconds = time.perf_counter() - started
    return report
