"""Pure parsing: triggers, timestamps, identities, flow replies."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from webhook.core.timeparse import ParseError, parse_time
from webhook.ingest.body import InvalidBody, load_body
from webhook.ingest.fields import normalize_identity
from webhook.ingest.flow_reply import parse_flow_reply
from webhook.ingest.parsers import TRIGGER_KEYS, TRIGGERS, UNKNOWN, detect_trigger, parse_callback
from webhook.ingest.records import FlowResponseRecord, InboundMessageRecord


def test_all_21_documented_triggers() -> None:
    assert len(TRIGGERS) == 21


@pytest.mark.parametrize(("key", "trigger"), sorted(TRIGGER_KEYS.items()))
def test_trigger_from_top_level_key(key: str, trigger: str) -> None:
    assert detect_trigger({"app_id": "A", "message_metadata": "", key: {}}) == trigger


def test_exact_key_match_only() -> None:
    # message_metadata must never be mistaken for message.
    assert detect_trigger({"message_metadata": "", "correlation_id": "x"}) == UNKNOWN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-10T08:58:41Z", datetime(2026, 3, 10, 8, 58, 41, tzinfo=UTC)),
        ("2026-03-10T08:58:41.093Z", datetime(2026, 3, 10, 8, 58, 41, 93000, tzinfo=UTC)),
        ("2026-03-10T08:58:41.021544Z", datetime(2026, 3, 10, 8, 58, 41, 21544, tzinfo=UTC)),
        ("2026-03-10T08:58:41.123456789Z", datetime(2026, 3, 10, 8, 58, 41, 123456, tzinfo=UTC)),
        ("2026-03-10T08:58:41.5+02:00", datetime(2026, 3, 10, 6, 58, 41, 500000, tzinfo=UTC)),
        ("2026-03-10T08:58:41", datetime(2026, 3, 10, 8, 58, 41, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-10T00:00:00Z", 12, ["x"]])
def test_parse_time_rejects(bad: object) -> None:
    with pytest.raises(ParseError):
        parse_time(bad, "message.accept_time")


@pytest.mark.parametrize(
    ("channel", "raw", "expected"),
    [
        ("WHATSAPP", "+55 11 98765-4321", "5511987654321"),
        ("WHATSAPP", "5511987654321", "5511987654321"),
        ("SMS", "0046701234567", "46701234567"),
        ("MESSENGER", "+psid-123", "+psid-123"),
    ],
)
def test_normalize_identity(channel: str, raw: str, expected: str) -> None:
    assert normalize_identity(channel, raw) == expected


def test_flow_reply_variants() -> None:
    assert parse_flow_reply('{"flow_token":"t","a":1}') == ("t", {"flow_token": "t", "a": 1},
                                                            None, None)  # fmt: skip
    token, response, raw, error = parse_flow_reply("[1,2]")
    assert (token, response, raw) == (None, [1, 2], None)
    assert error == "response_json is a JSON array, not an object"
    assert parse_flow_reply(None)[3] == "response_json is missing"
    assert parse_flow_reply('{"flow_token": 7}')[0] == "7"


def test_inbound_parse_error_names_the_field() -> None:
    with pytest.raises(ParseError, match=r"message\.contact_message: expected an object"):
        parse_callback({"message": {"id": "M1", "contact_message": "text"}})
    with pytest.raises(ParseError, match=r"message\.id: required string is missing"):
        parse_callback({"message": {"contact_message": {}}})


def test_flow_completion_records() -> None:
    parsed = parse_callback(
        {
            "message": {
                "id": "M1",
                "contact_message": {
                    "channel_specific_message": {
                        "message_type": "nfm_reply",
                        "message": {"nfm_reply": {"name": "flow", "response_json": "{}"}},
                    }
                },
            }
        }
    )
    inbound, flow = parsed.records
    assert isinstance(inbound, InboundMessageRecord) and inbound.kind == "flow_response"
    assert isinstance(flow, FlowResponseRecord) and flow.parse_error == (
        "response_json has no flow_token"
    )


def test_fallback_message_with_raw_flow_reply() -> None:
    raw = (
        '{"context":{"id":"wamid.MT"},"interactive":{"type":"nfm_reply",'
        '"nfm_reply":{"name":"flow","response_json":"{\\"flow_token\\":\\"t9\\"}"}}}'
    )
    parsed = parse_callback(
        {"message": {"id": "M2", "contact_message": {"fallback_message": {"raw_message": raw}}}}
    )
    kinds = [type(r).__name__ for r in parsed.records]
    assert kinds == ["InboundMessageRecord", "FlowResponseRecord"]
    flow = parsed.records[1]
    assert isinstance(flow, FlowResponseRecord)
    assert (flow.flow_token, flow.reply_to_message_id) == ("t9", "wamid.MT")


@pytest.mark.parametrize("body", [b"", b"nul", b"[]", b"1", b'{"a":1', b'{"a":NaN}'])
def test_load_body_rejects(body: bytes) -> None:
    with pytest.raises(InvalidBody):
        load_body(body)
