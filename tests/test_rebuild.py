"""`events rebuild`: the tables rebuilt from the raw store equal live ingestion."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, insert, text, update

from tests.helpers import count, post_callback, rows
from tests.replay_helpers import relax_durability, snapshot, varied_config, varied_stream
from webhook.models import FlowSend, MessageStatus
from webhook.rebuild import rebuild
from webhook.simulate import simulate
from webhook.state import state


@pytest.fixture
def client(app: Flask, engine: Engine) -> FlaskClient:
    relax_durability(state(app).engine)
    relax_durability(engine)
    return app.test_client()


def add_sender_rows(engine: Engine, message_ids: list[str]) -> None:
    """flow_sends rows as our own sender records them, before Sinch's MESSAGE_SUBMIT."""
    sent = datetime(2026, 3, 1, 7, 59, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(FlowSend),
            [
                {"message_id": mid, "flow_id": "SENDER-FLOW", "flow_token": None,
                 "send_status": "accepted", "request_body": {"to": mid}, "sent_at": sent}
                for mid in message_ids
            ],
        )  # fmt: skip
        # A send Sinch refused: no message id.
        conn.execute(insert(FlowSend).values(send_status="rejected", error="bad number"))


def test_rebuild_equals_live_ingestion(client: FlaskClient, engine: Engine) -> None:
    messages, _ = simulate(varied_config(messages=500))
    add_sender_rows(engine, [m.message_id for m in messages[:40]])
    for body in varied_stream(messages=500):
        response = post_callback(client, body)
        assert response.status_code == 200, response.get_json()
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
