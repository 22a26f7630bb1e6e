"""Callback envelope, trigger detection and per-trigger parsers (pure).

Bytes or dicts in, frozen records out: no Flask, no database. A parser that meets a
shape it cannot read raises ParseError naming the field; ingest stores the event as
``failed`` with that message so a later fix can reprocess it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from webhook.core.timeparse import ParseError, lenient_time, parse_time
from webhook.core.values import json_kind
from webhook.ingest.body import JSONError, loads_json
from webhook.ingest.records import (
    DeliveryReportRecord,
    Envelope,
    FlowResponseRecord,
    FlowSendRecord,
    InboundMessageRecord,
    ParsedCallback,
    Record,
)

UNKNOWN = "UNKNOWN"

# Top-level payload key -> trigger name (Sinch's webhook subscription value), spec §1.3.
TRIGGER_KEYS: dict[str, str] = {
    "message": "MESSAGE_INBOUND",
    "message_redaction": "MESSAGE_INBOUND_SMART_CONVERSATION_REDACTION",
    "message_submit_notification": "MESSAGE_SUBMIT",
    "message_delivery_report": "MESSAGE_DELIVERY",
    "event": "EVENT_INBOUND",
    "event_delivery_report": "EVENT_DELIVERY",
    "conversation_start_notification": "CONVERSATION_START",
    "conversation_stop_notification": "CONVERSATION_STOP",
    "conversation_delete_notification": "CONVERSATION_DELETE",
    "contact_create_notification": "CONTACT_CREATE",
    "contact_delete_notification": "CONTACT_DELETE",
    "contact_update_notification": "CONTACT_UPDATE",
    "contact_merge_notification": "CONTACT_MERGE",
    "duplicated_contact_identities_notification": "CONTACT_IDENTITIES_DUPLICATION",
    # The Node SDK expects this key for the same trigger; accept both (spec §1.3).
    "duplicated_identities": "CONTACT_IDENTITIES_DUPLICATION",
    "capability_notification": "CAPABILITY",
    "opt_in_notification": "OPT_IN",
    "opt_out_notification": "OPT_OUT",
    "channel_event_notification": "CHANNEL_EVENT",
    "unsupported_callback": "UNSUPPORTED",
    "smart_conversation_notification": "SMART_CONVERSATIONS",
    "record_notification": "RECORD_NOTIFICATION",
}
TRIGGERS: frozenset[str] = frozenset(TRIGGER_KEYS.values())

# Channels whose identity is a phone number (MSISDN): normalised to digits, no "+".
MSISDN_CHANNELS = frozenset({"WHATSAPP", "SMS", "MMS", "VIBERBM", "RCS"})


def _obj(parent: Mapping[str, Any], key: str, path: str, required: bool = False) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        if required:
            raise ParseError(f"{path}.{key}: required object is missing")
        return {}
    if not isinstance(value, dict):
        raise ParseError(f"{path}.{key}: expected an object, got {json_kind(value)}")
    return value


def _str(parent: Mapping[str, Any], key: str, path: str, required: bool = False) -> str | None:
    value = parent.get(key)
    if value is None or (value == "" and not required):
        if required:
            raise ParseError(f"{path}.{key}: required string is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ParseError(f"{path}.{key}: expected a string, got {json_kind(value)}")
    text = str(value)
    if required and not text:
        raise ParseError(f"{path}.{key}: required string is empty")
    return text


def normalize_identity(channel: str | None, identity: str | None) -> str | None:
    """Phone-number identities as digits without '+', spaces or dashes."""
    if identity is None:
        return None
    if channel in MSISDN_CHANNELS:
        stripped = re.sub(r"[\s\-().]", "", identity)
        if stripped.startswith("+"):
            stripped = stripped[1:]
        if stripped.startswith("00") and stripped[2:].isdigit():
            stripped = stripped[2:]
        return stripped or None
    return identity


def _identity(parent: Mapping[str, Any], path: str) -> tuple[str | None, str | None]:
    ci = _obj(parent, "channel_identity", path)
    channel = _str(ci, "channel", f"{path}.channel_identity")
    return channel, normalize_identity(channel, _str(ci, "identity", f"{path}.channel_identity"))


# ---------------------------------------------------------------- envelope


def detect_trigger(payload: Mapping[str, Any]) -> str:
    """Name the trigger from the one payload key present (spec §1.3)."""
    for key in payload:
        trigger = TRIGGER_KEYS.get(key)
        if trigger is not None:
            return trigger
    return UNKNOWN


def parse_envelope(payload: Mapping[str, Any]) -> Envelope:
    """Read the common fields; never fails (bad values become None)."""

    def text(key: str, limit: int) -> str | None:
        value = payload.get(key)
        return value[:limit] if isinstance(value, str) and value else None

    return Envelope(
        app_id=text("app_id", 64),
        project_id=text("project_id", 64),
        event_time=lenient_time(payload.get("event_time")),
        accepted_time=lenient_time(payload.get("accepted_time")),
        correlation_id=text("correlation_id", 128),
    )


# ---------------------------------------------------------------- MESSAGE_INBOUND

_SIMPLE_KINDS = {
    "text_message": "text",
    "media_message": "media",
    "location_message": "location",
    "choice_response_message": "choice_response",
    "media_card_message": "media_card",
    "fallback_message": "fallback",
    "product_response_message": "product_response",
}


def parse_flow_reply(response_json: object) -> tuple[str | None, Any, str | None, str | None]:
    """Read ``nfm_reply.response_json``: (flow_token, response, raw_if_broken, error)."""
    value: Any = response_json
    if isinstance(response_json, str):
        try:
            value = loads_json(response_json)
        except JSONError as exc:
            return None, None, response_json, f"response_json is not valid JSON: {exc}"
    elif response_json is None:
        return None, None, None, "response_json is missing"
    if not isinstance(value, dict):
        return None, value, None, f"response_json is a JSON {json_kind(value)}, not an object"
    token = value.get("flow_token")
    if token is None or token == "":
        return None, value, None, "response_json has no flow_token"
    if not isinstance(token, str):
        return str(token), value, None, f"flow_token is a {json_kind(token)}, not a string"
    return token, value, None, None


def _nfm_reply(csm: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """The nfm_reply object of a channel_specific_message, or None if it is another type."""
    if _str(csm, "message_type", path) != "nfm_reply":
        return None
    inner = _obj(csm, "message", path)
    return _obj(inner, "nfm_reply", f"{path}.message") or None


def _whatsapp_flow_replies(raw: object) -> list[dict[str, Any]]:
    """WhatsApp messages carrying a flow nfm_reply inside a raw channel payload."""
    if not isinstance(raw, str):
        return []
    try:
        doc = loads_json(raw)
    except JSONError:
        return []
    found: list[dict[str, Any]] = []

    def visit(msg: object) -> None:
        if not isinstance(msg, dict):
            return
        interactive = msg.get("interactive")
        if isinstance(interactive, dict) and interactive.get("type") == "nfm_reply":
            reply = interactive.get("nfm_reply")
            if isinstance(reply, dict) and reply.get("name") == "flow":
                found.append(msg)

    if isinstance(doc, dict):
        visit(doc)
        # Meta's webhook shape: entry[].changes[].value.messages[]; anything else is skipped.
        for entry in _items(doc.get("entry")):
            for change in _items(entry.get("changes")):
                value = change.get("value")
                for msg in _items(value.get("messages") if isinstance(value, dict) else None):
                    visit(msg)
    return found


def _items(value: object) -> list[dict[str, Any]]:
    """The objects in a JSON array (anything else in it, or a non-array, is skipped)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _context(wa_message: dict[str, Any]) -> dict[str, Any]:
    ctx = wa_message.get("context")
    return ctx if isinstance(ctx, dict) else {}


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_message_inbound(payload: Mapping[str, Any], env: Envelope) -> tuple[Record, ...]:
    msg = _obj(payload, "message", "$", required=True)
    path = "message"
    message_id = _str(msg, "id", path, required=True)
    assert message_id is not None
    cm = _obj(msg, "contact_message", path)
    channel, identity = _identity(msg, path)
    contact_id = _str(msg, "contact_id", path)
    conversation_id = _str(msg, "conversation_id", path)
    reply_to = _str(_obj(cm, "reply_to", f"{path}.contact_message"), "message_id", "reply_to")
    accept_time = parse_time(msg.get("accept_time"), f"{path}.accept_time")

    kind, text, postback, media_url = "other", None, None, None
    flow: FlowResponseRecord | None = None
    cpath = f"{path}.contact_message"
    for key, simple in _SIMPLE_KINDS.items():
        if key in cm:
            kind = simple
            body = _obj(cm, key, cpath)
            if key == "text_message":
                text = _str(body, "text", f"{cpath}.{key}")
            elif key in {"media_message", "media_card_message"}:
                media_url = _str(body, "url", f"{cpath}.{key}")
                text = _str(body, "caption", f"{cpath}.{key}")
            elif key == "choice_response_message":
                postback = _str(body, "postback_data", f"{cpath}.{key}")
                reply_to = reply_to or _str(body, "message_id", f"{cpath}.{key}")
            elif key == "location_message":
                text = _str(body, "title", f"{cpath}.{key}") or _str(body, "label", cpath)
            elif key == "product_response_message":
                text = _str(body, "text", f"{cpath}.{key}")
            elif key == "fallback_message":
                raw = body.get("raw_message")
                text = raw if isinstance(raw, str) else None
                for wa in _whatsapp_flow_replies(raw):
                    reply = wa["interactive"]["nfm_reply"]
                    ctx_id = _context(wa).get("id")
                    token, response, broken, err = parse_flow_reply(reply.get("response_json"))
                    flow = FlowResponseRecord(
                        message_id, token, reply_to or _text_or_none(ctx_id), contact_id,
                        conversation_id, channel, identity, response, broken, err,
                        accept_time or env.event_time,
                    )  # fmt: skip
                    break
            break
    else:
        if "channel_specific_message" in cm:
            csm = _obj(cm, "channel_specific_message", cpath)
            reply = _nfm_reply(csm, f"{cpath}.channel_specific_message")
            if reply is None:
                kind = "channel_specific"
            elif _str(reply, "name", "nfm_reply") == "flow":
                kind = "flow_response"
                text = _str(reply, "body", "nfm_reply")
                token, response, broken, err = parse_flow_reply(reply.get("response_json"))
                flow = FlowResponseRecord(
                    message_id, token, reply_to, contact_id, conversation_id, channel,
                    identity, response, broken, err, accept_time or env.event_time,
                )  # fmt: skip
            else:
                kind = "nfm_reply_other"
                text = _str(reply, "body", "nfm_reply")

    inbound = InboundMessageRecord(
        message_id=message_id,
        kind=kind,
        channel=channel,
        identity=identity,
        contact_id=contact_id,
        conversation_id=conversation_id,
        reply_to_message_id=reply_to,
        text=text,
        postback_data=postback,
        media_url=media_url,
        metadata_text=_str(msg, "metadata", path),
        sender_id=_str(msg, "sender_id", path),
        processing_mode=_str(msg, "processing_mode", path),
        accept_time=accept_time,
    )
    return (inbound, flow) if flow is not None else (inbound,)


