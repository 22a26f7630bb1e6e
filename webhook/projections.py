"""Records -> rows. Every write is an upsert keyed on a natural key, so applying the
same record twice, or records in any order, or from concurrent writers, gives the
same rows. Functions take a Connection and never commit.

message_status is a join-semilattice: each stage keeps the earliest time it was
seen (MIN), and the current status is derived from which stages have been seen:
READ > DELIVERED > FAILED > QUEUED_ON_CHANNEL > SWITCHING_CHANNEL. A FAILED seen
together with DELIVERED or READ does not downgrade; it sets failed_after_delivery.
Because MIN/MAX are commutative and the status is a function of the merged
stages, the row is the same whatever order the reports arrive in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, literal, null, or_
from sqlalchemy.dialects import postgresql, sqlite

from webhook.callbacks import (
    DeliveryReportRecord,
    FlowResponseRecord,
    FlowSendRecord,
    InboundMessageRecord,
    Record,
)
from webhook.models import DeliveryReport, FlowResponse, FlowSend, InboundMessage, MessageStatus

STAGE_COLUMNS = {
    "QUEUED_ON_CHANNEL": "queued_at",
    "SWITCHING_CHANNEL": "switching_at",
    "DELIVERED": "delivered_at",
    "READ": "read_at",
    "FAILED": "failed_at",
}
STATUS_RANKS = {
    "SWITCHING_CHANNEL": 1,
    "QUEUED_ON_CHANNEL": 1,
    "FAILED": 2,
    "DELIVERED": 3,
    "READ": 4,
}


UpsertInsert = postgresql.Insert | sqlite.Insert


def upsert_insert(conn: Connection, table: Any) -> UpsertInsert:
    """An INSERT that supports ON CONFLICT on this connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def derive_status(stages: dict[str, bool]) -> str:
    """Current status from the set of stages seen (mirrors the SQL in upsert_status)."""
    if stages.get("read_at"):
        return "READ"
    if stages.get("delivered_at"):
        return "DELIVERED"
    if stages.get("failed_at"):
        return "FAILED"
    if stages.get("queued_at"):
        return "QUEUED_ON_CHANNEL"
    return "SWITCHING_CHANNEL"


def _min(a: Any, b: Any) -> ColumnElement[Any]:
    """Smaller of two nullable values; NULL only if both are (portable LEAST)."""
    return case((a.is_(None), b), (b.is_(None), a), (b < a, b), else_=a)


def _max(a: Any, b: Any) -> ColumnElement[Any]:
    return case((a.is_(None), b), (b.is_(None), a), (b > a, b), else_=a)


def apply_records(conn: Connection, records: tuple[Record, ...], event_id: int | None,
                  received_at: datetime) -> None:  # fmt: skip
    """Write every record of one callback."""
    for record in records:
        if isinstance(record, DeliveryReportRecord):
            insert_delivery_report(conn, record, event_id, received_at)
            if record.kind == "message":
                upsert_status(conn, record, received_at)
        elif isinstance(record, InboundMessageRecord):
            insert_inbound(conn, record, event_id)
        elif isinstance(record, FlowResponseRecord):
            insert_flow_response(conn, record, event_id)
        elif isinstance(record, FlowSendRecord):
            upsert_flow_send_from_submit(conn, record, event_id)


def insert_inbound(conn: Connection, r: InboundMessageRecord, event_id: int | None) -> None:
    stmt = upsert_insert(conn, InboundMessage).values(
        message_id=r.message_id,
        kind=r.kind,
        channel=r.channel,
        identity=r.identity,
        contact_id=r.contact_id,
        conversation_id=r.conversation_id,
        reply_to_message_id=r.reply_to_message_id,
        text=r.text,
        postback_data=r.postback_data,
        media_url=r.media_url,
        metadata_text=r.metadata_text,
        sender_id=r.sender_id,
        processing_mode=r.processing_mode,
        accept_time=r.accept_time,
        source_event_id=event_id,
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["message_id"]))


def insert_flow_response(conn: Connection, r: FlowResponseRecord, event_id: int | None) -> None:
    stmt = upsert_insert(conn, FlowResponse).values(
        message_id=r.message_id,
        flow_token=r.flow_token,
        reply_to_message_id=r.reply_to_message_id,
        contact_id=r.contact_id,
        conversation_id=r.conversation_id,
        channel=r.channel,
        identity=r.identity,
        response=r.response,
        response_raw=r.response_raw,
        parse_error=r.parse_error,
        completed_at=r.completed_at,
        source_event_id=event_id,
    )
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["message_id"]))


