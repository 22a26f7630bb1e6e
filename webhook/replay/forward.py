"""Send callback bodies to an HTTP endpoint, signed the way Sinch signs them.

Used by `events forward` (stored bodies, byte-exact) and `events simulate` (generated
traffic). Each attempt is signed afresh (new nonce and timestamp) with
webhook.ingest.signing.sign_headers. Sends run on a few threads (bounded concurrency),
each attempt paced to an optional rate; 5xx, 429, timeouts and connection failures
are retried with exponential backoff (Retry-After, in seconds or as an HTTP date, is
honoured up to max_backoff); any other answer is final. When the endpoint cannot be
reached at all, sending stops and the report says so once. The retry policy, the
pacer and the thread pool are webhook.core.outbound's.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import httpx

from webhook.core.outbound import GaveUp, Pacer, RetryPolicy, bounded_map, first_line
from webhook.ingest.signing import sign_headers

REPLAY_HEADER = "X-Flowhooks-Replay"
EVENT_ID_HEADER = "X-Flowhooks-Event-Id"
SIMULATION_HEADER = "X-Flowhooks-Simulation"
FAILURES_LISTED = 20


@dataclass(frozen=True)
class SendOptions:
    url: str
    secret: str | None  # None: sent unsigned (a receiver that checks no signature)
    concurrency: int = 4
    rate: float | None = None  # sends per second, all threads together; None: no limit
    retries: int = 3  # further attempts after the first
    backoff: float = 0.5  # seconds before the first retry; doubles each time
    max_backoff: float = 30.0
    timeout: float = 10.0
    # Stop after this many answers in a row that retrying cannot fix (4xx but 408/429):
    # a wrong secret or URL fails every callback the same way.
    stop_after_refusals: int = 10

    def retry_policy(self) -> RetryPolicy:
        """Retry-After asking for more than max_backoff is waited for max_backoff."""
        return RetryPolicy(
            attempts=self.retries + 1,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            max_retry_after=self.max_backoff,
            long_retry_after="shorten",
        )


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
    stopped: str | None = None  # why the run stopped early (refusals in a row)
    failures: list[Result] = field(default_factory=list)  # the first FAILURES_LISTED
    seconds: float = 0.0


def send_one(client: httpx.Client, item: Outbound, opts: SendOptions, pacer: Pacer) -> Result:
    """POST one body until it is accepted, refused, or the retries run out."""
    attempts = 0

    def post() -> httpx.Response:
        nonlocal attempts
        attempts += 1
        pacer.wait()
        headers = {
            "Content-Type": "application/json",
            **(sign_headers(opts.secret, item.body, secrets.token_hex(16)) if opts.secret else {}),
            **item.headers,
        }
        return client.post(opts.url, content=item.body, headers=headers)

    try:
        response = opts.retry_policy().send(post)
    except GaveUp as gave_up:
        error = _failure(gave_up.response, gave_up.error, opts)
        unreachable = isinstance(gave_up.error, httpx.ConnectError)
        return Result(item.label, False, gave_up.attempts, gave_up.status, error, unreachable)
    status = response.status_code
    if 200 <= status < 300:
        return Result(item.label, True, attempts, status, None)
    return Result(item.label, False, attempts, status, _failure(response, None, opts))


def _failure(
    response: httpx.Response | None, error: httpx.TransportError | None, opts: SendOptions
) -> str:
    if response is not None:
        return f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if isinstance(error, httpx.TimeoutException):
        return f"timed out after {opts.timeout:g} s"
    return f"cannot connect: {first_line(error)}" if error is not None else "no answer"


def send_all(
    items: Iterable[Outbound],
    opts: SendOptions,
    on_result: Callable[[Result], None] | None = None,
) -> SendReport:
    """Send every item with bounded concurrency; stop early if the endpoint is unreachable."""
    started = time.perf_counter()
    report = SendReport()
    pacer = Pacer(opts.rate)
    limits = httpx.Limits(max_connections=opts.concurrency)

    refused_in_a_row = 0

    def collect(result: Result) -> bool:
        nonlocal refused_in_a_row
        report.sent += 1
        report.retries += result.attempts - 1
        final = result.status is not None and 400 <= result.status < 500
        final = final and result.status not in (408, 429)
        refused_in_a_row = refused_in_a_row + 1 if not result.ok and final else 0
        if refused_in_a_row >= opts.stop_after_refusals and report.stopped is None:
            report.stopped = (f"{refused_in_a_row} answers in a row that retrying cannot fix "
                              f"(last: {result.error})")  # fmt: skip
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
        # Stop: the caller counts what was left unsent.
        return report.unreachable is not None or report.stopped is not None

    with httpx.Client(timeout=opts.timeout, limits=limits) as client:
        bounded_map(
            lambda item: send_one(client, item, opts, pacer),
            items,
            workers=opts.concurrency,
            on_result=collect,
            name="send",
        )
    report.seconds = time.perf_counter() - started
    return report
