"""Plumbing for everything this service sends over HTTP: replays and simulated traffic
(webhook.replay.forward) and the Conversation API client (webhook.flows.client).

- RetryPolicy (tenacity): 429 and 5xx answers and connection failures are retried;
  timeouts and dropped connections too when the request is safe to repeat. The wait
  is what ``Retry-After`` asks (seconds or an HTTP date, see retry_after_seconds),
  else exponential backoff with optional jitter. A ``Retry-After`` above the policy's
  limit is either shortened to the limit or not waited for at all (the call gives up).
- Pacer: at most ``rate`` starts per second, across threads.
- bounded_map: a function over many items on a few threads, results in order.
- first_line: an error in one line (defined in webhook.core.errors, which serving code
  may import; this module may not be: it loads httpx and tenacity).

Only command and sending code imports this module, never the web app (tests/test_imports.py).
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar

import httpx
import tenacity

from webhook.core.errors import first_line

__all__ = [
    "NOT_SENT",
    "GaveUp",
    "Pacer",
    "RetryPolicy",
    "bounded_map",
    "first_line",
    "retry_after_seconds",
    "retryable_status",
]

T = TypeVar("T")
R = TypeVar("R")

# Errors raised before the request left this machine: retrying cannot duplicate a send.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def retryable_status(status: int) -> bool:
    """429 (too many requests) and 5xx answers are worth another attempt; others are final."""
    return status == 429 or status >= 500


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or HTTP date).

    None when there is no usable value; a date in the past is 0.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, delta)


class _Retry(Exception):
    """One attempt that is worth repeating: its answer or its transport error."""

    def __init__(
        self,
        response: httpx.Response | None = None,
        error: httpx.TransportError | None = None,
    ) -> None:
        super().__init__(str(response.status_code) if response is not None else str(error))
        self.response = response
        self.error = error
        self.retry_after = (
            retry_after_seconds(response.headers.get("Retry-After"))
            if response is not None
            else None
        )


class GaveUp(Exception):
    """Every attempt was refused or failed (``response`` or ``error`` tells the last one).

    ``too_long``: the last answer asked for a wait above the policy's limit, and the
    policy does not wait that long.
    """

    def __init__(self, last: _Retry, attempts: int, too_long: bool) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last}")
        self.attempts = attempts
        self.response = last.response
        self.error = last.error
        self.retry_after = last.retry_after
        self.too_long = too_long

    @property
    def status(self) -> int | None:
        return self.response.status_code if self.response is not None else None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one request is tried (see the module docstring)."""

    attempts: int = 4  # in all, the first one included
    backoff: float = 0.5  # seconds before the first retry; doubles each retry
    max_backoff: float = 30.0
    jitter: float = 0.0  # up to this many seconds added at random to each backoff
    max_retry_after: float = 60.0
    # A longer Retry-After: wait max_retry_after instead ("shorten"), or give up at once.
    long_retry_after: Literal["shorten", "give up"] = "shorten"
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def send(
        self, request: Callable[[], httpx.Response], *, idempotent: bool = True
    ) -> httpx.Response:
        """Call ``request`` until its answer is not worth retrying, and return that answer.

        Raises GaveUp when the attempts run out. When the request is not idempotent, a
        transport error after it may have left (a read timeout, a dropped connection)
        is raised as it is, at once: repeating it could do the thing twice.
        """

        def attempt() -> httpx.Response:
            try:
                response = request()
            except NOT_SENT as err:
                raise _Retry(error=err) from err
            except httpx.TransportError as err:
                if not idempotent:
                    raise
                raise _Retry(error=err) from err
            if retryable_status(response.status_code):
                raise _Retry(response=response)
            return response

        retrying = tenacity.Retrying(
            stop=self._stop,
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Retry),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retry as last:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise GaveUp(last, attempts, self._too_long(last.retry_after)) from (last.error or last)

    def _too_long(self, retry_after: float | None) -> bool:
        return (
            self.long_retry_after == "give up"
            and retry_after is not None
            and retry_after > self.max_retry_after
        )

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= self.attempts:
            return True
        err = state.outcome.exception() if state.outcome else None
        return isinstance(err, _Retry) and self._too_long(err.retry_after)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        err = state.outcome.exception() if state.outcome else None
        if isinstance(err, _Retry) and err.retry_after is not None:
            return min(err.retry_after, self.max_retry_after)  # what the server asked
        backoff = tenacity.wait_exponential_jitter(
            multiplier=self.backoff, max=self.max_backoff, jitter=self.jitter
        )
        return float(backoff(state))


class Pacer:
    """Spaces calls to ``wait()`` at most ``rate`` per second across threads (None: no limit).

    Idle time is not saved up: the calls after a pause are spaced like any others.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            start = now if self._next is None else max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


def bounded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    on_result: Callable[[R], bool] | None = None,
    name: str = "outbound",
) -> list[R]:
    """``fn`` over ``items`` on at most ``workers`` threads; the results in the items' order.

    Items are read as they are needed, at most ``2 * workers`` ahead of the results.
    ``on_result`` sees each result as it comes, on the calling thread; when it returns
    True, no further item is started (queued ones are cancelled) and the results of the
    items that ran are returned. An exception from ``fn`` is raised here, after the
    items already running have finished; no further item is started.
    """
    results: dict[int, R] = {}
    pending: dict[Future[R], int] = {}
    stop = False

    def settle(done: Iterable[Future[R]]) -> None:
        nonlocal stop
        for future in done:
            index = pending.pop(future)
            if future.cancelled():
                continue
            results[index] = future.result()
            if on_result is not None and on_result(results[index]):
                stop = True

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        for index, item in enumerate(items):
            while len(pending) >= 2 * workers and not stop:
                settle(wait(pending, return_when=FIRST_COMPLETED).done)
            if stop:
                break
            pending[pool.submit(fn, item)] = index
        if stop:
            for future in pending:
                future.cancel()
        while pending:
            settle(wait(pending, return_when=FIRST_COMPLETED).done)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [results[i] for i in sorted(results)]