def insert_delivery_report(
    conn: Connection, r: DeliveryReportRecord, event_id: int | None, received_at: datetime
) -> None:
    stmt = upsert_insert(conn, DeliveryReport).values(
        kind=r.kind,
        message_id=r.message_id,
        status=r.status,
        channel=r.channel,
        identity=r.identity,
        contact_id=r.contact_id,
        conversation_id=r.conversation_id,
        reason_code=r.reason_code,
        reason_description=r.reason_description,
        reason_sub_code=r.reason_sub_code,
        channel_code=r.channel_code,
        metadata_text=r.metadata_text,
        processing_mode=r.processing_mode,
        event_time=r.event_time,
        received_at=received_at,
        source_event_id=event_id,
    )
    conn.execute(
        stmt.on_conflict_do_nothing(index_elements=["kind", "message_id", "status", "channel"])
    )


def upsert_status(conn: Connection, r: DeliveryReportRecord, received_at: datetime) -> None:
    """Merge one MESSAGE_DELIVERY report into message_status (forward-only)."""
    stage = STAGE_COLUMNS.get(r.status)
    if stage is None:
        return  # an unknown status stays in the history only
    seen_at = r.event_time or received_at
    stages = {column: column == stage for column in STAGE_COLUMNS.values()}
    values: dict[str, Any] = {column: (seen_at if on else None) for column, on in stages.items()}
    status = derive_status(stages)
    stmt = upsert_insert(conn, MessageStatus).values(
        message_id=r.message_id,
        status=status,
        status_rank=STATUS_RANKS[status],
        failed_after_delivery=False,
        reason_code=r.reason_code if r.status in {"FAILED", "SWITCHING_CHANNEL"} else None,
        contact_id=r.contact_id,
        conversation_id=r.conversation_id,
        updated_at=received_at,
        **values,
    )
    t, x = MessageStatus.__table__.c, stmt.excluded
    merged = {col: _min(t[col], x[col]) for col in STAGE_COLUMNS.values()}
    seen = {col: expr.is_not(None) for col, expr in merged.items()}
    delivered = or_(seen["read_at"], seen["delivered_at"])
    new_status = case(
        (seen["read_at"], literal("READ")),
        (seen["delivered_at"], literal("DELIVERED")),
        (seen["failed_at"], literal("FAILED")),
        (seen["queued_at"], literal("QUEUED_ON_CHANNEL")),
        else_=literal("SWITCHING_CHANNEL"),
    )
    new_rank = case(
        (seen["read_at"], 4), (seen["delivered_at"], 3), (seen["failed_at"], 2), else_=1
    )
    # The failure reason wins over a channel-switch reason; ties pick the larger code.
    failed_reason = _max(
        case((t.failed_at.is_not(None), t.reason_code), else_=null()),
        case((x.failed_at.is_not(None), x.reason_code), else_=null()),
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["message_id"],
            set_={
                **merged,
                "status": new_status,
                "status_rank": new_rank,
                "failed_after_delivery": and_(seen["failed_at"], delivered),
                "reason_code": func.coalesce(failed_reason, _max(t.reason_code, x.reason_code)),
                "contact_id": _max(t.contact_id, x.contact_id),
                "conversation_id": _max(t.conversation_id, x.conversation_id),
                "updated_at": _max(t.updated_at, x.updated_at),
            },
        )
    )


# Columns a MESSAGE_SUBMIT fills in on a send row that is missing them.
_SUBMIT_FILL = (
    "flow_id", "flow_token", "flow_mode", "flow_cta", "flow_action", "screen", "channel",
    "identity", "contact_id", "conversation_id", "correlation_id",
)  # fmt: skip


def upsert_flow_send_from_submit(conn: Connection, r: FlowSendRecord, event_id: int | None) -> None:
    """Record a flow send seen in MESSAGE_SUBMIT; complete, never duplicate, an API send."""
    stmt = upsert_insert(conn, FlowSend).values(
        message_id=r.message_id,
        flow_id=r.flow_id,
        flow_token=r.flow_token,
        flow_mode=r.flow_mode,
        flow_cta=r.flow_cta,
        flow_action=r.flow_action,
        screen=r.screen,
        channel=r.channel,
        identity=r.identity,
        contact_id=r.contact_id,
        conversation_id=r.conversation_id,
        correlation_id=r.correlation_id,
        send_status="submitted",
        submitted_at=r.submitted_at,
        source_event_id=event_id,
    )
    t, x = FlowSend.__table__.c, stmt.excluded
    fill: dict[str, ColumnElement[Any]] = {
        col: func.coalesce(t[col], x[col]) for col in _SUBMIT_FILL
    }
    fill["submitted_at"] = _min(t.submitted_at, x.submitted_at)
    fill["source_event_id"] = func.coalesce(t.source_event_id, x.source_event_id)
    conn.execute(stmt.on_conflict_do_update(index_elements=["message_id"], set_=fill))
