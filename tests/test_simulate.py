"""The traffic simulator: deterministic, realistic, and ingestible."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import Engine

from tests.helpers import count, rows
from webhook.ingest.body import load_body
from webhook.ingest.parsers import parse_callback
from webhook.projection.ingest import ingest
from webhook.replay.simulate import SimulationConfig, simulate


def test_same_seed_same_bytes() -> None:
    cfg = SimulationConfig(messages=50, seed=7, duplicate_rate=0.1)
    assert simulate(cfg)[1] == simulate(cfg)[1]
    assert simulate(cfg)[1] != simulate(SimulationConfig(messages=50, seed=8))[1]


def test_every_body_parses_and_duplicates_are_exact_copies() -> None:
    messages, stream = simulate(SimulationConfig(messages=200, duplicate_rate=0.2, seed=3))
    triggers = Counter(parse_callback(load_body(b)).trigger for b in stream)
    assert set(triggers) == {"MESSAGE_SUBMIT", "MESSAGE_DELIVERY", "MESSAGE_INBOUND"}
    distinct = {b for m in messages for b in m.bodies}
    assert set(stream) == distinct
    assert len(stream) > len(distinct)  # some duplicates were added


def test_ingesting_a_simulation_gives_its_outcomes(engine: Engine) -> None:
    messages, stream = simulate(SimulationConfig(messages=60, seed=11, shuffle="all",
                                                 duplicate_rate=0.1))  # fmt: skip
    for body in stream:
        ingest(engine, body, load_body(body))
    assert count(engine, "callback_events") == sum(len(m.bodies) for m in messages)
    assert count(engine, "flow_sends") == 60
    assert count(engine, "flow_responses") == sum(m.completed for m in messages)
    status = {r["message_id"]: r["status"] for r in rows(engine, "message_status", "message_id")}
    expected = {"read": "READ", "delivered": "DELIVERED", "failed": "FAILED"}
    assert status == {m.message_id: expected[m.outcome] for m in messages}
