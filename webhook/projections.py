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

import dataclasses
import functools
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    and_,
    bindparam,
    case,
    func,
    literal,
    null,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql

from webhook.callbacks import (
    DeliveryReportRecord,
    FlowResponseRecord,
    FlowSendRecord,
    InboundMessageRecord,
    Record,
)
from webhook.models import DeliveryReport, FlowResponse, FlowSend, InboundMessage, MessageStatus

if TYPE_CHECKING:
    from sqlalchemy.dialects import sqlite

    UpsertInsert = postgresql.Insert | sqlite.Insert

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


def upsert_insert(conn: Connection, table: Any) -> UpsertInsert:
    """An INSERT that supports ON CONFLICT on this connection's dialect."""
    return dialect_insert(conn.dialect.name, table)


def dialect_insert(dialect: str, table: Any) -> UpsertInsert:
    """An INSERT that supports ON CONFLICT on ``dialect`` (postgresql, else SQLite)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    # Imported here: a service on PostgreSQL never loads SQLite's dialect.
    from sqlalchemy.dialects import sqlite

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


def _min(a: Any, b: Any, pg: bool = False) -> ColumnElement[Any]:
    """Smaller of two nullable values; NULL only if both are (PostgreSQL's LEAST)."""
    if pg:  # shorter SQL, same result: LEAST ignores NULLs
        return func.least(a, b)
    return case((a.is_(None), b), (b.is_(None), a), (b < a, b), else_=a)


def _max(a: Any, b: Any, pg: bool = False) -> ColumnElement[Any]:
    if pg:
        return func.greatest(a, b)
    return case((a.is_(None), b), (b.is_(None), a), (b > a, b), else_=a)


def apply_records(conn: Connection, records: tuple[Record, ...], event_id: int | None,
                  received_at: datetime) -> None:  # fmt: skip
    """Write every record of one callback."""
    for kind, values in projection_rows(records, event_id, received_at):
        conn.execute(_statement(conn.dialect.name, kind), values)


def projection_rows(records: tuple[Record, ...], event_id: int | None,
                    received_at: datetime) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
    """(projection kind, values) for every row one callback writes, in writing order."""
    out: list[tuple[str, dict[str, Any]]] = []
    for r in records:
        if isinstance(r, DeliveryReportRecord):
            out.append((DELIVERY_REPORT, delivery_report_values(r, event_id, received_at)))
            if r.kind == "message":
                status = status_values(r, received_at)
                if status is not None:
                    out.append((STATUS, status))
        elif isinstance(r, InboundMessageRecord):
            out.append((INBOUND, inbound_values(r, event_id)))
        elif isinstance(r, FlowResponseRecord):
            out.append((FLOW_RESPONSE, flow_response_values(r, event_id)))
        elif isinstance(r, FlowSendRecord):
            out.append((FLOW_SEND, flow_send_values(r, event_id)))
    return out


# ---------------------------------------------------------------- values
# Each projection is a values dict (per record) and a statement (per dialect, built once
# with bind parameters and reused, so the hot path never rebuilds or recompiles SQL).


def _field_names(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_FIELDS: dict[type, tuple[str, ...]] = {
    cls: _field_names(cls)
    for cls in (InboundMessageRecord, FlowResponseRecord, DeliveryReportRecord, FlowSendRecord)
}


def _record_values(r: Record) -> dict[str, Any]:
    return {name: getattr(r, name) for name in _FIELDS[type(r)]}


def inbound_values(r: InboundMessageRecord, event_id: int | None) -> dict[str, Any]:
    return {**_record_values(r), "source_event_id": event_id}


def flow_response_values(r: FlowResponseRecord, event_id: int | None) -> dict[str, Any]:
    return {**_record_values(r), "source_event_id": event_id}


def delivery_report_values(
    r: DeliveryReportRecord, event_id: int | None, received_at: datetime
) -> dict[str, Any]:
    return {**_record_values(r), "received_at": received_at, "source_event_id": event_id}


def status_values(r: DeliveryReportRecord, received_at: datetime) -> dict[str, Any] | None:
    """The message_status row one MESSAGE_DELIVERY report stands for; None if no stage."""
    stage = STAGE_COLUMNS.get(r.status)
    if stage is None:
        return None  # an unknown status stays in the history only
    seen_at = r.event_time or received_at
    stages = {column: column == stage for column in STAGE_COLUMNS.values()}
    status = derive_status(stages)
    return {
        "message_id": r.message_id,
        "status": status,
        "status_rank": STATUS_RANKS[status],
        "failed_after_delivery": False,
        "reason_code": r.reason_code if r.status in {"FAILED", "SWITCHING_CHANNEL"} else None,
        "contact_id": r.contact_id,
        "conversation_id": r.conversation_id,
        "updated_at": received_at,
        **{column: (seen_at if on else None) for column, on in stages.items()},
    }


def flow_send_values(r: FlowSendRecord, event_id: int | None) -> dict[str, Any]:
    return {**_record_values(r), "send_status": "submitted", "source_event_id": event_id}


# ---------------------------------------------------------------- statements

INBOUND, FLOW_RESPONSE, DELIVERY_REPORT, STATUS, FLOW_SEND = (
    "inbound", "flow_response", "delivery_report", "status", "flow_send",
)  # fmt: skip
_TABLES: dict[str, Any] = {
    INBOUND: InboundMessage,
    FLOW_RESPONSE: FlowResponse,
    DELIVERY_REPORT: DeliveryReport,
    STATUS: MessageStatus,
    FLOW_SEND: FlowSend,
}
_COLUMNS: dict[str, tuple[str, ...]] = {
    INBOUND: (*_field_names(InboundMessageRecord), "source_event_id"),
    FLOW_RESPONSE: (*_field_names(FlowResponseRecord), "source_event_id"),
    DELIVERY_REPORT: (*_field_names(DeliveryReportRecord), "received_at", "source_event_id"),
    STATUS: ("message_id", "status", "status_rank", "failed_after_delivery", "reason_code",
             "contact_id", "conversation_id", "updated_at", *STAGE_COLUMNS.values()),
    FLOW_SEND: (*_field_names(FlowSendRecord), "send_status", "source_event_id"),
}  # fmt: skip


def projection_columns(kind: str) -> tuple[str, ...]:
    """The columns one projection ``kind`` writes (the keys of its values dict)."""
    return _COLUMNS[kind]


def projection_statement(dialect: str, kind: str, prefix: str = "",
                         gate: CTE | None = None) -> UpsertInsert:  # fmt: skip
    """The upsert for one projection ``kind``, values as bind parameters ``prefix + column``.

    With ``gate`` (a CTE of the inserted event's id), the row is written only if the
    gate has a row, and source_event_id is taken from it (PostgreSQL one-statement path).
    """
    table = _TABLES[kind]
    names = [n for n in _COLUMNS[kind] if not (gate is not None and n == "source_event_id")]
    binds = [bindparam(prefix + n, type_=table.__table__.c[n].type) for n in names]
    stmt = dialect_insert(dialect, table)
    if gate is None:
        stmt = stmt.values(dict(zip(names, binds, strict=True)))
    elif "source_event_id" in _COLUMNS[kind]:
        stmt = stmt.from_select([*names, "source_event_id"], select(*binds, gate.c.id))
    else:
        stmt = stmt.from_select(names, select(*binds).select_from(gate))
    return _on_conflict(kind, stmt)


def _on_conflict(kind: str, stmt: UpsertInsert) -> UpsertInsert:
    if kind in (INBOUND, FLOW_RESPONSE):
        return stmt.on_conflict_do_nothing(index_elements=["message_id"])
    if kind == DELIVERY_REPORT:
        return stmt.on_conflict_do_nothing(
            index_elements=["kind", "message_id", "status", "channel"]
        )
    if kind == STATUS:
        return stmt.on_conflict_do_update(index_elements=["message_id"], set_=_status_merge(stmt))
    t, x = FlowSend.__table__.c, stmt.excluded
    fill: dict[str, ColumnElement[Any]] = {
        col: func.coalesce(t[col], x[col]) for col in _SUBMIT_FILL
    }
    fill["submitted_at"] = _min(t.submitted_at, x.submitted_at, _is_pg(stmt))
    fill["source_event_id"] = func.coalesce(t.source_event_id, x.source_event_id)
    return stmt.on_conflict_do_update(index_elements=["message_id"], set_=fill)


def _is_pg(stmt: UpsertInsert) -> bool:
    return isinstance(stmt, postgresql.Insert)


def _status_merge(stmt: UpsertInsert) -> dict[str, ColumnElement[Any]]:
    """message_status merge: earliest time per stage, status derived from the stages seen."""
    t, x, pg = MessageStatus.__table__.c, stmt.excluded, _is_pg(stmt)
    merged = {col: _min(t[col], x[col], pg) for col in STAGE_COLUMNS.values()}
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
        pg,
    )
    return {
        **merged,
        "status": new_status,
        "status_rank": new_rank,
        "failed_after_delivery": and_(seen["failed_at"], delivered),
        "reason_code": func.coalesce(failed_reason, _max(t.reason_code, x.reason_code, pg)),
        "contact_id": _max(t.contact_id, x.contact_id, pg),
        "conversation_id": _max(t.conversation_id, x.conversation_id, pg),
        "updated_at": _max(t.updated_at, x.updated_at, pg),
    }


@functools.cache
def _statement(dialect: str, kind: str) -> UpsertInsert:
    return projection_statement(dialect, kind)


def insert_inbound(conn: Connection, r: InboundMessageRecord, event_id: int | None) -> None:
    conn.execute(_statement(conn.dialect.name, INBOUND), inbound_values(r, event_id))


def insert_flow_response(conn: Connection, r: FlowResponseRecord, event_id: int | None) -> None:
    conn.execute(_statement(conn.dialect.name, FLOW_RESPONSE), flow_response_values(r, event_id))


def insert_delivery_report(
    conn: Connection, r: DeliveryReportRecord, event_id: int | None, received_at: datetime
) -> None:
    values = delivery_report_values(r, event_id, received_at)
    conn.execute(_statement(conn.dialect.name, DELIVERY_REPORT), values)


def upsert_status(conn: Connection, r: DeliveryReportRecord, received_at: datetime) -> None:
    """Merge one MESSAGE_DELIVERY report into message_status (forward-only)."""
    values = status_values(r, received_at)
    if values is not None:
        conn.execute(_statement(conn.dialect.name, STATUS), values)


# Columns a MESSAGE_SUBMIT fills in on a send row that is missing them.
_SUBMIT_FILL = (
    "flow_id", "flow_token", "flow_mode", "flow_cta", "flow_action", "screen", "channel",
    "identity", "contact_id", "conversation_id", "correlation_id",
)  # fmt: skip


def upsert_flow_send_from_submit(conn: Connection, r: FlowSendRecord, event_id: int | None) -> None:
    """Record a flow send seen in MESSAGE_SUBMIT; complete, never duplicate, an API send."""
    conn.execute(_statement(conn.dialect.name, FLOW_SEND), flow_send_values(r, event_id))
