"""POST /sinch/callbacks: every example signed through the endpoint, and bad input."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from tests.helpers import FIXTURES, count, fixture_bytes, post_callback, rows, sign
from webhook.ingest.parsers import TRIGGERS

ALL_FIXTURES = sorted(p.stem for p in FIXTURES.glob("*.json"))
FLOW_MT = "01KKBFJYQPYQWF3VT0NDA4XKVD"


def trigger_of(fixture: str) -> str:
    return fixture.split("__")[0].upper()


def test_every_trigger_has_a_fixture() -> None:
    assert {trigger_of(name) for name in ALL_FIXTURES} >= TRIGGERS


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fixture_is_stored_byte_exact(client: FlaskClient, engine: Engine, name: str) -> None:
    body = fixture_bytes(name)
    response = post_callback(client, body)
    assert response.status_code == 200, response.get_json()
    [event] = rows(engine, "callback_events")
    assert bytes(event["body"]) == body
    assert event["body_sha256"] == hashlib.sha256(body).hexdigest()
    expected_trigger = trigger_of(name)
    assert event["trigger"] == expected_trigger
    assert event["status"] == ("ignored" if expected_trigger == "UNKNOWN" else "processed")
    assert event["headers"]["x-sinch-webhook-signature-algorithm"] == "HmacSHA256"
    assert response.get_json()["outcome"] == "stored"


def test_flow_completion(client: FlaskClient, engine: Engine) -> None:
    post_callback(client, fixture_bytes("message_inbound__flow_nfm_reply"))
    [flow] = rows(engine, "flow_responses")
    assert flow["message_id"] == "01KKBFV7F08WHK09EY397B72HT"
    assert flow["flow_token"] == "ftk_7QmZ3xRk2vN8pL4sW9aB"
    assert flow["reply_to_message_id"] == FLOW_MT
    assert flow["contact_id"] == "01KHXP7M58J3HH8VCFWTFRQFVX"
    assert flow["identity"] == "5511987654321"
    assert flow["response"]["symptoms"] == ["fever", "cough"]
    assert flow["response"]["consent"] is True
    assert flow["parse_error"] is None
    assert flow["completed_at"].replace(tzinfo=UTC) == datetime(
        2026, 3, 10, 9, 4, 31, 587201, tzinfo=UTC
    )
    [inbound] = rows(engine, "inbound_messages")
    assert inbound["kind"] == "flow_response"
    [event] = rows(engine, "callback_events")
    assert event["correlation_id"] == "intake-session-8841"
    assert event["app_id"] == "01K94JHH80F86PQMSGMGZ6MS3E"


def test_address_nfm_reply_is_not_a_flow(client: FlaskClient, engine: Engine) -> None:
    post_callback(client, fixture_bytes("message_inbound__address_nfm_reply"))
    assert count(engine, "flow_responses") == 0
    [inbound] = rows(engine, "inbound_messages")
    assert inbound["kind"] == "nfm_reply_other"


@pytest.mark.parametrize(
    ("name", "kind", "field", "value"),
    [
        ("message_inbound__text", "text", "text", "Oi, quero marcar uma consulta"),
        ("message_inbound__choice_response", "choice_response", "postback_data",
         "confirm_appointment_yes"),
        ("message_inbound__media", "media", "media_url",
         "https://media.example-cdn.sinch.invalid/whatsapp/01KKBHBQ10DVEHDE5TVPYWEDTN.jpg"),
    ],
)  # fmt: skip
def test_inbound_kinds(
    client: FlaskClient, engine: Engine, name: str, kind: str, field: str, value: str
) -> None:
    post_callback(client, fixture_bytes(name))
    [inbound] = rows(engine, "inbound_messages")
    assert inbound["kind"] == kind
    assert inbound[field] == value
    assert inbound["channel"] == "WHATSAPP"


def test_choice_response_reply_to(client: FlaskClient, engine: Engine) -> None:
    post_callback(client, fixture_bytes("message_inbound__choice_response"))
    [inbound] = rows(engine, "inbound_messages")
    assert inbound["reply_to_message_id"] == "01KKBH5Z9R0C7W3N2T8Q4M6V1X"


def test_broken_response_json_is_recorded(client: FlaskClient, engine: Engine) -> None:
    response = post_callback(client, fixture_bytes("message_inbound__flow_broken_response_json"))
    assert response.status_code == 200
    [flow] = rows(engine, "flow_responses")
    assert flow["response"] is None
    assert flow["response_raw"] == '{"flow_token":"ftk_broken","full_name":"Ana'
    assert "not valid JSON" in flow["parse_error"]
    assert flow["flow_token"] is None


def test_missing_flow_token_is_recorded(client: FlaskClient, engine: Engine) -> None:
    post_callback(client, fixture_bytes("message_inbound__flow_missing_token"))
    [flow] = rows(engine, "flow_responses")
    assert flow["flow_token"] is None
    assert flow["response"] == {"rating": "5", "comment": "great"}
    assert flow["parse_error"] == "response_json has no flow_token"


def test_response_json_as_object(client: FlaskClient, engine: Engine) -> None:
    post_callback(client, fixture_bytes("message_inbound__flow_response_object"))
    [flow] = rows(engine, "flow_responses")
    assert flow["flow_token"] == "ftk_object_form"
    assert flow["response"] == {"flow_token": "ftk_object_form", "choice": "B"}


def test_delivery_history_and_status(client: FlaskClient, engine: Engine) -> None:
    for name in ("queued_on_channel", "delivered", "read"):
        assert post_callback(client, fixture_bytes(f"message_delivery__{name}")).status_code == 200
    history = rows(engine, "delivery_reports")
    assert [r["status"] for r in history] == ["QUEUED_ON_CHANNEL", "DELIVERED", "READ"]
    assert {r["message_id"] for r in history} == {FLOW_MT}
    assert {r["kind"] for r in history} == {"message"}
    [status] = rows(engine, "message_status", "message_id")
    assert status["status"] == "READ"
    assert status["queued_at"].replace(tzinfo=UTC) == datetime(
        2026, 3, 10, 9, 0, 0, 702644, tzinfo=UTC
    )
    assert status["delivered_at"] is not None and status["read_at"] is not None
    assert not status["failed_after_delivery"]


def test_failed_report_reason(client: FlaskClient, engine: Engine) -> None:
    post_callback(client, fixture_bytes("message_delivery__failed_outside_window"))
    [report] = rows(engine, "delivery_reports")
    assert report["reason_code"] == "OUTSIDE_ALLOWED_SENDING_WINDOW"
    assert report["reason_sub_code"] == "UNSPECIFIED_SUB_CODE"
    assert report["channel_code"] == "131047"
    assert report["description" if "description" in report else "reason_description"]
    [status] = rows(engine, "message_status", "message_id")
    assert status["status"] == "FAILED"
    assert status["reason_code"] == "OUTSIDE_ALLOWED_SENDING_WINDOW"


def test_dispatch_mode_has_no_contact(client: FlaskClient, engine: Engine) -> None:
    post_callback(client, fixture_bytes("message_delivery__failed_dispatch_mode"))
    [report] = rows(engine, "delivery_reports")
    assert report["contact_id"] is None and report["conversation_id"] is None
    assert report["processing_mode"] == "DISPATCH"


def test_event_delivery_goes_to_history_only(client: FlaskClient, engine: Engine) -> None:
    post_callback(client, fixture_bytes("event_delivery__delivered"))
    [report] = rows(engine, "delivery_reports")
    assert report["kind"] == "event"
    assert report["message_id"] == "01KKGZ2222EVENTDELIVERY01"
    assert count(engine, "message_status") == 0


def test_message_submit_records_flow_send(client: FlaskClient, engine: Engine) -> None:
    post_callback(client, fixture_bytes("message_submit__flows"))
    [send] = rows(engine, "flow_sends")
    assert send["message_id"] == FLOW_MT
    assert send["flow_id"] == "1187345529063321"
    assert send["flow_token"] == "ftk_7QmZ3xRk2vN8pL4sW9aB"
    assert send["flow_mode"] == "published"
    assert send["flow_cta"] == "Open form"
    assert send["flow_action"] == "navigate"
    assert send["screen"] == "WELCOME"
    assert send["contact_id"] == "01KHXP7M58J3HH8VCFWTFRQFVX"
    assert send["send_status"] == "submitted"
    assert send["submitted_at"] is not None


def test_unsupported_flow_reply_is_recovered(client: FlaskClient, engine: Engine) -> None:
    wa = {
        "entry": [{"changes": [{"value": {"messages": [{
            "from": "+55 11 98765-4321", "id": "wamid.FLOW1", "context": {"id": "wamid.MT"},
            "type": "interactive", "interactive": {"type": "nfm_reply", "nfm_reply": {
                "name": "flow", "body": "Sent", "response_json": '{"flow_token":"t-1","a":1}'}},
        }]}}]}]
    }  # fmt: skip
    body = json.dumps(
        {"app_id": "A", "unsupported_callback": {"channel": "WHATSAPP", "payload": json.dumps(wa)}}
    ).encode()
    assert post_callback(client, body).status_code == 200
    [flow] = rows(engine, "flow_responses")
    assert (flow["message_id"], flow["flow_token"], flow["identity"]) == (
        "wamid.FLOW1",
        "t-1",
        "5511987654321",
    )


def test_duplicate_is_acknowledged_and_changes_nothing(client: FlaskClient, engine: Engine) -> None:
    body = fixture_bytes("message_inbound__flow_nfm_reply")
    first = post_callback(client, body)
    second = post_callback(client, body)  # a retry: new nonce, same body
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.get_json()["outcome"] == "duplicate"
    assert count(engine, "callback_events") == 1
    assert count(engine, "flow_responses") == 1


# ---------------------------------------------------------------- bad input


def _error(response: Any) -> str:
    payload = response.get_json()
    assert set(payload) == {"error", "message"}
    return str(payload["error"])


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"not json", "invalid_body"), (b"[1, 2]", "invalid_body"), (b'"text"', "invalid_body"),
     (b"{\"a\": NaN}", "invalid_body"), (b"\xff\xfe{}", "invalid_body"), (b"", "invalid_body")],
)  # fmt: skip
def test_bad_body_is_400_and_stores_nothing(
    client: FlaskClient, engine: Engine, body: bytes, code: str
) -> None:
    response = post_callback(client, body)
    assert response.status_code == 400
    assert _error(response) == code
    assert count(engine, "callback_events") == 0


def test_wrong_signature_is_401(client: FlaskClient, engine: Engine) -> None:
    response = post_callback(client, fixture_bytes("message_inbound__text"), secret="wrong")
    assert response.status_code == 401
    assert _error(response) == "signature_mismatch"
    assert count(engine, "callback_events") == 0


def test_missing_signature_is_401(client: FlaskClient, engine: Engine) -> None:
    response = client.post("/sinch/callbacks", data=fixture_bytes("message_inbound__text"))
    assert response.status_code == 401
    assert _error(response) == "signature_missing"
    assert count(engine, "callback_events") == 0


def test_body_changed_after_signing_is_401(client: FlaskClient, engine: Engine) -> None:
    body = fixture_bytes("message_inbound__text")
    headers = sign(body)
    response = client.post("/sinch/callbacks", data=body.replace(b"Oi", b"Ol"), headers=headers)
    assert response.status_code == 401


def test_rotation(make_app: Any, engine: Engine) -> None:
    client = make_app(sinch_webhook_secrets=("old", "new")).test_client()
    assert post_callback(client, fixture_bytes("message_inbound__text"), "old").status_code == 200
    assert post_callback(client, fixture_bytes("message_inbound__media"), "new").status_code == 200
    assert (
        post_callback(client, fixture_bytes("message_inbound__flow_nfm_reply"), "x").status_code
        == 401
    )
    assert count(engine, "callback_events") == 2


def test_unsigned_mode_accepts_and_warns(
    make_app: Any, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    app: Flask = make_app(sinch_webhook_secrets=())
    assert "WITHOUT signature verification" in caplog.text
    response = app.test_client().post(
        "/sinch/callbacks", data=fixture_bytes("message_inbound__text")
    )
    assert response.status_code == 200
    assert count(engine, "callback_events") == 1


def test_stale_signature_refused_when_max_age_set(make_app: Any, engine: Engine) -> None:
    from webhook.ingest.signing import sign_headers

    client = make_app(sinch_webhook_secrets=("s",), signature_max_age_seconds=300).test_client()
    body = fixture_bytes("message_inbound__text")
    old = sign_headers("s", body, "n1", timestamp=1_600_000_000)
    response = client.post("/sinch/callbacks", data=body, headers=old)
    assert response.status_code == 401
    assert _error(response) == "signature_stale"
    fresh = sign_headers("s", body, "n2")
    assert client.post("/sinch/callbacks", data=body, headers=fresh).status_code == 200


def test_oversized_body_is_413(make_app: Any, engine: Engine) -> None:
    client = make_app(sinch_webhook_secrets=(), max_content_length=1000).test_client()
    body = json.dumps({"message": {"id": "x" * 2000}}).encode()
    response = client.post("/sinch/callbacks", data=body)
    assert response.status_code == 413
    assert _error(response) == "body_too_large"
    assert count(engine, "callback_events") == 0


def test_database_down_is_503_with_retry_after(make_app: Any, engine: Engine) -> None:
    app = make_app(
        database_url="postgresql+psycopg://127.0.0.1:1/nothing", sinch_webhook_secrets=()
    )
    response = app.test_client().post(
        "/sinch/callbacks", data=fixture_bytes("message_inbound__text")
    )
    assert response.status_code == 503
    assert _error(response) == "storage_unavailable"
    assert response.headers["Retry-After"] == "5"
    assert app.test_client().get("/readyz").status_code == 503
    assert count(engine, "callback_events") == 0


def test_projection_failure_keeps_raw_event_as_failed(client: FlaskClient, engine: Engine) -> None:
    # A structurally wrong payload for a known trigger: stored, marked failed, answered 200.
    body = json.dumps({"app_id": "A", "message_delivery_report": {"message_id": ["x"]}}).encode()
    response = post_callback(client, body)
    assert response.status_code == 200
    [event] = rows(engine, "callback_events")
    assert event["status"] == "failed"
    assert "message_delivery_report.message_id" in event["error"]
    assert count(engine, "delivery_reports") == 0


def test_database_refusing_a_value_keeps_raw_event(client: FlaskClient, engine: Engine) -> None:
    # message_id longer than the column: PostgreSQL would refuse the row, SQLite store it;
    # the projector checks the length first, so both keep the raw event, failed alike.
    body = json.dumps(
        {"message_delivery_report": {"message_id": "m" * 300, "status": "DELIVERED"}}
    ).encode()
    response = post_callback(client, body)
    assert response.status_code == 200
    [event] = rows(engine, "callback_events")
    assert bytes(event["body"]) == body
    assert (event["status"], event["error"]) == (
        "failed",
        "delivery_reports.message_id is longer than 64 characters (300)",
    )
    assert count(engine, "delivery_reports") == 0


def test_health_and_ready(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["status"] == "ready"


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert _error(response) == "not_found"
