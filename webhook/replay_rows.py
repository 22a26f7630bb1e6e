"""Records -> row dicts, and the message_status lattice folded in Python (pure).

Bulk replay (rebuild, reprocess) writes many rows at once instead of one upsert per
record, so it needs the rows projections.py would write, as plain dicts, and the
result of merging delivery reports into message_status without a round trip per
report. Both mirror projections.py exactly: tests/test_rebuild.py proves a rebuild
equals live ingestion, and tests/test_replay_rows.py that the fold equals the SQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple

from webhook.callbacks import (
    DeliveryReportRecord,
    FlowResponseRecord,
    FlowSendRecord,
    InboundMessageRecord,
    InvalidBody,
    Record,
    load_body,
    parse_envelope,
)
from webhook.ingest import FAILED, classify
from webhook.projections import STAGE_COLUMNS, STATUS_RANKS

INBOUND, FLOW_RESPONSES, DELIVERY = "inbound_messages", "flow_responses", "delivery_reports"
STATUS, FLOW_SENDS = "message_status", "flow_sends"
# Tables where the first row for a natural key wins (ON CONFLICT DO NOTHING).
FIRST_WINS_KEYS: dict[str, tuple[str, ...]] = {
    INBOUND: ("message_id",),
    FLOW_RESPONSES: ("message_id",),
    DELIVERY: ("kind", "message_id", "status", "channel"),
}
PROJECTION_TABLES = (INBOUND, FLOW_RESPONSES, DELIVERY, STATUS, FLOW_SENDS)
# Columns a MESSAGE_SUBMIT fills in on a flow_sends row (see projections._SUBMIT_FILL).
SUBMIT_FILL = (
    "flow_id", "flow_token", "flow_mode", "flow_cta", "flow_action", "screen", "channel",
    "identity", "contact_id", "conversation_id", "correlation_id",
)  # fmt: skip
# send_status of a flow_sends row a MESSAGE_SUBMIT created. Every other status is a row
# our own sender recorded: replay never deletes those, only what callbacks filled in.
SUBMITTED = "submitted"


def inbound_row(r: InboundMessageRecord, event_id: int | None) -> dict[str, Any]:
    return {
        "message_id": r.message_id, "kind": r.kind, "channel": r.channel,
        "identity": r.identity, "contact_id": r.contact_id,
        "conversation_id": r.conversation_id, "reply_to_message_id": r.reply_to_message_id,
        "text": r.text, "postback_data": r.postback_data, "media_url": r.media_url,
        "metadata_text": r.metadata_text, "sender_id": r.sender_id,
        "processing_mode": r.processing_mode, "accept_time": r.accept_time,
        "source_event_id": event_id,
    }  # fmt: skip


def flow_response_row(r: FlowResponseRecord, event_id: int | None) -> dict[str, Any]:
    return {
        "message_id": r.message_id, "flow_token": r.flow_token,
        "reply_to_message_id": r.reply_to_message_id, "contact_id": r.contact_id,
        "conversation_id": r.conversation_id, "channel": r.channel, "identity": r.identity,
        "response": r.response, "response_raw": r.response_raw, "parse_error": r.parse_error,
        "completed_at": r.completed_at, "source_event_id": event_id,
    }  # fmt: skip


def delivery_row(
    r: DeliveryReportRecord, event_id: int | None, received_at: datetime
) -> dict[str, Any]:
    return {
        "kind": r.kind, "message_id": r.message_id, "status": r.status, "channel": r.channel,
        "identity": r.identity, "contact_id": r.contact_id,
        "conversation_id": r.conversation_id, "reason_code": r.reason_code,
        "reason_description": r.reason_description, "reason_sub_code": r.reason_sub_code,
        "channel_code": r.channel_code, "metadata_text": r.metadata_text,
        "processing_mode": r.processing_mode, "event_time": r.event_time,
        "received_at": received_at, "source_event_id": event_id,
    }  # fmt: skip


def flow_send_row(r: FlowSendRecord, event_id: int | None) -> dict[str, Any]:
    """A flow_sends row as a MESSAGE_SUBMIT inserts it; the sender's columns stay NULL.

    request_body, error and sent_at are left out on purpose: a JSON column given None
    stores JSON null, whereas the live upsert never names them and stores SQL NULL.
    """
    return {
        "message_id": r.message_id, "flow_id": r.flow_id, "flow_token": r.flow_token,
        "flow_mode": r.flow_mode, "flow_cta": r.flow_cta, "flow_action": r.flow_action,
        "screen": r.screen, "channel": r.channel, "identity": r.identity,
        "contact_id": r.contact_id, "conversation_id": r.conversation_id,
        "correlation_id": r.correlation_id, "send_status": SUBMITTED,
        "submitted_at": r.submitted_at, "source_event_id": event_id,
    }  # fmt: skip


def merge_flow_send(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A later MESSAGE_SUBMIT merged into a flow_sends row (fills gaps, never overwrites)."""
    merged = dict(existing)
    for col in SUBMIT_FILL:
        if merged[col] is None:
            merged[col] = new[col]
    merged["submitted_at"] = _min(existing["submitted_at"], new["submitted_at"])
    if merged["source_event_id"] is None:
        merged["source_event_id"] = new["source_event_id"]
    return merged


