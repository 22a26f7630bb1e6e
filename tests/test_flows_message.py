"""The Flows payload builder: the seed's exact shape, and one test per validation rule."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from tests.helpers import fixture_json
from webhook.flows.emoji import _FIRST, _LAST, find_emoji
from webhook.flows.message import (
    FlowMessage,
    InvalidFlowMessage,
    build_request,
    new_flow_token,
    normalize_number,
    validate,
)

APP_ID = "01K94JHH80F86PQMSGMGZ6MS3E"

# The message the seed's MESSAGE_SUBMIT says was sent (tests/fixtures/message_submit__flows.json).
SEED = FlowMessage(
    contact_id="01KHXP7M58J3HH8VCFWTFRQFVX",
    flow_id="1187345529063321",
    cta="Open form",
    body="Please fill in a few details before your appointment.",
    header="Pre-visit form",
    footer="Takes about 2 minutes",
    screen="WELCOME",
    data={"clinic_name": "Clinica Exemplo"},
    mode="published",
    action="navigate",
    token="ftk_7QmZ3xRk2vN8pL4sW9aB",
    fallback_text="Please update WhatsApp to open the pre-visit form.",
    metadata="flow=intake_v3;session=ftk_7QmZ3xRk2vN8pL4sW9aB",
    correlation_id="intake-session-8841",
)
MINIMAL = FlowMessage(to="5511987654321", flow_id="1187", cta="Open", body="Hi", screen="WELCOME")


def seed_submitted_message() -> dict[str, Any]:
    submitted = fixture_json("message_submit__flows")["message_submit_notification"]
    value = submitted["submitted_message"]
    assert isinstance(value, dict)
    return value


def problems(message: FlowMessage) -> list[str]:
    return [p.message for p in validate(message)]


def fields(message: FlowMessage) -> list[str]:
    return [p.field for p in validate(message)]


def test_seed_message_is_reproduced_exactly() -> None:
    req = build_request(SEED, APP_ID)
    seed = seed_submitted_message()
    assert req.body["message"] == seed
    # Same keys in the same order, byte for byte once serialised the same way.
    assert json.dumps(req.body["message"]) == json.dumps(seed)
    assert req.body["recipient"] == {"contact_id": "01KHXP7M58J3HH8VCFWTFRQFVX"}
    assert req.body["app_id"] == APP_ID
    assert req.body["message_metadata"] == "flow=intake_v3;session=ftk_7QmZ3xRk2vN8pL4sW9aB"
    assert req.body["correlation_id"] == "intake-session-8841"
    assert req.body["channel_priority_order"] == ["WHATSAPP"]
    assert list(req.body) == [
        "app_id", "recipient", "message", "message_metadata", "correlation_id",
        "channel_priority_order",
    ]  # fmt: skip
    assert json.loads(req.json_bytes()) == req.body


def test_recipient_by_number_is_normalised() -> None:
    req = build_request(replace(MINIMAL, to="+55 (11) 98765-4321"), APP_ID)
    assert req.body["recipient"] == {
        "identified_by": {
            "channel_identities": [{"channel": "WHATSAPP", "identity": "5511987654321"}]
        }
    }
    assert (req.identity, req.contact_id, req.channel) == ("5511987654321", None, "WHATSAPP")


def test_minimal_message_defaults() -> None:
    req = build_request(MINIMAL, APP_ID, token_factory=lambda: "ftk_fixed")
    assert req.body["message"] == {
        "text_message": {"text": "Hi"},
        "channel_specific_message": {
            "WHATSAPP": {
                "message_type": "FLOWS",
                "message": {
                    "body": {"text": "Hi"},
                    "flow_id": "1187",
                    "flow_token": "ftk_fixed",
                    "flow_mode": "published",
                    "flow_cta": "Open",
                    "flow_action": "navigate",
                    "flow_action_payload": {"screen": "WELCOME"},
                },
            }
        },
    }
    assert req.token_generated and req.flow_token == "ftk_fixed"
    assert "ttl" not in req.body and "message_metadata" not in req.body


def test_empty_fallback_text_leaves_out_the_text_message() -> None:
    req = build_request(replace(MINIMAL, fallback_text=""), APP_ID)
    assert list(req.body["message"]) == ["channel_specific_message"]


@pytest.mark.parametrize(
    ("kind", "url"),
    [("image", "https://cdn.example.com/a.jpg"), ("video", "https://cdn.example.com/v.mp4"),
     ("document", "http://cdn.example.com/d.pdf")],
)  # fmt: skip
def test_media_headers(kind: str, url: str) -> None:
    req = build_request(replace(MINIMAL, header_type=kind, header_url=url), APP_ID)
    flow = req.body["message"]["channel_specific_message"]["WHATSAPP"]["message"]
    assert flow["header"] == {"type": kind, kind: {"link": url}}
    assert next(iter(flow)) == "header"


def test_draft_data_exchange_has_no_action_payload() -> None:
    req = build_request(
        replace(MINIMAL, screen=None, mode="DRAFT", action="data_exchange", ttl="3600s"), APP_ID
    )
    flow = req.body["message"]["channel_specific_message"]["WHATSAPP"]["message"]
    assert (flow["flow_mode"], flow["flow_action"]) == ("draft", "data_exchange")
    assert "flow_action_payload" not in flow
    assert req.screen is None
    assert req.body["ttl"] == "3600s"


@pytest.mark.parametrize(
    ("ttl", "wire"), [(86400, "86400s"), ("86400", "86400s"), (" 60s ", "60s")]
)
def test_ttl_forms(ttl: int | str, wire: str) -> None:
    assert build_request(replace(MINIMAL, ttl=ttl), APP_ID).body["ttl"] == wire


def test_generated_tokens_are_unguessable_and_distinct() -> None:
    tokens = {new_flow_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(t.startswith("ftk_") and len(t) == 36 for t in tokens)
    req1, req2 = build_request(MINIMAL, APP_ID), build_request(MINIMAL, APP_ID)
    assert req1.flow_token != req2.flow_token


def test_chosen_token_is_kept() -> None:
    req = build_request(replace(MINIMAL, token="my-token-1"), APP_ID)
    assert req.flow_token == "my-token-1" and not req.token_generated


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        # recipient
        ({"to": None}, "recipient", "neither given"),
        ({"contact_id": "01KHX"}, "recipient", "both given"),
        ({"to": "12345"}, "recipient.identity", "not an international phone number"),
        ({"to": "+55 11 9876543210123"}, "recipient.identity", "7 to 15 digits"),
        ({"to": "55119876abc"}, "recipient.identity", "not an international phone number"),
        ({"to": "٥٥١١٩٨٧٦٥٤٣٢١"}, "recipient.identity", "not an international phone number"),
        ({"to": None, "contact_id": " "}, "recipient.contact_id", "contact id is empty"),
        ({"to": None, "contact_id": "C" * 65}, "recipient.contact_id", "65 characters"),
        # flow_id
        ({"flow_id": None}, "flow_id", "flow_id is required"),
        ({"flow_id": ""}, "flow_id", "flow_id is empty"),
        ({"flow_id": "9" * 65}, "flow_id", "at most 64"),
        # flow_cta
        ({"cta": None}, "flow_cta", "flow_cta (the button text) is required"),
        ({"cta": "  "}, "flow_cta", "flow_cta is empty"),
        ({"cta": "A" * 21}, "flow_cta", "flow_cta is 21 characters; at most 20 allowed"),
        ({"cta": "Book now 📅"}, "flow_cta", "must not contain emoji"),
        ({"cta": "Go 👍🏽"}, "flow_cta", "U+1F44D"),
        ({"cta": "Done ✔"}, "flow_cta", "must not contain emoji"),
        # body, header, footer
        ({"body": None}, "body.text", "body text is required"),
        ({"body": ""}, "body.text", "body text is empty"),
        ({"body": "b" * 1025}, "body.text", "1025 characters; at most 1024"),
        ({"header": "h" * 61}, "header.text", "header text is 61 characters; at most 60"),
        ({"header": ""}, "header.text", "header text is empty"),
        ({"header_type": "text"}, "header.text", "header type text needs the header text"),
        ({"header_type": "audio"}, "header.type", "header type must be one of text, image"),
        ({"header_type": "image"}, "header.image.link", "header type image needs a link"),
        ({"header_type": "video", "header_url": "ftp://x/v.mp4"}, "header.video.link",
         "http(s) URL"),
        ({"header_type": "document", "header_url": "/local/file.pdf"}, "header.document.link",
         "http(s) URL"),
        ({"header_type": "image", "header_url": "https://x/a.png", "header": "Hi"},
         "header.text", "takes a link, not text"),
        ({"header": "Hi", "header_url": "https://x/a.png"}, "header.link",
         "a text header takes no link"),
        ({"header_url": "https://x/a.png"}, "header.type", "without a media header type"),
        ({"footer": "f" * 61}, "footer.text", "footer is 61 characters; at most 60"),
        ({"footer": ""}, "footer.text", "footer is empty"),
        # mode and action
        ({"mode": "live"}, "flow_mode", "flow_mode must be draft or published; got 'live'"),
        ({"action": "open"}, "flow_action", "flow_action must be navigate or data_exchange"),
        ({"screen": None}, "flow_action_payload.screen", "navigate needs the first screen"),
        ({"screen": ""}, "flow_action_payload.screen", "screen is empty"),
        ({"screen": "S" * 129}, "flow_action_payload.screen", "at most 128"),
        ({"action": "data_exchange"}, "flow_action_payload", "data_exchange takes no screen"),
        ({"action": "data_exchange", "screen": None, "data": {"a": 1}}, "flow_action_payload",
         "data_exchange takes no screen or data"),
        # data
        ({"data": {}}, "flow_action_payload.data", "data must be a non-empty object"),
        ({"data": ["a"]}, "flow_action_payload.data", "data must be a JSON object; got list"),
        ({"data": "x=1"}, "flow_action_payload.data", "data must be a JSON object; got str"),
        # token, metadata, correlation id, ttl
        ({"token": ""}, "flow_token", "flow_token is empty"),
        ({"token": "t" * 256}, "flow_token", "at most 255"),
        ({"metadata": "m" * 1025}, "message_metadata", "at most 1024"),
        ({"correlation_id": "c" * 129}, "correlation_id", "at most 128"),
        ({"ttl": 0}, "ttl", "positive number of seconds"),
        ({"ttl": "1 day"}, "ttl", "positive number of seconds"),
        ({"ttl": "-5s"}, "ttl", "positive number of seconds"),
    ],
)  # fmt: skip
def test_each_rule(change: dict[str, Any], field: str, text: str) -> None:
    message = replace(MINIMAL, **change)
    found = validate(message)
    assert [p.field for p in found] == [field], found
    assert text in found[0].message
    with pytest.raises(InvalidFlowMessage) as info:
        build_request(message, APP_ID)
    assert info.value.problems == found


def test_limits_are_inclusive() -> None:
    ok = replace(
        MINIMAL,
        cta="A" * 20,
        body="b" * 1024,
        header="h" * 60,
        footer="f" * 60,
        metadata="m" * 1024,
        correlation_id="c" * 128,
        to="+1 234 567 8901 234",
    )
    assert problems(ok) == []


def test_non_ascii_cta_without_emoji_is_fine() -> None:
    assert problems(replace(MINIMAL, cta="Agendar consulta →")) == []
    assert problems(replace(MINIMAL, cta="予約する ✓")) == []


def test_all_problems_are_reported_together() -> None:
    bad = FlowMessage(cta="Tap here to start now 👉", body="", mode="x", action="navigate")
    found = validate(bad)
    assert fields(bad) == [
        "recipient", "body.text", "flow_id", "flow_mode", "flow_cta", "flow_cta",
        "flow_action_payload.screen",
    ]  # fmt: skip
    with pytest.raises(InvalidFlowMessage) as info:
        build_request(bad, APP_ID)
    assert str(info.value) == "; ".join(p.message for p in found)


@pytest.mark.parametrize(
    ("raw", "digits"),
    [("+55 11 98765-4321", "5511987654321"), ("0044 20 7946 0958", "442079460958"),
     ("(11) 9.8765", "1198765")],
)  # fmt: skip
def test_normalize_number(raw: str, digits: str) -> None:
    assert normalize_number(raw) == digits


@pytest.mark.parametrize(
    ("text", "found"),
    [("Open form", None), ("Start →", None), ("★ Rate", None), ("😀", "😀"), ("🇧🇷 Brasil", "🇧"),
     ("#️⃣ one", "\ufe0f"), ("Acme®", "®"), ("🫨 new", "🫨"), ("\U0001faf8 future", "\U0001faf8")],
)  # fmt: skip
def test_find_emoji(text: str, found: str | None) -> None:
    assert find_emoji(text) == found


def test_emoji_table_is_sorted_and_disjoint() -> None:
    assert all(first <= last for first, last in zip(_FIRST, _LAST, strict=True))
    assert all(last < following for last, following in zip(_LAST, _FIRST[1:], strict=False))
