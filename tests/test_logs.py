"""Structured logs: one JSON line per callback and per flow exchange, request ids, and
never a secret, a signature, a body or an answer."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine

from tests.helpers import FIXTURES, SECRET, fixture_bytes, sign
from webhook.core.logs import JsonFormatter, TextFormatter, configure_logging, pick_format
from webhook.core.settings import ConfigError
from webhook.http.observe import record_flow_exchange

CALLBACK_KEYS = {"ts", "level", "logger", "msg", "request_id", "trigger", "outcome", "status",
                 "event_id", "http_status", "duration_ms"}  # fmt: skip


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line must be one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def callback_lines(text: str) -> list[dict[str, Any]]:
    return [r for r in json_lines(text) if r["logger"] == "webhook.callback"]


def _record(**fields: Any) -> logging.LogRecord:
    record = logging.LogRecord("webhook.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.fields = fields
    return record


def test_json_formatter_writes_one_object_per_line() -> None:
    line = JsonFormatter().format(_record(request_id="r1", n=2, msg="clash"))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["msg"] == "hello you" and doc["field_msg"] == "clash"
    assert (doc["level"], doc["logger"], doc["request_id"], doc["n"]) == (
        "info",
        "webhook.x",
        "r1",
        2,
    )
    assert doc["ts"].endswith("Z")
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record()
        record.exc_info = sys.exc_info()
    doc = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in doc["exc"]


def test_text_formatter_is_for_people() -> None:
    line = TextFormatter().format(_record(request_id="r1", status=None))
    assert line.endswith("webhook.x hello you request_id=r1")


def test_auto_format_is_text_on_a_terminal_only() -> None:
    assert pick_format("auto", isatty=True) == "text"
    assert pick_format("auto", isatty=False) == "json"
    assert pick_format("text", isatty=False) == "text"
    assert pick_format("json", isatty=True) == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        pick_format("xml", isatty=False)
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        configure_logging("LOUD", "json")


def test_level_comes_from_settings(make_app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    app = make_app(log_level="WARNING", log_format="json", sinch_webhook_secrets=())
    capsys.readouterr()
    app.test_client().post("/sinch/callbacks", data=fixture_bytes("message_inbound__text"))
    app.test_client().post("/sinch/callbacks", data=b"[]")
    [line] = callback_lines(capsys.readouterr().err)  # the INFO line for the 200 is dropped
    assert (line["level"], line["http_status"], line["error"]) == ("warning", 400, "invalid_body")


def test_one_line_per_callback_with_the_callers_request_id(
    make_app: Any, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_app(log_format="json", sinch_webhook_secrets=(SECRET,)).test_client()
    capsys.readouterr()
    body = fixture_bytes("message_inbound__flow_nfm_reply")
    response = client.post("/sinch/callbacks", data=body,
                           headers={**sign(body), "X-Request-Id": "req-42"})  # fmt: skip
    assert response.headers["X-Request-Id"] == "req-42"
    [line] = callback_lines(capsys.readouterr().err)
    assert set(line) == CALLBACK_KEYS
    assert line["request_id"] == "req-42"
    assert (line["trigger"], line["outcome"], line["status"]) == (
        "MESSAGE_INBOUND", "stored", "pending")  # fmt: skip
    assert line["event_id"] == response.get_json()["event_id"]
    assert line["http_status"] == 200 and line["duration_ms"] >= 0
    assert line["level"] == "info"


@pytest.mark.parametrize("given", [None, "", "has spaces", "x" * 129, 'quote"d', "é"])
def test_request_id_is_generated_unless_given_a_plain_one(
    make_app: Any, engine: Engine, capsys: pytest.CaptureFixture[str], given: str | None
) -> None:
    client = make_app(log_format="json", sinch_webhook_secrets=()).test_client()
    headers = {} if given is None else {"X-Request-Id": given}
    response = client.post("/sinch/callbacks", data=b"{}", headers=headers)
    rid = response.headers["X-Request-Id"]
    assert rid != given and len(rid) == 32
    [line] = callback_lines(capsys.readouterr().err)
    assert line["request_id"] == rid
    assert client.get("/healthz").headers["X-Request-Id"]


def test_rejections_are_warnings_with_their_code(
    make_app: Any, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    client = make_app(log_format="json", sinch_webhook_secrets=(SECRET,)).test_client()
    capsys.readouterr()
    client.post("/sinch/callbacks", data=b"{}", headers=sign(b"{}", "wrong"))
    [line] = callback_lines(capsys.readouterr().err)
    assert (line["level"], line["outcome"], line["error"]) == (
        "warning", "rejected", "signature_mismatch")  # fmt: skip


def test_flow_exchange_line(app: Flask, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    with app.test_request_context(headers={"X-Request-Id": "flow-1"}):
        app.preprocess_request()
        record_flow_exchange("data_exchange", 200, 0.0123, screen="APPOINTMENT")
        record_flow_exchange({"not": "a string"}, 500, 0.5, error="handler_error")
    first, second = [r for r in json_lines(capsys.readouterr().err)
                     if r["logger"] == "webhook.flow_exchange"]  # fmt: skip
    assert first == {**first, "request_id": "flow-1", "action": "data_exchange",
                     "screen": "APPOINTMENT", "http_status": 200, "duration_ms": 12.3}  # fmt: skip
    assert (second["action"], second["level"], second["error"]) == (
        "other",
        "error",
        "handler_error",
    )


# ---------------------------------------------------------------- a full run, scanned


def test_no_secret_body_or_answer_in_any_log_line(
    make_app: Any, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics_token, erasure_key = "metrics-token-7c1e", "erasure-key-93ab"
    app = make_app(log_format="json", log_level="DEBUG", sinch_webhook_secrets=(SECRET,),
                   metrics_token=metrics_token, erasure_key=erasure_key,
                   max_content_length=20_000)  # fmt: skip
    client = app.test_client()
    capsys.readouterr()
    signatures: list[str] = []
    posted = 0
    for path in sorted(FIXTURES.glob("*.json")):
        body = path.read_bytes()
        headers = sign(body)
        signatures.append(headers["x-sinch-webhook-signature"])
        assert client.post("/sinch/callbacks", data=body, headers=headers).status_code == 200
        posted += 1
    text_body = fixture_bytes("message_inbound__text")
    client.post("/sinch/callbacks", data=text_body, headers=sign(text_body))  # duplicate
    client.post("/sinch/callbacks", data=text_body, headers=sign(text_body, "wrong"))
    client.post("/sinch/callbacks", data=b'{"secret": "' + b"z" * 30_000 + b'"}')
    client.post("/sinch/callbacks", data=b"not json but Ana Souza", headers=sign(b"x"))
    client.get("/metrics")
    client.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
    with app.test_request_context():
        app.preprocess_request()
        record_flow_exchange("data_exchange", 200, 0.01, screen="DETAILS")
    runner = app.test_cli_runner()
    erased = runner.invoke(args=["contacts", "erase", "--identity", "+5511987654321", "--yes"])
    assert erased.exit_code == 0, erased.output
    pruned = runner.invoke(args=["events", "prune", "--older-than", "0", "--yes"])
    assert pruned.exit_code == 0, pruned.output

    logged = capsys.readouterr().err + erased.stderr
    records = json_lines(logged)  # every line is JSON
    assert len(callback_lines(logged)) == posted + 4
    assert any(r["msg"] == "erasure" for r in records)
    forbidden = [SECRET, metrics_token, erasure_key, *signatures,
                 # personal data and answers from the bodies
                 "5511987654321", "01KHXP7M58J3HH8VCFWTFRQFVX", "Ana Souza", "Oi, quero",
                 "fever", "1988-04-02", "confirm_appointment_yes", "example-cdn",
                 "ftk_7QmZ3xRk2vN8pL4sW9aB", "response_json", "zzzzzzzzzz", "not json"]  # fmt: skip
    for needle in forbidden:
        assert needle not in logged, needle


def test_text_lines_escape_control_characters() -> None:
    """A value carrying a newline cannot forge a second log line under LOG_FORMAT=text."""
    from webhook.core.logs import TextFormatter

    record = logging.LogRecord("webhook.x", logging.WARNING, __file__, 1, "failed: %s",
                               ("boom\n2026-01-01 INFO webhook forged\x1b[2J",), None)  # fmt: skip
    record.fields = {"error": "a\rb"}
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "boom\\n2026-01-01 INFO webhook forged\\x1b[2J" in line and "error=a\\rb" in line