class EventRows(NamedTuple):
    """Everything one callback writes, as rows; ``reports`` feed message_status."""

    rows: dict[str, list[dict[str, Any]]]
    reports: list[StatusReport]


def event_rows(records: Iterable[Record], event_id: int | None, received_at: datetime) -> EventRows:
    """The rows one callback's records project to, in the order apply_records writes them."""
    rows: dict[str, list[dict[str, Any]]] = {}
    reports: list[StatusReport] = []
    for r in records:
        if isinstance(r, DeliveryReportRecord):
            rows.setdefault(DELIVERY, []).append(delivery_row(r, event_id, received_at))
            if r.kind == "message" and r.status in STAGE_COLUMNS:
                reports.append(report_from_record(r, received_at))
        elif isinstance(r, InboundMessageRecord):
            rows.setdefault(INBOUND, []).append(inbound_row(r, event_id))
        elif isinstance(r, FlowResponseRecord):
            rows.setdefault(FLOW_RESPONSES, []).append(flow_response_row(r, event_id))
        elif isinstance(r, FlowSendRecord):
            rows.setdefault(FLOW_SENDS, []).append(flow_send_row(r, event_id))
    return EventRows(rows, reports)


_KEY_GETTERS: dict[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]] = {
    INBOUND: lambda row: (row["message_id"],),
    FLOW_RESPONSES: lambda row: (row["message_id"],),
    DELIVERY: itemgetter(*FIRST_WINS_KEYS[DELIVERY]),
}


