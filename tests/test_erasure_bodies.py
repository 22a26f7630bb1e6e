"""Erasure finds the person in every body ingestion accepts, or fails and changes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, insert

from tests.helpers import post_callback, rows
from tests.test_erasure import ANA_CONTACT, ANA_NUMBER, KEY, erase
from webhook.db.models import CallbackEvent, FlowExchange

pytestmark = pytest.mark.usefixtures("engine")


@pytest.fixture
def app(make_app: Any) -> Flask:
    application: Flask = make_app(erasure_key=KEY, log_format="json")
    return application


def inbound(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "app_id": "A",
        "message": {
            "id": "01KKERASEBODY000000000001", "contact_id": ANA_CONTACT,
            "channel_identity": {"channel": "WHATSAPP", "identity": ANA_NUMBER},
            "contact_message": {"text_message": {"text": text}}, **extra,
        },
    }  # fmt: skip


def stored_bodies(engine: Engine) -> list[bytes]:
    return [bytes(r["body"]) for r in rows(engine, "callback_events")]


def post_raw(app: Flask, body: bytes) -> None:
    response = post_callback(app.test_client(), body, secret="unused")
    assert response.status_code == 200, response.get_json()


BODIES = {
    "byte order mark": b"\xef\xbb\xbf" + json.dumps(inbound("Oi, sou a Ana")).encode(),
    "lone surrogate": json.dumps(inbound("Oi \ud83d")).encode(),
    # The person's object first, a second "message" key last: JSON keeps the last one.
    "duplicate keys": (
        b'{"app_id":"A","message":'
        + json.dumps(inbound("Oi")["message"]).encode()
        + b',"message":{"id":"01KKOTHER","contact_message":{"text_message":{"text":"x"}}}}'
    ),
}


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_the_person_leaves_every_kind_of_stored_body(app: Flask, engine: Engine, kind: str) -> None:
    post_raw(app, BODIES[kind])
    assert any(ANA_NUMBER.encode() in b for b in stored_bodies(engine))
    result = erase(app, "--identity", ANA_NUMBER, "--yes")
    assert result.exit_code == 0, result.output
    for body in stored_bodies(engine):
        assert ANA_NUMBER.encode() not in body and ANA_CONTACT.encode() not in body, kind
    assert all(r["erased_at"] is not None for r in rows(engine, "callback_events"))


def test_a_body_nested_600_levels_deep_is_redacted(app: Flask, engine: Engine) -> None:
    deep: Any = {"who": ANA_NUMBER}
    for _ in range(600):
        deep = [deep]
    post_raw(app, json.dumps(inbound("Oi", metadata=deep)).encode())
    result = erase(app, "--identity", ANA_NUMBER, "--yes")
    assert result.exit_code == 0, result.output
    assert all(ANA_NUMBER.encode() not in body for body in stored_bodies(engine))


def test_data_sent_to_the_flows_endpoint_under_an_unlinked_token_is_erased(
    app: Flask, engine: Engine
) -> None:
    post_raw(app, json.dumps(inbound("Oi")).encode())
    at = rows(engine, "callback_events")[0]["received_at"]
    with engine.begin() as conn:
        conn.execute(insert(FlowExchange).values(
            flow_token="token-nobody-links", action="data_exchange", http_status=200,
            data={"phone": f"+{ANA_NUMBER}", "contact": ANA_CONTACT}, received_at=at))  # fmt: skip
    result = erase(app, "--contact-id", ANA_CONTACT, "--yes")
    assert result.exit_code == 0, result.output
    [exchange] = rows(engine, "flow_exchanges")
    assert exchange["data"] is None


def test_a_body_that_cannot_be_redacted_fails_the_erasure_and_changes_nothing(
    app: Flask, engine: Engine
) -> None:
    post_raw(app, json.dumps(inbound("Oi")).encode())
    # Stored by other means than the endpoint (an old import): not JSON, names the person.
    with engine.begin() as conn:
        conn.execute(insert(CallbackEvent).values(
            body=f"not json {ANA_NUMBER}".encode(), body_sha256="f" * 64, trigger="UNKNOWN",
            status="failed", received_at=datetime.now(UTC)))  # fmt: skip
    before = stored_bodies(engine)
    result = erase(app, "--identity", ANA_NUMBER, "--yes")
    assert result.exit_code == 1
    odd = rows(engine, "callback_events")[-1]["id"]
    assert f"cannot redact the stored bodies of event {odd} (not JSON" in result.output
    assert "nothing was changed" in result.output
    assert stored_bodies(engine) == before
    assert rows(engine, "erasures") == []
    assert [r["identity"] for r in rows(engine, "inbound_messages")] == [ANA_NUMBER]
