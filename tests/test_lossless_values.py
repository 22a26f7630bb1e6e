"""Values no database can store as JSON are kept as text, the same on SQLite and PostgreSQL:
never stored changed (null, Infinity), never silently dropped."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine

from tests.helpers import count, fixture_json, post_callback, rows


def completion_with(answers_text: str) -> bytes:
    doc = fixture_json("message_inbound__flow_nfm_reply")
    reply = doc["message"]["contact_message"]["channel_specific_message"]["message"]
    reply["nfm_reply"]["response_json"] = answers_text
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        ('{"flow_token":"t-1","age":1e400}', "a number beyond a double's range"),
        ('{"flow_token":"t-1","name":"a\\u0000b"}', "a NUL character"),
    ],
)
def test_an_answer_the_database_cannot_hold_is_kept_as_text(
    client: FlaskClient, engine: Engine, answers: str, reason: str
) -> None:
    assert post_callback(client, completion_with(answers)).status_code == 200
    [event] = rows(engine, "callback_events")
    assert (event["status"], event["error"]) == ("processed", None)
    [completion] = rows(engine, "flow_responses")
    assert completion["flow_token"] == "t-1"
    assert completion["response"] is None
    assert completion["response_raw"] == answers  # lossless
    assert completion["parse_error"] == (
        f"response_json holds {reason}, which the database cannot store as JSON; "
        "kept as text in response_raw"
    )


def test_a_value_longer_than_its_column_fails_alike_on_both_databases(
    client: FlaskClient, engine: Engine
) -> None:
    identity = {"channel": "WHATSAPP", "identity": "5511900000001"}
    report = {"message_id": "X" * 80, "status": "DELIVERED", "channel_identity": identity}
    body = json.dumps({"message_delivery_report": report}).encode()
    assert post_callback(client, body).status_code == 200
    [event] = rows(engine, "callback_events")
    assert (event["status"], event["error"]) == (
        "failed",
        "delivery_reports.message_id is longer than 64 characters (80)",
    )
    assert count(engine, "delivery_reports") == count(engine, "message_status") == 0
