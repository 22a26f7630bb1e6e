"""Concurrency: the tables do not depend on how many writers there were, or on order.

One stream of simulated callbacks, 30% of them duplicated and the whole stream
shuffled (statuses arrive in any order), goes through gunicorn with several worker
processes, each with several threads, from several client threads at once. The
same stream is ingested sequentially into a second database. Both must end with
identical tables, surrogate ids and receive times aside.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from tests.helpers import SECRET, count, fixture_bytes
from tests.service import Sender, Service
from webhook.db import migrate
from webhook.db.engine import make_engine
from webhook.db.models import Base
from webhook.ingest.append import DUPLICATE, STORED
from webhook.ingest.body import load_body
from webhook.projection.ingest import IngestResult, ingest
from webhook.projection.thread import wait_projected
from webhook.replay.simulate import SimulationConfig, simulate

# Differ between two ingests of the same events by design (ids, wall-clock receive times).
IGNORED_COLUMNS = {"id", "source_event_id", "received_at", "processed_at", "updated_at", "headers"}
PROJECTED = ("callback_events", "inbound_messages", "flow_responses", "delivery_reports",
             "message_status", "flow_sends")  # fmt: skip


def migrated(url: str) -> Engine:
    engine = make_engine(url)
    migrate.upgrade(engine)
    return engine


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every projected table as a sorted list of rows, without the ignored columns."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name in PROJECTED:
            table = Base.metadata.tables[name]
            columns = [c for c in table.columns if c.name not in IGNORED_COLUMNS]
            found = [tuple(row) for row in conn.execute(select(*columns))]
            tables[name] = sorted(found, key=repr)
    return tables


@pytest.mark.slow
def test_concurrent_ingest_equals_sequential_ingest(
    backend: str, new_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    cfg = SimulationConfig(messages=120, seed=901, duplicate_rate=0.3, shuffle="all")
    messages, stream = simulate(cfg)
    assert len(stream) > 1.25 * len(set(stream))  # the duplicates are really there

    concurrent_url = new_database_url(backend)
    concurrent = migrated(concurrent_url)
    env = {"GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_THREADS": "3"}
    with Service(
        concurrent_url, tmp_path / "gunicorn.log", secret=SECRET, workers=3, env=env
    ) as service:
        sender = Sender(service, stream, threads=8).start()
        sender.join(timeout=120)
        wait_projected(concurrent, timeout=60)  # the service's own projector threads
    # Every body acknowledged in the end; on a starved machine a request may time out on
    # the way (None) or have its body read past its deadline (408): both are retried,
    # as Sinch would.
    assert len(sender.acked) == len(set(stream))
    assert set(sender.statuses()) <= {200, 408, None}

    sequential = migrated(new_database_url(backend))
    for body in stream:
        ingest(sequential, body, load_body(body))

    expected, got = snapshot(sequential), snapshot(concurrent)
    assert {name: len(found) for name, found in got.items()} == {
        name: len(found) for name, found in expected.items()
    }
    for name in PROJECTED:
        assert got[name] == expected[name], f"{name} differs from the sequential ingest"
    assert len(got["callback_events"]) == len(set(stream))
    assert len(got["flow_sends"]) == len(messages)
    concurrent.dispose()
    sequential.dispose()


@pytest.mark.parametrize(
    "fixture",
    ["message_inbound__flow_nfm_reply", "message_delivery__read", "message_submit__flows",
     "message_delivery__failed_outside_window"],
)  # fmt: skip
def test_same_body_from_many_threads_at_once_gives_one_row(engine: Engine, fixture: str) -> None:
    body = fixture_bytes(fixture)
    payload = load_body(body)
    threads = 8
    barrier = threading.Barrier(threads)
    results: list[IngestResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            results.append(ingest(engine, body, payload))
        except BaseException as err:  # collected, so the assertion below names it
            errors.append(err)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert not errors
    assert Counter(r.outcome for r in results) == {STORED: 1, DUPLICATE: threads - 1}
    assert count(engine, "callback_events") == 1
    projected = sum(
        count(engine, table)
        for table in ("inbound_messages", "flow_responses", "delivery_reports", "flow_sends")
    )
    assert projected == {"message_inbound__flow_nfm_reply": 2}.get(fixture, 1)
