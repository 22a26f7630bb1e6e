"""Callback envelope, trigger detection and per-trigger parsers (pure).

Bytes or dicts in, frozen records out: no Flask, no database. A parser that meets a
shape it cannot read raises ParseError naming the field; ingest stores the event as
``failed`` with that message so a later fix can reprocess it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from webhook.core.timeparse import lenient_time, parse_time
from webhook.ingest.body import JSONError, loads_json
from webhook.ingest.fields import identity_of, normalize_identity, obj_field, str_field
from webhook.ingest.flow_reply import parse_flow_reply
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


def _nfm_reply(csm: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """The nfm_reply object of a channel_specific_message, or None if it is another type."""
    if str_field(csm, "message_type", path) != "nfm_reply":
        return None
    inner = obj_field(csm, "message", path)
    return obj_field(inner, "nfm_reply", f"{path}.message") or None


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


def parse_message_inbound(payload: Mapping[str, Any], env: Envelope) -> tuple[Record, ...]:  # noqa: C901 (one branch per message type)
    """Parse one inbound (MO) message: its kind, content and flow completions.

    Long: one branch per contact message type, read in the order of Sinch's schema."""
    msg = obj_field(payload, "message", "$", required=True)
    path = "message"
    message_id = str_field(msg, "id", path, required=True)
    assert message_id is not None
    cm = obj_field(msg, "contact_message", path)
    channel, identity = identity_of(msg, path)
    contact_id = str_field(msg, "contact_id", path)
    conversation_id = str_field(msg, "conversation_id", path)
    reply_to = str_field(
        obj_field(cm, "reply_to", f"{path}.contact_message"), "message_id", "reply_to"
    )
    accept_time = parse_time(msg.get("accept_time"), f"{path}.accept_time")

    kind, text, postback, media_url = "other", None, None, None
    flow: FlowResponseRecord | None = None
    cpath = f"{path}.contact_message"
    for key, simple in _SIMPLE_KINDS.items():
        if key in cm:
            kind = simple
            body = obj_field(cm, key, cpath)
            if key == "text_message":
                text = str_field(body, "text", f"{cpath}.{key}")
            elif key in {"media_message", "media_card_message"}:
                media_url = str_field(body, "url", f"{cpath}.{key}")
                text = str_field(body, "caption", f"{cpath}.{key}")
            elif key == "choice_response_message":
                postback = str_field(body, "postback_data", f"{cpath}.{key}")
                reply_to = reply_to or str_field(body, "message_id", f"{cpath}.{key}")
            elif key == "location_message":
                text = str_field(body, "title", f"{cpath}.{key}") or str_field(body, "label", cpath)
            elif key == "product_response_message":
                text = str_field(body, "text", f"{cpath}.{key}")
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
            csm = obj_field(cm, "channel_specific_message", cpath)
            reply = _nfm_reply(csm, f"{cpath}.channel_specific_message")
            if reply is None:
                kind = "channel_specific"
            elif str_field(reply, "name", "nfm_reply") == "flow":
                kind = "flow_response"
                text = str_field(reply, "body", "nfm_reply")
                token, response, broken, err = parse_flow_reply(reply.get("response_json"))
                flow = FlowResponseRecord(
                    message_id, token, reply_to, contact_id, conversation_id, channel,
                    identity, response, broken, err, accept_time or env.event_time,
                )  # fmt: skip
            else:
                kind = "nfm_reply_other"
                text = str_field(reply, "body", "nfm_reply")

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
        metadata_text=str_field(msg, "metadata", path),
        sender_id=str_field(msg, "sender_id", path),
        processing_mode=str_field(msg, "processing_mode", path),
        accept_time=accept_time,
    )
    return (inbound, flow) if flow is not None else (inbound,)


# ---------------------------------------------------------------- deliveries


def _delivery(kind: str, key: str, id_field: str) -> Callable[..., tuple[Record, ...]]:
    def parse(payload: Mapping[str, Any], env: Envelope) -> tuple[Record, ...]:
        report = obj_field(payload, key, "$", required=True)
        rid = str_field(report, id_field, key, required=True)
        status = str_field(report, "status", key, required=True)
        assert rid is not None and status is not None
        channel, identity = identity_of(report, key)
        if kind == "event" and channel is None:
            channel = str_field(report, "channel", key)
        reason = obj_field(report, "reason", key)
        return (
            DeliveryReportRecord(
                kind=kind,
                message_id=rid,
                status=status.upper(),
                channel=channel or "",
                identity=identity,
                contact_id=str_field(report, "contact_id", key),
                conversation_id=str_field(report, "conversation_id", key),
                reason_code=str_field(reason, "code", f"{key}.reason"),
                reason_description=str_field(reason, "description", f"{key}.reason"),
                reason_sub_code=str_field(reason, "sub_code", f"{key}.reason"),
                channel_code=str_field(reason, "channel_code", f"{key}.reason"),
                metadata_text=str_field(report, "metadata", key),
                processing_mode=str_field(report, "processing_mode", key),
                event_time=env.event_time or env.accepted_time,
            ),
        )

    return parse


# ---------------------------------------------------------------- MESSAGE_SUBMIT


def parse_message_submit(payload: Mapping[str, Any], env: Envelope) -> tuple[Record, ...]:
    key = "message_submit_notification"
    note = obj_field(payload, key, "$", required=True)
    message_id = str_field(note, "message_id", key, required=True)
    assert message_id is not None
    submitted = obj_field(note, "submitted_message", key)
    csm = obj_field(submitted, "channel_specific_message", f"{key}.submitted_message")
    wa = obj_field(csm, "WHATSAPP", "submitted_message.channel_specific_message")
    if str_field(wa, "message_type", "WHATSAPP") != "FLOWS":
        return ()
    path = "submitted_message.channel_specific_message.WHATSAPP.message"
    flow = obj_field(wa, "message", "WHATSAPP")
    action_payload = obj_field(flow, "flow_action_payload", path)
    channel, identity = identity_of(note, key)
    return (
        FlowSendRecord(
            message_id=message_id,
            flow_id=str_field(flow, "flow_id", path),
            flow_token=str_field(flow, "flow_token", path),
            flow_mode=str_field(flow, "flow_mode", path),
            flow_cta=str_field(flow, "flow_cta", path),
            flow_action=str_field(flow, "flow_action", path),
            screen=str_field(action_payload, "screen", f"{path}.flow_action_payload"),
            channel=channel,
            identity=identity,
            contact_id=str_field(note, "contact_id", key),
            conversation_id=str_field(note, "conversation_id", key),
            correlation_id=env.correlation_id,
            submitted_at=env.event_time or env.accepted_time,
        ),
    )


# ---------------------------------------------------------------- UNSUPPORTED


def parse_unsupported(payload: Mapping[str, Any], env: Envelope) -> tuple[Record, ...]:
    """Recover flow completions that arrive as raw WhatsApp JSON (spec §3, defensive)."""
    key = "unsupported_callback"
    note = obj_field(payload, key, "$", required=True)
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
                contact_id=str_field(note, "contact_id", key),
                conversation_id=str_field(note, "conversation_id", key),
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