# ---------------------------------------------------------------- deliveries


def _delivery(kind: str, key: str, id_field: str) -> Callable[..., tuple[Record, ...]]:
    def parse(payload: Mapping[str, Any], env: Envelope) -> tuple[Record, ...]:
        report = _obj(payload, key, "$", required=True)
        rid = _str(report, id_field, key, required=True)
        status = _str(report, "status", key, required=True)
        assert rid is not None and status is not None
        channel, identity = _identity(report, key)
        if kind == "event" and channel is None:
            channel = _str(report, "channel", key)
        reason = _obj(report, "reason", key)
        return (
            DeliveryReportRecord(
                kind=kind,
                message_id=rid,
                status=status.upper(),
                channel=channel or "",
                identity=identity,
                contact_id=_str(report, "contact_id", key),
                conversation_id=_str(report, "conversation_id", key),
                reason_code=_str(reason, "code", f"{key}.reason"),
                reason_description=_str(reason, "description", f"{key}.reason"),
                reason_sub_code=_str(reason, "sub_code", f"{key}.reason"),
                channel_code=_str(reason, "channel_code", f"{key}.reason"),
                metadata_text=_str(report, "metadata", key),
                processing_mode=_str(report, "processing_mode", key),
                event_time=env.event_time or env.accepted_time,
            ),
        )

    return parse


