"""`events rebuild`: the tables rebuilt from the raw store equal live ingestion."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import Engine, text, update

from tests.helpers import count, post_callback, rows
from tests.replay_helpers import relax_durability, snapshot, varied_config, varied_stream
from webhook.core.state import state
from webhook.db.models import MessageStatus
from webhook.flows.message import SendRequest
from webhook.flows.sending import record_send
from webhook.ingest.body import load_body
from webhook.projection.ingest import ingest
from webhook.projection.rules import PROJECTION_TABLES
from webhook.replay.rebuild import rebuild
from webhook.replay.simulate import SimulatedMessage, SimulationConfig, simulate


@pytest.fixture
def client(app: Flask, engine: Engine) -> FlaskClient:
    relax_durability(state(app).engine)
    relax_durability(engine)
    return app.test_client()


def record_sends(engine: Engine, message_ids: list[str | None], status: str = "accepted") -> None:
    """flow_sends rows as our own sender (webhook.flows.sending) records them."""
    sent = datetime(2026, 3, 1, 7, 59, tzinfo=UTC)
    with engine.begin() as conn:
        for i, mid in enumerate(message_ids):
            req = SendRequest(
                body={"to": i}, flow_token=f"ftk_sender_{mid or i}", token_generated=True,
                flow_id="SENDER-FLOW", flow_mode="published", flow_cta="Open",
                flow_action="navigate", screen=None, channel="WHATSAPP",
                identity=f"5511{i:09d}", contact_id=None, correlation_id=None,
            )  # fmt: skip
            record_send(conn, req, status=status, sent_at=sent, message_id=mid)


def test_rebuild_equals_live_ingestion(client: FlaskClient, engine: Engine) -> None:
    messages, _ = simulate(varied_config(messages=500))
    # Sends recorded before their MESSAGE_SUBMIT arrives, and sends Sinch never took.
    record_sends(engine, [m.message_id for m in messages[:30]])
    record_sends(engine, [None], status="rejected")
    record_sends(engine, [None], status="unknown")
    for body in varied_stream(messages=500):
        response = post_callback(client, body)
        assert response.status_code == 200, response.get_json()
    # Sends recorded after their MESSAGE_SUBMIT: they take over the callback's row.
    record_sends(engine, [m.message_id for m in messages[30:40]])
    live = snapshot(engine)
    assert count(engine, "callback_events") > 1800
    assert count(engine, "flow_responses") > 50
    assert {r["status"] for r in rows(engine, "callback_events")} == {
        "processed", "failed", "ignored",
    }  # fmt: skip

    # Nothing to change: the dry run says so and writes nothing.
    preview = rebuild(engine, batch_size=300, dry_run=True)
    assert snapshot(engine) == live
    assert all(c.inserted == c.updated == c.deleted == 0 for c in preview.changes.values())
    assert preview.changes["delivery_reports"].unchanged == count(engine, "delivery_reports")
    assert preview.changes["flow_sends"].unchanged == count(engine, "flow_sends")

    # Wreck the projections: the raw store is the truth.
    inbound = count(engine, "inbound_messages")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM inbound_messages"))
        conn.execute(update(MessageStatus).values(status="QUEUED_ON_CHANNEL"))
        conn.execute(text("DELETE FROM delivery_reports WHERE status = 'READ'"))
    preview = rebuild(engine, batch_size=300, dry_run=True)
    assert preview.changes["inbound_messages"].inserted == inbound
    assert preview.changes["message_status"].updated > 0
    assert preview.changes["delivery_reports"].deleted == 0

    report = rebuild(engine, batch_size=257)
    assert snapshot(engine) == live
    assert report.events == count(engine, "callback_events")
    assert report.failed == report.statuses["failed"] > 0
    assert not report.transitions  # every event kept its status
    sender = [r for r in rows(engine, "flow_sends") if r["send_status"] == "accepted"]
    assert len(sender) == 40
    assert all(r["submitted_at"] is not None and r["flow_token"] for r in sender)


def ingest_aged(engine: Engine, ages_days: list[int]) -> list[SimulatedMessage]:
    """A simulated stream whose callbacks were received ``ages_days`` ago, in turn."""
    relax_durability(engine)
    messages, stream = simulate(
        SimulationConfig(messages=30, seed=12, shuffle="all", read_rate=1.0, completion_rate=0.6)
    )
    now = datetime.now(UTC)
    for i, body in enumerate(stream):
        age = ages_days[i * len(ages_days) // len(stream)]
        received = now - timedelta(days=age) + timedelta(seconds=i)
        ingest(engine, body, load_body(body), {}, received)
    return messages


def test_rebuild_after_prune_keeps_what_it_cannot_recreate(
    engine: Engine, runner: FlaskCliRunner
) -> None:
    ingest_aged(engine, [60, 40, 0])  # deleted, body dropped, kept
    result = runner.invoke(
        args=["events", "prune", "--older-than", "30", "--delete-after", "50", "--yes"]
    )
    assert result.exit_code == 0, result.output
    events = rows(engine, "callback_events")
    assert any(e["body"] is None for e in events)
    before = snapshot(engine, PROJECTION_TABLES)
    assert any(r[-1] is None for r in before["delivery_reports"])  # source event deleted

    report = rebuild(engine, batch_size=25)
    assert report.pruned == sum(e["body"] is None for e in events)
    assert report.events == sum(e["body"] is not None for e in events)
    assert snapshot(engine, PROJECTION_TABLES) == before


def test_rebuild_after_erasure_brings_nothing_back(
    engine: Engine, make_app: Callable[..., Flask]
) -> None:
    messages = ingest_aged(engine, [0])
    app = make_app(erasure_key="k" * 32)
    erased = messages[0].identity
    result = app.test_cli_runner().invoke(args=["contacts", "erase", "--identity", erased, "--yes"])
    assert result.exit_code == 0, result.output
    before = snapshot(engine, PROJECTION_TABLES)
    rebuild(engine)
    after = snapshot(engine, PROJECTION_TABLES)
    assert after == before
    assert erased not in repr(after)


def test_rebuild_with_worker_processes_equals_live(engine: Engine) -> None:
    """Large rebuilds parse in worker processes: the same result, batch order kept."""
    relax_durability(engine)
    for body in varied_stream(messages=60, seed=3):
        ingest(engine, body, load_body(body))
    live = snapshot(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM delivery_reports"))
    report = rebuild(engine, batch_size=97, workers=2)
    assert snapshot(engine) == live
    assert report.events == count(engine, "callback_events")
