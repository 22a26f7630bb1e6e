"""What parsing a callback gives: frozen records, one per row of a projection table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Envelope:
    app_id: str | None
    project_id: str | None
    event_time: datetime | None
    accepted_time: datetime | None
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class InboundMessageRecord:
    message_id: str
    kind: str
    channel: str | None
    identity: str | None
    contact_id: str | None
    conversation_id: str | None
    reply_to_message_id: str | None
    text: str | None
    postback_data: str | None
    media_url: str | None
    metadata_text: str | None
    sender_id: str | None
    processing_mode: str | None
    accept_time: datetime | None


@dataclass(frozen=True, slots=True)
class FlowResponseRecord:
    message_id: str
    flow_token: str | None
    reply_to_message_id: str | None
    contact_id: str | None
    conversation_id: str | None
    channel: str | None
    identity: str | None
    response: Any
    response_raw: str | None
    parse_error: str | None
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryReportRecord:
    kind: str  # "message" or "event"
    message_id: str
    status: str
    channel: str
    identity: str | None
    contact_id: str | None
    conversation_id: str | None
    reason_code: str | None
    reason_description: str | None
    reason_sub_code: str | None
    channel_code: str | None
    metadata_text: str | None
    processing_mode: str | None
    event_time: datetime | None


@dataclass(frozen=True, slots=True)
class FlowSendRecord:
    message_id: str
    flow_id: str | None
    flow_token: str | None
    flow_mode: str | None
    flow_cta: str | None
    flow_action: str | None
    screen: str | None
    channel: str | None
    identity: str | None
    contact_id: str | None
    conversation_id: str | None
    correlation_id: str | None
    submitted_at: datetime | None


Record = InboundMessageRecord | FlowResponseRecord | DeliveryReportRecord | FlowSendRecord


@dataclass(frozen=True, slots=True)
class ParsedCallback:
    trigger: str
    envelope: Envelope
    records: tuple[Record, ...]
