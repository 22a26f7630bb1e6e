"""Duplicates are settled by the database, not by process memory."""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from tests.helpers import count, fixture_bytes
from webhook.ingest.append import DUPLICATE, STORED
from webhook.ingest.body import load_body
from webhook.projection.ingest import IngestResult, ingest


def test_same_body_from_many_threads_is_stored_once(engine: Engine) -> None:
    body = fixture_bytes("message_inbound__flow_nfm_reply")
    payload = load_body(body)
    barrier = threading.Barrier(8)
    results: list[IngestResult] = []

    def send() -> None:
        barrier.wait()
        results.append(ingest(engine, body, payload))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.outcome for r in results) == [DUPLICATE] * 7 + [STORED]
    assert count(engine, "callback_events") == 1
    assert count(engine, "flow_responses") == 1
    assert count(engine, "inbound_messages") == 1


def test_one_byte_different_is_a_new_event(engine: Engine) -> None:
    body = fixture_bytes("message_delivery__delivered")
    ingest(engine, body, load_body(body))
    ingest(engine, body + b"\n", load_body(body))
    # Two raw events (different bytes), but the natural key keeps one history row.
    assert count(engine, "callback_events") == 2
    assert count(engine, "delivery_reports") == 1
