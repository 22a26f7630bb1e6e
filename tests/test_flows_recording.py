"""The background writer of flow_exchanges rows."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.helpers import rows
from webhook.core.logs import token_ref
from webhook.db.engine import make_engine
from webhook.flows.recording import ExchangeRecorder


def row(token: str, status: int = 200) -> dict[str, Any]:
    return {
        "flow_token": token,
        "action": "INIT",
        "screen": None,
        "answer_screen": "START",
        "http_status": status,
        "latency_ms": 1.5,
        "error": None,
        "data": None,
        "received_at": datetime.now(UTC),
    }


def test_rows_are_written_in_batches(engine: Engine) -> None:
    recorder = ExchangeRecorder(engine, batch_size=7)
    for i in range(50):
        recorder.submit(row(f"t{i}"))
    assert recorder.flush()
    written = rows(engine, "flow_exchanges")
    assert sorted(r["flow_token"] for r in written) == sorted(f"t{i}" for i in range(50))
    assert (recorder.dropped, recorder.failed) == (0, 0)


def test_the_writer_restarts_after_going_idle(engine: Engine) -> None:
    recorder = ExchangeRecorder(engine, idle_exit_seconds=0.01)
    recorder.submit(row("first"))
    assert recorder.flush()
    time.sleep(0.05)  # the writer thread has nothing to do and stops
    recorder.submit(row("second"))
    assert recorder.flush()
    assert [r["flow_token"] for r in rows(engine, "flow_exchanges")] == ["first", "second"]


def test_a_full_queue_drops_rows_and_says_so(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = ExchangeRecorder(engine, max_pending=0)
    with caplog.at_level(logging.ERROR, logger="webhook.flows.recording"):
        recorder.submit(row("lost"))
    assert recorder.dropped == 1
    assert "queue full: 1 rows dropped" in caplog.text
    assert recorder.flush()
    assert rows(engine, "flow_exchanges") == []


def test_a_failed_insert_is_logged_and_counted(
    new_database_url: Callable[[str], str], backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    broken = make_engine(new_database_url(backend))  # no tables
    recorder = ExchangeRecorder(broken)
    with caplog.at_level(logging.ERROR, logger="webhook.flows.recording"):
        recorder.submit(row("tok-a"))
        recorder.submit(row("tok-b"))
        assert recorder.flush()
    broken.dispose()
    assert recorder.failed == 2
    assert "could not record" in caplog.text
    assert token_ref("tok-a") in caplog.text and "tok-a" not in caplog.text


def test_a_refused_row_does_not_lose_its_batch(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = ExchangeRecorder(engine)
    bad = {**row("bad"), "http_status": None}  # NOT NULL: the database refuses it
    with caplog.at_level(logging.ERROR, logger="webhook.flows.recording"):
        recorder._write([row("a"), bad, row("b")])
    assert [r["flow_token"] for r in rows(engine, "flow_exchanges")] == ["a", "b"]
    assert recorder.failed == 1
    assert f"could not record 1 flow exchange(s) (tokens {token_ref('bad')})" in caplog.text
