"""The fast ingest paths give exactly the rows of the generic one.

PostgreSQL: one statement per callback (webhook.fastpath) against the generic
transaction (ingest_generic). SQLite: writers queue on the write lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from tests.conftest import truncate_all
from tests.helpers import FIXTURES, count, fixture_bytes, rows
from webhook import fastpath
from webhook.callbacks import load_body
from webhook.db import PING_AFTER_IDLE_SECONDS
from webhook.ingest import (
    DUPLICATE,
    FAILED,
    STORED,
    IngestResult,
    classify,
    event_values,
    ingest,
    ingest_generic,
)
from webhook.models import Base
from webhook.simulate import SimulationConfig, simulate

HEADERS = {"x-sinch-webhook-signature": "c2ln", "x-sinch-webhook-signature-nonce": "n",
           "x-sinch-webhook-signature-timestamp": "1767225600"}  # fmt: skip
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
TABLES = [t.name for t in Base.metadata.sorted_tables]


def snapshot(engine: Engine) -> dict[str, list[str]]:
    """Every row of every table as PostgreSQL's text form (tells NULL from JSON null)."""
    with engine.connect() as conn:
        return {
            name: [r[0] for r in conn.execute(text(f"SELECT t::text FROM {name} t ORDER BY 1"))]
            for name in TABLES
        }


def stream() -> list[bytes]:
    _, bodies = simulate(SimulationConfig(messages=40, seed=21, shuffle="all",
                                          duplicate_rate=0.1, failure_rate=0.2,
                                          broken_response_rate=0.3))  # fmt: skip
    fixtures = [fixture_bytes(p.stem) for p in sorted(FIXTURES.glob("*.json"))]
    return fixtures + bodies + fixtures


@pytest.fixture
def pg_engine(engine: Engine, backend: str) -> Engine:
    if backend != "postgresql":
        pytest.skip("the one-statement path is PostgreSQL's")
    return engine


def test_one_statement_gives_the_generic_rows(pg_engine: Engine) -> None:
    bodies = stream()
    generic = [ingest_generic(pg_engine, b, load_body(b), HEADERS, T0 + timedelta(seconds=i))
               for i, b in enumerate(bodies)]  # fmt: skip
    expected = snapshot(pg_engine)
    truncate_all(pg_engine)
    fast = [ingest(pg_engine, b, load_body(b), HEADERS, T0 + timedelta(seconds=i))
            for i, b in enumerate(bodies)]  # fmt: skip
    assert fast == generic
    assert snapshot(pg_engine) == expected
    assert {r.outcome for r in fast} == {STORED, DUPLICATE}
    assert count(pg_engine, "message_status") > 0 and count(pg_engine, "flow_responses") > 0


def test_every_simulated_and_fixture_callback_takes_one_statement(pg_engine: Engine) -> None:
    taken = 0
    for i, body in enumerate(dict.fromkeys(stream())):
        payload = load_body(body)
        outcome = classify(payload)
        records = outcome.parsed.records if outcome.parsed else ()
        projections = fastpath.projection_values(records, T0)
        assert projections is not None, outcome.trigger
        event = event_values(body=body, digest=f"{i:064x}", headers=HEADERS, received_at=T0,
                             payload=payload, outcome=outcome)  # fmt: skip
        assert isinstance(fastpath.execute(pg_engine, *fastpath.bind(event, projections)), int)
        # The same body again: nothing returned, nothing written.
        assert fastpath.execute(pg_engine, *fastpath.bind(event, projections)) is None
        taken += 1
    assert count(pg_engine, "callback_events") == taken


def test_projection_failure_falls_back_and_stores_the_event_failed(pg_engine: Engine) -> None:
    body = fixture_bytes("message_delivery__delivered").replace(
        b'"message_id": "', b'"message_id": "' + b"X" * 80, 1
    )
    assert b"X" * 80 in body  # varchar(64) refuses it
    generic = ingest_generic(pg_engine, body, load_body(body), HEADERS, T0)
    expected = snapshot(pg_engine)
    truncate_all(pg_engine)
    fast = ingest(pg_engine, body, load_body(body), HEADERS, T0)
    assert fast == generic
    assert fast.status == FAILED and fast.error and "projection failed" in fast.error
    assert snapshot(pg_engine) == expected
    assert count(pg_engine, "delivery_reports") == 0


def test_shapes_one_statement_cannot_take_use_the_generic_path(pg_engine: Engine) -> None:
    wa = {"entry": [{"changes": [{"value": {"messages": [
        {"id": f"wamid.{n}", "from": "5511987654321", "type": "interactive",
         "interactive": {"type": "nfm_reply", "nfm_reply": {
             "name": "flow", "response_json": f'{{"flow_token":"t-{n}"}}'}}}
        for n in (1, 2)]}}]}]}  # fmt: skip
    import json

    body = json.dumps({"unsupported_callback": {"payload": json.dumps(wa)}}).encode()
    outcome = classify(load_body(body))
    assert outcome.parsed and len(outcome.parsed.records) == 2
    assert fastpath.projection_values(outcome.parsed.records, T0) is None
    assert ingest(pg_engine, body, load_body(body), HEADERS, T0).outcome == STORED
    assert [r["message_id"] for r in rows(pg_engine, "flow_responses")] == ["wamid.1", "wamid.2"]


def test_concurrent_writers_queue_on_the_lock(engine: Engine) -> None:
    _, bodies = simulate(SimulationConfig(messages=30, seed=5, duplicate_rate=0.2))
    errors: list[BaseException] = []

    def worker(part: list[bytes]) -> None:
        try:
            for body in part:
                ingest(engine, body, load_body(body), HEADERS)
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(bodies[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(engine, "callback_events") == len(set(bodies))
    assert count(engine, "flow_sends") == 30


def _kill_pooled_connections(engine: Engine) -> None:
    """What a database restart does to the pool: every connection closed by the server."""
    killer = create_engine(engine.url, poolclass=NullPool)
    with killer.connect() as conn:
        killed = conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )).scalar_one()  # fmt: skip
    killer.dispose()
    assert killed >= 1


@pytest.mark.parametrize("path", [ingest, ingest_generic])
def test_a_connection_the_server_closed_is_replaced_not_reported(
    pg_engine: Engine, path: Callable[..., IngestResult]
) -> None:
    first, second = (fixture_bytes(f"message_delivery__{s}") for s in ("queued_on_channel", "read"))
    assert path(pg_engine, first, load_body(first), HEADERS).outcome == STORED
    _kill_pooled_connections(pg_engine)
    assert path(pg_engine, second, load_body(second), HEADERS).outcome == STORED
    assert count(pg_engine, "delivery_reports") == 2


def test_an_idle_pooled_connection_is_pinged_and_replaced(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    _kill_pooled_connections(pg_engine)
    time.sleep(PING_AFTER_IDLE_SECONDS + 0.1)  # idle long enough to be pinged
    # No retry here: only the ping on checkout can make this work.
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
