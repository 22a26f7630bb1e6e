"""PostgreSQL batch writer: callbacks that wait together share one commit, and nothing else.

Every test queues callbacks behind a writer that is busy (``hold``), then lets the first
of them write: the batch is then exactly the callbacks queued, whatever the scheduler does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.conftest import truncate_all
from tests.helpers import count, fixture_bytes, in_threads, rows
from tests.test_fastpath import HEADERS, snapshot, stream
from webhook import fastpath
from webhook.callbacks import load_body
from webhook.ingest import DUPLICATE, FAILED, PROCESSED, STORED, ingest, ingest_generic
from webhook.pgbatch import BatchWriter, batch_writer

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def pg_engine(engine: Engine, backend: str) -> Engine:
    if backend != "postgresql":
        pytest.skip("the batch writer is PostgreSQL's")
    return engine


@contextmanager
def hold(writer: BatchWriter, expected: int) -> Iterator[Callable[[], None]]:
    """Pretend a batch is being written; the returned call ends it once ``expected`` wait."""
    with writer._lock:
        assert not writer._writing
        writer._writing = True

    def release() -> None:
        deadline = time.monotonic() + 30
        while writer.queued < expected:
            assert time.monotonic() < deadline, "threads never queued"
            time.sleep(0.005)
        with writer._lock:  # what the writer of the held batch does when it is done
            writer._queue[0].wake.set()

    yield release


def together(engine: Engine, bodies: list[bytes], times: list[datetime]) -> list[Any]:
    """ingest() every body from its own thread, all queued in one batch."""
    writer = batch_writer(engine)
    calls = [lambda b=b, t=t: ingest(engine, b, load_body(b), HEADERS, t)
             for b, t in zip(bodies, times, strict=True)]  # fmt: skip
    with hold(writer, len(bodies)) as release:
        return in_threads(calls, release, timeout=60)


def test_callbacks_waiting_together_share_one_commit(pg_engine: Engine) -> None:
    bodies = list(dict.fromkeys(stream()))[:24]
    times = [T0 + timedelta(seconds=i) for i in range(len(bodies))]
    writer = batch_writer(pg_engine)
    before = (writer.batches, writer.batched)
    results = together(pg_engine, bodies, times)
    assert (writer.batches, writer.batched) == (before[0] + 1, before[1] + len(bodies))
    assert all(r.outcome == STORED for r in results), results
    assert count(pg_engine, "callback_events") == len(bodies)
    # Each thread was given the id of its own event.
    stored = {r["id"]: bytes(r["body"]) for r in rows(pg_engine, "callback_events")}
    assert [stored[r.event_id] for r in results] == bodies
    # The same rows as one plain transaction per callback, one at a time.
    batched = snapshot(pg_engine)
    truncate_all(pg_engine)
    generic = [ingest_generic(pg_engine, b, load_body(b), HEADERS, t)
               for b, t in zip(bodies, times, strict=True)]  # fmt: skip
    assert [(r.outcome, r.trigger, r.status) for r in results] == [
        (r.outcome, r.trigger, r.status) for r in generic
    ]
    # Event ids follow the batch's own order (sorted), so compare everything else.
    assert _without_ids(snapshot(pg_engine)) == _without_ids(batched)


def _without_ids(snap: dict[str, list[str]]) -> dict[str, list[str]]:
    """Rows with their numeric ids (event ids, row ids) blanked: order-free comparison."""
    import re

    number = re.compile(r"(?<=[(,])\d+(?=[,)])")
    return {name: sorted(number.sub("#", row) for row in rows) for name, rows in snap.items()}


def test_reports_of_one_message_in_one_batch_merge_as_one_by_one(pg_engine: Engine) -> None:
    queued = fixture_bytes("message_delivery__queued_on_channel")
    delivered = fixture_bytes("message_delivery__delivered")
    read = fixture_bytes("message_delivery__read")
    bodies = [read, queued, delivered]
    times = [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)]
    together(pg_engine, bodies, times)
    batched = _without_ids(snapshot(pg_engine))
    truncate_all(pg_engine)
    for b, t in zip(bodies, times, strict=True):
        ingest_generic(pg_engine, b, load_body(b), HEADERS, t)
    assert _without_ids(snapshot(pg_engine)) == batched
    assert count(pg_engine, "delivery_reports") == 3


def test_the_same_body_in_one_batch_is_stored_once(pg_engine: Engine) -> None:
    body = fixture_bytes("message_delivery__delivered")
    other = fixture_bytes("message_inbound__flow_response_object")
    results = together(pg_engine, [body, other, body, body], [T0] * 4)
    outcomes = sorted(r.outcome for r in results)
    assert outcomes == [DUPLICATE, DUPLICATE, STORED, STORED]
    assert count(pg_engine, "callback_events") == 2
    assert count(pg_engine, "delivery_reports") == 1
    assert count(pg_engine, "flow_responses") == 1


def test_a_refused_row_fails_only_its_own_callback(pg_engine: Engine) -> None:
    bad = fixture_bytes("message_delivery__delivered").replace(
        b'"message_id": "', b'"message_id": "' + b"X" * 80, 1
    )
    assert b"X" * 80 in bad  # varchar(64) refuses it
    good = [fixture_bytes("message_delivery__queued_on_channel"),
            fixture_bytes("message_inbound__flow_response_object")]  # fmt: skip
    writer = batch_writer(pg_engine)
    batches = writer.batches
    results = together(pg_engine, [good[0], bad, good[1]], [T0] * 3)
    assert writer.batches == batches  # the batch failed; each ran alone
    assert [r.status for r in results] == [PROCESSED, FAILED, PROCESSED]
    assert "projection failed" in (results[1].error or "")
    assert count(pg_engine, "callback_events") == 3
    assert count(pg_engine, "delivery_reports") == 1  # the good report only
    assert count(pg_engine, "flow_responses") == 1


def test_a_batch_that_cannot_be_sent_leaves_each_statement_to_its_thread(
    pg_engine: Engine,
) -> None:
    """A failure before the commit (here a value psycopg cannot send) commits nothing."""
    good = fastpath.bind(*_bound(pg_engine, fixture_bytes("message_delivery__queued_on_channel")))
    broken = (good[0], [object() for _ in good[1]])  # no dumper for object()
    writer = BatchWriter(pg_engine)
    calls = [lambda: writer.run(*good, ("a", "1")), lambda: writer.run(*broken, ("b", "2"))]
    with hold(writer, 2) as release:
        first, second = in_threads(calls, release, timeout=60)
    assert isinstance(first, int)
    assert isinstance(second, Exception) and "object" in str(second)
    assert writer.batches == 0
    assert count(pg_engine, "callback_events") == 1


def test_the_writer_hands_over_and_never_leaves_a_thread_waiting(pg_engine: Engine) -> None:
    bodies = list(dict.fromkeys(stream()))[:60]
    writer = BatchWriter(pg_engine, max_batch=4)
    bound = [fastpath.bind(*_bound(pg_engine, b)) for b in bodies]
    calls = [lambda s=s, i=i: writer.run(*s, ("", f"{i:04d}")) for i, s in enumerate(bound)]
    with hold(writer, len(calls)) as release:
        results = in_threads(calls, release, timeout=60)
    assert all(isinstance(r, int) for r in results), results
    assert writer.batches >= len(bodies) // 4 and writer.queued == 0
    assert not writer._writing
    assert count(pg_engine, "callback_events") == len(bodies)


def _bound(engine: Engine, body: bytes) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """fastpath.bind's arguments for one body, as ingest builds them."""
    from webhook.ingest import body_digest, classify, event_values

    payload = load_body(body)
    outcome = classify(payload)
    records = outcome.parsed.records if outcome.parsed else ()
    projections = fastpath.projection_values(records, T0)
    assert projections is not None
    event = event_values(body=body, digest=body_digest(body), headers=HEADERS, received_at=T0,
                         payload=payload, outcome=outcome)  # fmt: skip
    return event, projections