def key_of(table: str, row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The natural key of a row of a first-wins table, as a tuple."""
    return _KEY_GETTERS[table](row)


# ---------------------------------------------------------------- compact rows
# Rebuild passes rows between processes and into COPY as plain tuples (cheap to build,
# pickle and write), in the column order of the builders above.


def _columns(
    builder: Callable[..., dict[str, Any]], record_type: Any, *extra: Any
) -> tuple[str, ...]:
    blank = record_type(*([None] * len(dataclasses.fields(record_type))))
    return tuple(builder(blank, None, *extra))


ROW_COLUMNS: dict[str, tuple[str, ...]] = {
    INBOUND: _columns(inbound_row, InboundMessageRecord),
    FLOW_RESPONSES: _columns(flow_response_row, FlowResponseRecord),
    DELIVERY: _columns(delivery_row, DeliveryReportRecord, None),
    FLOW_SENDS: _columns(flow_send_row, FlowSendRecord),
}


def _tuple_key(table: str) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    index = [ROW_COLUMNS[table].index(c) for c in FIRST_WINS_KEYS[table]]
    if len(index) == 1:
        i = index[0]
        return lambda row: (row[i],)
    return itemgetter(*index)


TUPLE_KEYS = {table: _tuple_key(table) for table in FIRST_WINS_KEYS}
_SEND = {c: i for i, c in enumerate(ROW_COLUMNS[FLOW_SENDS])}
SEND_MESSAGE_ID = _SEND["message_id"]


def merge_send_tuple(existing: tuple[Any, ...], new: tuple[Any, ...]) -> tuple[Any, ...]:
    """merge_flow_send on compact rows."""
    merged = dict(zip(ROW_COLUMNS[FLOW_SENDS], existing, strict=True))
    merged = merge_flow_send(merged, dict(zip(ROW_COLUMNS[FLOW_SENDS], new, strict=True)))
    return tuple(merged.values())


# ---------------------------------------------------------------- stored events
# NamedTuples, not dataclasses: replay builds millions of them and tuples are cheapest.


class EventFields(NamedTuple):
    """The callback_events columns that classifying a body decides."""

    trigger: str
    status: str
    error: str | None
    app_id: str | None
    project_id: str | None
    event_time: datetime | None
    correlation_id: str | None


class StoredEvent(NamedTuple):
    """A callback_events row as replay reads it (body is None once pruned)."""

    id: int
    body: bytes | None
    received_at: datetime
    trigger: str
    status: str
    error: str | None
    app_id: str | None
    project_id: str | None
    event_time: datetime | None
    correlation_id: str | None

    @property
    def fields(self) -> EventFields:
        return EventFields(*self[3:])


STORED_EVENT_COLUMNS = StoredEvent._fields


class Reclassified(NamedTuple):
    """What the current parser makes of a stored event."""

    event: StoredEvent
    fields: EventFields  # as ingest would store them today
    records: tuple[Record, ...]
    rows: EventRows | None  # what the records project to; None without records
    changed: bool  # fields differ from the stored ones


def reclassify(event: StoredEvent) -> Reclassified:
    """Parse a stored body again, exactly as ingest would classify it today."""
    assert event.body is not None
    try:
        payload = load_body(event.body)
    except InvalidBody as err:  # only possible for a body stored by other means
        fields = event.fields._replace(status=FAILED, error=str(err))
        return Reclassified(event, fields, (), None, fields != event.fields)
    outcome = classify(payload)
    env = outcome.parsed.envelope if outcome.parsed else parse_envelope(payload)
    fields = EventFields(
        outcome.trigger, outcome.status, outcome.error, env.app_id, env.project_id,
        env.event_time, env.correlation_id,
    )  # fmt: skip
    records = outcome.parsed.records if outcome.parsed else ()
    rows = event_rows(records, event.id, event.received_at) if records else None
    return Reclassified(event, fields, records, rows, fields != event.fields)


def failed_fields(fields: EventFields, error: str) -> EventFields:
    return fields._replace(status=FAILED, error=error)


class Prepared(NamedTuple):
    """A stored event parsed again, in the compact form rebuild writes from."""

    id: int
    status: str  # as stored
    fields: EventFields  # as ingest would store them today
    changed: bool
    rows: dict[str, list[tuple[Any, ...]]] | None  # ROW_COLUMNS order; None: no records
    reports: list[tuple[Any, ...]]  # StatusReport fields


def prepare(event: StoredEvent) -> Prepared:
    """reclassify() in the compact form (pure; runs in reader threads or processes)."""
    item = reclassify(event)
    fields = EventFields(*item.fields)  # a fresh plain copy pickles without references
    if item.rows is None:
        return Prepared(event.id, event.status, fields, item.changed, None, [])
    rows = {name: [tuple(r.values()) for r in rs] for name, rs in item.rows.rows.items()}
    return Prepared(
        event.id, event.status, fields, item.changed, rows, [tuple(r) for r in item.rows.reports]
    )


# ---------------------------------------------------------------- message_status


class StatusReport(NamedTuple):
    """One MESSAGE_DELIVERY report as upsert_status sees it."""

    message_id: str
    status: str
    seen_at: datetime
    reason_code: str | None
    contact_id: str | None
    conversation_id: str | None
    received_at: datetime


def report_from_record(r: DeliveryReportRecord, received_at: datetime) -> StatusReport:
    return StatusReport(
        r.message_id, r.status, r.event_time or received_at, r.reason_code, r.contact_id,
        r.conversation_id, received_at,
    )  # fmt: skip


def report_from_history(row: dict[str, Any]) -> StatusReport | None:
    """A delivery_reports row (kind 'message') as the report that wrote it, if it counts."""
    if row["kind"] != "message" or row["status"] not in STAGE_COLUMNS:
        return None
    return StatusReport(
        row["message_id"], row["status"], row["event_time"] or row["received_at"],
        row["reason_code"], row["contact_id"], row["conversation_id"], row["received_at"],
    )  # fmt: skip


class StatusRow(NamedTuple):
    """A message_status row; the fields are its columns."""

    message_id: str
    status: str
    status_rank: int
    queued_at: datetime | None
    switching_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    failed_after_delivery: bool
    reason_code: str | None
    contact_id: str | None
    conversation_id: str | None
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


STATUS_COLUMNS = StatusRow._fields


def status_row_from_db(row: Any) -> StatusRow:
    m = row._mapping if hasattr(row, "_mapping") else row
    return StatusRow(**{name: m[name] for name in STATUS_COLUMNS})


def _min(a: Any, b: Any) -> Any:
    """projections._min: the smaller, NULL only if both are."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b < a else a


def _max(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return b if b > a else a


def _derive(read: Any, delivered: Any, failed: Any, queued: Any) -> str:
    """projections.derive_status, on the stage times."""
    if read is not None:
        return "READ"
    if delivered is not None:
        return "DELIVERED"
    if failed is not None:
        return "FAILED"
    if queued is not None:
        return "QUEUED_ON_CHANNEL"
    return "SWITCHING_CHANNEL"


def _inserted(r: StatusReport) -> StatusRow:
    """The row upsert_status inserts for a message it has not seen (one stage set)."""
    s, at = r.status, r.seen_at
    return StatusRow(
        r.message_id, s, STATUS_RANKS[s],
        at if s == "QUEUED_ON_CHANNEL" else None, at if s == "SWITCHING_CHANNEL" else None,
        at if s == "DELIVERED" else None, at if s == "READ" else None,
        at if s == "FAILED" else None,
        False, r.reason_code if s in ("FAILED", "SWITCHING_CHANNEL") else None,
        r.contact_id, r.conversation_id, r.received_at,
    )  # fmt: skip


def merge_status(t: StatusRow | None, r: StatusReport) -> StatusRow:
    """Merge one report into the current row exactly as upsert_status's SQL does.

    Ties between two different strings go to the larger in code-point order, which is
    SQLite's order and PostgreSQL's under the C / C.UTF-8 collations.
    """
    x = _inserted(r)
    if t is None:
        return x
    queued, switching = _min(t.queued_at, x.queued_at), _min(t.switching_at, x.switching_at)
    delivered, read = _min(t.delivered_at, x.delivered_at), _min(t.read_at, x.read_at)
    failed = _min(t.failed_at, x.failed_at)
    status = _derive(read, delivered, failed, queued)
    # The failure reason wins over a channel-switch reason; ties pick the larger code.
    failed_reason = _max(
        t.reason_code if t.failed_at is not None else None,
        x.reason_code if x.failed_at is not None else None,
    )
    reason = failed_reason if failed_reason is not None else _max(t.reason_code, x.reason_code)
    return StatusRow(
        t.message_id, status, STATUS_RANKS[status], queued, switching, delivered, read, failed,
        failed is not None and (read is not None or delivered is not None), reason,
        _max(t.contact_id, x.contact_id), _max(t.conversation_id, x.conversation_id),
        _max(t.updated_at, x.updated_at),
    )  # fmt: skip


def fold_status(current: dict[str, StatusRow], reports: Iterable[StatusReport]) -> None:
    """Merge ``reports`` in order into ``current``, in place."""
    for r in reports:
        current[r.message_id] = merge_status(current.get(r.message_id), r)
