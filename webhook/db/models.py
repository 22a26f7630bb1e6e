"""Tables. The schema is created by Alembic migrations only (see migrations/)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; store timezone-aware UTC values")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# 64-bit ids on PostgreSQL; SQLite needs plain INTEGER for its rowid alias.
BigId = BigInteger().with_variant(Integer(), "sqlite")

id_pk = Annotated[int, mapped_column(BigId, primary_key=True, autoincrement=True)]
str64 = Annotated[str, mapped_column(String(64))]
str64_opt = Annotated[str | None, mapped_column(String(64))]
str128_opt = Annotated[str | None, mapped_column(String(128))]
text_opt = Annotated[str | None, mapped_column(Text)]
ts = Annotated[datetime, mapped_column(UTCDateTime())]
ts_opt = Annotated[datetime | None, mapped_column(UTCDateTime())]
json_opt = Annotated[Any, mapped_column(JSONType, nullable=True)]
# Indexed in each table: deleting raw events (retention) sets these to NULL, and
# erasure follows them back to the raw event.
source_fk = Annotated[
    int | None,
    mapped_column(BigId, ForeignKey("callback_events.id", ondelete="SET NULL"), nullable=True),
]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CallbackEvent(Base):
    """Every accepted callback, byte-exact; the source of truth for all projections."""

    __tablename__ = "callback_events"

    id: Mapped[id_pk]
    # NULL once pruned by retention; the digest stays so retries still dedupe.
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    body_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    headers: Mapped[json_opt]
    received_at: Mapped[ts]
    trigger: Mapped[str] = mapped_column(String(64))
    app_id: Mapped[str64_opt]
    project_id: Mapped[str64_opt]
    event_time: Mapped[ts_opt]
    correlation_id: Mapped[str128_opt]
    # pending (stored, not yet projected), processed, ignored (unknown trigger), failed.
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[text_opt]
    processed_at: Mapped[ts_opt]
    pruned_at: Mapped[ts_opt]
    erased_at: Mapped[ts_opt]

    __table_args__ = (
        Index("ix_callback_events_received_at", "received_at"),
        Index("ix_callback_events_trigger_received_at", "trigger", "received_at"),
        Index("ix_callback_events_status", "status"),
        # Just the pending events: the projector's claim and the lag metrics read it.
        # (Partial on SQLite too, by the migration; naming sqlite_where here would load
        # SQLite's dialect in every PostgreSQL worker.)
        Index("ix_callback_events_pending", "id", postgresql_where=text("status = 'pending'")),
        CheckConstraint("status IN ('pending', 'processed', 'ignored', 'failed')", name="status"),
    )


class InboundMessage(Base):
    """One row per inbound (MO) message, keyed by Sinch's message id."""

    __tablename__ = "inbound_messages"

    id: Mapped[id_pk]
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str64_opt]
    identity: Mapped[str128_opt]
    contact_id: Mapped[str64_opt]
    conversation_id: Mapped[str64_opt]
    reply_to_message_id: Mapped[str64_opt]
    text: Mapped[text_opt]
    postback_data: Mapped[text_opt]
    media_url: Mapped[text_opt]
    metadata_text: Mapped[text_opt]
    sender_id: Mapped[str128_opt]
    processing_mode: Mapped[str | None] = mapped_column(String(16))
    accept_time: Mapped[ts_opt]
    source_event_id: Mapped[source_fk]

    __table_args__ = (
        Index("ix_inbound_messages_contact_id", "contact_id"),
        Index("ix_inbound_messages_identity", "identity"),
        Index("ix_inbound_messages_accept_time", "accept_time"),
        Index("ix_inbound_messages_source_event_id", "source_event_id"),
    )


class FlowResponse(Base):
    """One row per completed WhatsApp Flow (nfm_reply named "flow")."""

    __tablename__ = "flow_responses"

    id: Mapped[id_pk]
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    flow_token: Mapped[str | None] = mapped_column(String(255))
    reply_to_message_id: Mapped[str64_opt]
    contact_id: Mapped[str64_opt]
    conversation_id: Mapped[str64_opt]
    channel: Mapped[str64_opt]
    identity: Mapped[str128_opt]
    response: Mapped[json_opt]
    # The response_json text exactly as received, kept when it could not be parsed.
    response_raw: Mapped[text_opt]
    parse_error: Mapped[text_opt]
    completed_at: Mapped[ts_opt]
    source_event_id: Mapped[source_fk]

    __table_args__ = (
        Index("ix_flow_responses_flow_token", "flow_token"),
        Index("ix_flow_responses_reply_to_message_id", "reply_to_message_id"),
        Index("ix_flow_responses_completed_at", "completed_at"),
        Index("ix_flow_responses_contact_id", "contact_id"),
        Index("ix_flow_responses_identity", "identity"),
        Index("ix_flow_responses_source_event_id", "source_event_id"),
    )