# ---------------------------------------------------------------- MESSAGE_SUBMIT


def parse_message_submit(payload: Mapping[str, Any], env: Envelope) -> tuple[Record, ...]:
    key = "message_submit_notification"
    note = _obj(payload, key, "$", required=True)
    message_id = _str(note, "message_id", key, required=True)
    assert message_id is not None
    submitted = _obj(note, "submitted_message", key)
    csm = _obj(submitted, "channel_specific_message", f"{key}.submitted_message")
    wa = _obj(csm, "WHATSAPP", "submitted_message.channel_specific_message")
    if _str(wa, "message_type", "WHATSAPP") != "FLOWS":
        return ()
    path = "submitted_message.channel_specific_message.WHATSAPP.message"
    flow = _obj(wa, "message", "WHATSAPP")
    action_payload = _obj(flow, "flow_action_payload", path)
    channel, identity = _identity(note, key)
    return (
        FlowSendRecord(
            message_id=message_id,
            flow_id=_str(flow, "flow_id", path),
            flow_token=_str(flow, "flow_token", path),
            flow_mode=_str(flow, "flow_mode", path),
            flow_cta=_str(flow, "flow_cta", path),
            flow_action=_str(flow, "flow_action", path),
            screen=_str(action_payload, "screen", f"{path}.flow_action_payload"),
            channel=channel,
            identity=identity,
            contact_id=_str(note, "contact_id", key),
            conversation_id=_str(note, "conversation_id", key),
            correlation_id=env.correlation_id,
            submitted_at=env.event_time or env.accepted_time,
        ),
    )


