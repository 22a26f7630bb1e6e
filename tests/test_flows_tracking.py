"""A send joined to its statuses and completion: recording, merging, and end to end."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from tests.helpers import SECRET, fixture_json, post_callback, rows
from tests.sinch_stub import APP_ID, KEY_ID, KEY_SECRET, PROJECT, SinchStub, running_stub
from webhook.flows.message import FlowMessage, build_request
from webhook.flows.sending import record_send, send_journeys

SENT_AT = datetime(2026, 3, 10, 8, 59, 59, tzinfo=UTC)


@pytest.fixture
def sinch() -> Iterator[SinchStub]:
    with running_stub() as stub:
        yield stub


@pytest.fixture
def send_app(make_app: Callable[..., Flask], sinch: SinchStub) -> Flask:
    return make_app(
        sinch_webhook_secrets=(SECRET,),
        sinch_project_id=PROJECT,
        sinch_app_id=APP_ID,
        sinch_key_id=KEY_ID,
        sinch_key_secret=KEY_SECRET,
        sinch_api_base_url=sinch.url,
        sinch_auth_url=sinch.token_url,
    )


def callback(name: str, message_id: str, token: str, *, reply_to: bool = True) -> bytes:
    """A fixture callback rewritten to speak about our send."""
    payload: dict[str, Any] = fixture_json(name)
    if "message_submit_notification" in payload:
        note = payload["message_submit_notification"]
        note["message_id"] = message_id
        flow = note["submitted_message"]["channel_specific_message"]["WHATSAPP"]["message"]
        flow["flow_token"] = token
    elif "message_delivery_report" in payload:
        payload["message_delivery_report"]["message_id"] = message_id
    else:
        message = payload["message"]
        message["id"] = f"MO-{message_id}"
        contact_message = message["contact_message"]
        reply = contact_message["channel_specific_message"]["message"]["nfm_reply"]
        answers = json.loads(reply["response_json"])
        answers["flow_token"] = token
        reply["response_json"] = json.dumps(answers)
        if reply_to:
            contact_message["reply_to"]["message_id"] = message_id
        else:
            del contact_message["reply_to"]
    return json.dumps(payload).encode()


def send_then_callbacks(
    app: Flask, engine: Engine, *, reply_to: bool
) -> tuple[str, str, FlaskClient]:
    result = app.test_cli_runner().invoke(
        args=["flows", "send", "--to", "+55 11 98765-4321", "--flow-id", "1187345529063321",
              "--cta", "Open form", "--body", "Please fill in the form.", "--screen", "WELCOME"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [send] = rows(engine, "flow_sends")
    message_id, token = send["message_id"], send["flow_token"]
    assert result.stdout.strip() == f"accepted: message_id={message_id} flow_token={token}"
    client = app.test_client()
    for name in (
        "message_submit__flows",
        "message_delivery__queued_on_channel",
        "message_delivery__delivered",
        "message_delivery__read",
        "message_inbound__flow_nfm_reply",
    ):
        response = post_callback(client, callback(name, message_id, token, reply_to=reply_to))
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["status"] == "pending"
    assert {r["status"] for r in rows(engine, "callback_events")} == {"processed"}
    return message_id, token, client


def test_send_then_callbacks_end_in_one_joined_row(
    send_app: Flask, sinch: SinchStub, engine: Engine
) -> None:
    message_id, token, _ = send_then_callbacks(send_app, engine, reply_to=True)
    assert message_id == "01STUBMSG00000000000000001"
    assert token.startswith("ftk_")
    [send] = rows(engine, "flow_sends")  # the MESSAGE_SUBMIT completed our row
    assert send["send_status"] == "accepted"
    assert send["submitted_at"] is not None and send["sent_at"] is not None
    assert send["conversation_id"] == "01KHXP7MBGQRZ32VGZ2EQQ5VC8"  # filled by the callback
    assert send["contact_id"] == "01KHXP7M58J3HH8VCFWTFRQFVX"
    assert send["identity"] == "5511987654321"
    assert send["request_body"] == sinch.send_requests()[0].json()
    with engine.connect() as conn:
        [joined] = send_journeys(conn, message_id=message_id)
        assert send_journeys(conn, flow_token=token) == [joined]
    assert joined["delivery_status"] == "READ"
    assert joined["queued_at"] and joined["delivered_at"] and joined["read_at"]
    assert joined["completion_message_id"] == f"MO-{message_id}"
    assert joined["completion_joined_by"] == "reply_to"
    assert joined["response"]["full_name"] == "Ana Souza"
    assert joined["response"]["flow_token"] == token
    assert joined["completed_at"] is not None


def test_completion_without_reply_to_joins_by_flow_token(send_app: Flask, engine: Engine) -> None:
    message_id, token, _ = send_then_callbacks(send_app, engine, reply_to=False)
    [completion] = rows(engine, "flow_responses")
    assert completion["reply_to_message_id"] is None
    assert completion["flow_token"] == token
    with engine.connect() as conn:
        [joined] = send_journeys(conn, message_id=message_id)
    assert joined["completion_message_id"] == f"MO-{message_id}"
    assert joined["completion_joined_by"] == "flow_token"
    assert joined["delivery_status"] == "READ"


def test_reply_to_an_unknown_id_falls_back_to_the_token(
    client: FlaskClient, engine: Engine
) -> None:
    req = build_request(
        FlowMessage(to="5511987654321", flow_id="1", cta="Go", body="B", screen="S"), APP_ID
    )
    with engine.begin() as conn:
        record_send(conn, req, status="accepted", message_id="MT-1", sent_at=SENT_AT)
    body = callback("message_inbound__flow_nfm_reply", "wamid.NOT-OURS", req.flow_token)
    assert post_callback(client, body).status_code == 200
    with engine.connect() as conn:
        [joined] = send_journeys(conn, message_id="MT-1")
    assert joined["completion_joined_by"] == "flow_token"
    assert joined["delivery_status"] is None


def test_completion_for_another_send_does_not_join_by_a_shared_token(
    client: FlaskClient, engine: Engine
) -> None:
    # Another system reused the token "unused" for two sends; the reply names one of them.
    req = build_request(
        FlowMessage(contact_id="C", flow_id="1", cta="Go", body="B", screen="S", token="unused"),
        APP_ID,
    )
    with engine.begin() as conn:
        record_send(conn, req, status="accepted", message_id="MT-A", sent_at=SENT_AT)
        record_send(conn, req, status="accepted", message_id="MT-B", sent_at=SENT_AT)
    assert post_callback(client, callback("message_inbound__flow_nfm_reply", "MT-B",
                                          "unused")).status_code == 200  # fmt: skip
    with engine.connect() as conn:
        joined = {r["message_id"]: r["completion_message_id"] for r in send_journeys(conn)}
    assert joined == {"MT-A": None, "MT-B": "MO-MT-B"}


def test_submit_arriving_before_the_record_is_merged(client: FlaskClient, engine: Engine) -> None:
    """MESSAGE_SUBMIT first, then our own record of the send: one row with both."""
    message = FlowMessage(contact_id="01KHXP7M58J3HH8VCFWTFRQFVX", flow_id="1187345529063321",
                          cta="Open form", body="B", screen="WELCOME", token="tok-ours",
                          correlation_id="ours")  # fmt: skip
    req = build_request(message, APP_ID)
    submit = callback("message_submit__flows", "MT-EARLY", "tok-ours")
    assert post_callback(client, submit).status_code == 200
    [before] = rows(engine, "flow_sends")
    assert before["send_status"] == "submitted" and before["request_body"] is None
    with engine.begin() as conn:
        record_send(conn, req, status="accepted", message_id="MT-EARLY", sent_at=SENT_AT)
    [row] = rows(engine, "flow_sends")
    assert row["id"] == before["id"]
    assert row["send_status"] == "accepted"
    assert row["request_body"] == req.body
    assert row["sent_at"] == SENT_AT
    # What Sinch reported stays; what only we know is added.
    assert row["submitted_at"] == before["submitted_at"]
    assert row["conversation_id"] == "01KHXP7MBGQRZ32VGZ2EQQ5VC8"
    assert row["correlation_id"] == "intake-session-8841"
    assert row["identity"] == "5511987654321"
    assert row["flow_token"] == "tok-ours"


def test_submit_after_the_record_completes_it(client: FlaskClient, engine: Engine) -> None:
    req = build_request(
        FlowMessage(to="5511987654321", flow_id="1187345529063321", cta="Open form", body="B",
                    screen="WELCOME"), APP_ID,
    )  # fmt: skip
    with engine.begin() as conn:
        record_send(conn, req, status="accepted", message_id="MT-LATE", sent_at=SENT_AT)
    submit = callback("message_submit__flows", "MT-LATE", req.flow_token)
    assert post_callback(client, submit).status_code == 200
    assert post_callback(client, submit).get_json()["outcome"] == "duplicate"
    [row] = rows(engine, "flow_sends")
    assert row["send_status"] == "accepted"
    assert row["submitted_at"] is not None
    assert row["conversation_id"] == "01KHXP7MBGQRZ32VGZ2EQQ5VC8"
    assert row["contact_id"] == "01KHXP7M58J3HH8VCFWTFRQFVX"
    assert row["request_body"] == req.body and row["sent_at"] == SENT_AT