class DeliveryReport(Base):
    """Full delivery history: one row per (kind, id, status, channel)."""

    __tablename__ = "delivery_reports"

    id: Mapped[id_pk]
    # "message" for MESSAGE_DELIVERY (message_id), "event" for EVENT_DELIVERY (event_id).
    kind: Mapped[str] = mapped_column(String(8))
    message_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(32))
    identity: Mapped[str128_opt]
    contact_id: Mapped[str64_opt]
    conversation_id: Mapped[str64_opt]
    reason_code: Mapped[str64_opt]
    reason_description: Mapped[text_opt]
    reason_sub_code: Mapped[str64_opt]
    channel_code: Mapped[str64_opt]
    metadata_text: Mapped[text_opt]
    processing_mode: Mapped[str | None] = mapped_column(String(16))
    event_time: Mapped[ts_opt]
    received_at: Mapped[ts]
    source_event_id: Mapped[source_fk]

    __table_args__ = (
        UniqueConstraint("kind", "message_id", "status", "channel"),
        Index("ix_delivery_reports_message_id", "message_id"),
        Index("ix_delivery_reports_status_event_time", "status", "event_time"),
        # Failures without an event_time are placed by received_at (reports, views).
        Index("ix_delivery_reports_status_received_at", "status", "received_at"),
        Index("ix_delivery_reports_contact_id", "contact_id"),
        Index("ix_delivery_reports_identity", "identity"),
        Index("ix_delivery_reports_source_event_id", "source_event_id"),
    )


class MessageStatus(Base):
    """Current status per sent message; moves forward only (see projections.py)."""

    __tablename__ = "message_status"

    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(32))
    status_rank: Mapped[int] = mapped_column(Integer)
    queued_at: Mapped[ts_opt]
    switching_at: Mapped[ts_opt]
    delivered_at: Mapped[ts_opt]
    read_at: Mapped[ts_opt]
    failed_at: Mapped[ts_opt]
    # FAILED reported for a message that was also DELIVERED or READ: kept, not a downgrade.
    failed_after_delivery: Mapped[bool] = mapped_column(Boolean, default=False)
    reason_code: Mapped[str64_opt]
    contact_id: Mapped[str64_opt]
    conversation_id: Mapped[str64_opt]
    updated_at: Mapped[ts]

    __table_args__ = (
        Index("ix_message_status_status", "status"),
        Index("ix_message_status_queued_at", "queued_at"),
    )


class FlowSend(Base):
    """A flow message sent: from our own client, or seen in MESSAGE_SUBMIT."""

    __tablename__ = "flow_sends"

    id: Mapped[id_pk]
    # NULL only for a send Sinch rejected (it never got a message id).
    message_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    flow_id: Mapped[str | None] = mapped_column(String(64))
    # Not unique: other systems may reuse a token (templates default it to "unused").
    flow_token: Mapped[str | None] = mapped_column(String(255))
    flow_mode: Mapped[str | None] = mapped_column(String(16))
    flow_cta: Mapped[str | None] = mapped_column(String(64))
    flow_action: Mapped[str | None] = mapped_column(String(32))
    screen: Mapped[str128_opt]
    channel: Mapped[str64_opt]
    identity: Mapped[str128_opt]
    contact_id: Mapped[str64_opt]
    conversation_id: Mapped[str64_opt]
    correlation_id: Mapped[str128_opt]
    # "accepted", "rejected", "failed", "unknown" (API sends; see webhook/flows/sending.py)
    # or "submitted" (seen only in MESSAGE_SUBMIT).
    send_status: Mapped[str] = mapped_column(String(16))
    error: Mapped[text_opt]
    request_body: Mapped[json_opt]
    sent_at: Mapped[ts_opt]
    submitted_at: Mapped[ts_opt]
    source_event_id: Mapped[source_fk]

    __table_args__ = (
        Index("ix_flow_sends_flow_token", "flow_token"),
        Index("ix_flow_sends_flow_id", "flow_id"),
        Index("ix_flow_sends_contact_id", "contact_id"),
        Index("ix_flow_sends_identity", "identity"),
        Index("ix_flow_sends_source_event_id", "source_event_id"),
        # A send's time is coalesce(sent_at, submitted_at); reports filter on each.
        Index("ix_flow_sends_sent_at", "sent_at"),
        Index("ix_flow_sends_submitted_at", "submitted_at"),
    )


class FlowExchange(Base):
    """One request to the Flows data endpoint and how it was answered."""

    __tablename__ = "flow_exchanges"

    id: Mapped[id_pk]
    flow_token: Mapped[str | None] = mapped_column(String(255))
    action: Mapped[str | None] = mapped_column(String(32))
    screen: Mapped[str128_opt]
    answer_screen: Mapped[str128_opt]
    http_status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float | None]
    error: Mapped[text_opt]
    # Submitted data: personal, so only kept when FLOWS_STORE_DATA is on.
    data: Mapped[json_opt]
    received_at: Mapped[ts]

    __table_args__ = (
        Index("ix_flow_exchanges_flow_token", "flow_token"),
        Index("ix_flow_exchanges_received_at", "received_at"),
    )


class Erasure(Base):
    """A record that one person's data was erased: when, by which key, how many rows."""

    __tablename__ = "erasures"

    id: Mapped[id_pk]
    requested_at: Mapped[ts]
    key_kind: Mapped[str] = mapped_column(String(16))
    # Keyed hash of the identity or contact id: proves what was erased without keeping it.
    key_hash: Mapped[str64]
    rows_affected: Mapped[json_opt]