# ---------------------------------------------------------------- UNSUPPORTED


def parse_unsupported(payload: Mapping[str, Any], env: Envelope) -> tuple[Record, ...]:
    """Recover flow completions that arrive as raw WhatsApp JSON (spec §3, defensive)."""
    key = "unsupported_callback"
    note = _obj(payload, key, "$", required=True)
    records: list[Record] = []
    for wa in _whatsapp_flow_replies(note.get("payload")):
        wamid = wa.get("id")
        if not isinstance(wamid, str) or not wamid:
            continue
        reply = wa["interactive"]["nfm_reply"]
        ctx = _context(wa)
        token, response, broken, err = parse_flow_reply(reply.get("response_json"))
        sender = wa.get("from")
        records.append(
            FlowResponseRecord(
                message_id=wamid,
                flow_token=token,
                reply_to_message_id=_text_or_none(ctx.get("id")),
                contact_id=_str(note, "contact_id", key),
                conversation_id=_str(note, "conversation_id", key),
                channel="WHATSAPP",
                identity=normalize_identity(
                    "WHATSAPP", sender if isinstance(sender, str) else None
                ),
                response=response,
                response_raw=broken,
                parse_error=err,
                completed_at=env.event_time or env.accepted_time,
            )
        )
    return tuple(records)


# ---------------------------------------------------------------- dispatch

Parser = Callable[[Mapping[str, Any], Envelope], tuple[Record, ...]]

# Triggers with a projection. Every other known trigger is stored raw and marked processed.
PARSERS: dict[str, Parser] = {
    "MESSAGE_INBOUND": parse_message_inbound,
    "MESSAGE_DELIVERY": _delivery("message", "message_delivery_report", "message_id"),
    "EVENT_DELIVERY": _delivery("event", "event_delivery_report", "event_id"),
    "MESSAGE_SUBMIT": parse_message_submit,
    "UNSUPPORTED": parse_unsupported,
}


def parse_callback(payload: Mapping[str, Any]) -> ParsedCallback:
    """Detect the trigger and parse the payload; raise ParseError on a bad shape."""
    trigger = detect_trigger(payload)
    envelope = parse_envelope(payload)
    parser = PARSERS.get(trigger)
    records = parser(payload, envelope) if parser is not None else ()
    return ParsedCallback(trigger, envelope, records)
