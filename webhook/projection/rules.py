"""The projection rule, written once (pure): stored events -> rows, folded per key.

A stored callback is parsed into frozen records (webhook.ingest.parsers); each record is a
row of one projection table. Several events may speak of the same natural key, and
every table says how their rows combine (its ``rule``):

- ``first_wins`` (inbound_messages, flow_responses, delivery_reports): the row of the
  lowest event id that has the key. The database keeps the same rule (an upsert that
  replaces a row only with one from a lower or equal event id), so it holds whatever
  order events are projected in, and re-projecting an event refreshes its own rows.
- ``fill`` (flow_sends): a MESSAGE_SUBMIT fills in what a send row lacks and never
  overwrites. Rows combine in event-id order (a row our own sender recorded always
  comes first); submitted_at and source_event_id take the earliest.
- ``lattice`` (message_status): each stage keeps the earliest time it was seen, and
  the current status is derived from the set of stages seen: READ > DELIVERED >
  FAILED > QUEUED_ON_CHANNEL = SWITCHING_CHANNEL. A FAILED for a message also
  DELIVERED or READ sets failed_after_delivery. reason_code is the largest code of
  the FAILED reports once a FAILED was seen, else the largest of the SWITCHING ones.

Each rule is commutative and associative, so a batch folded in Python and then merged
into the stored rows gives the rows of any other order: projection does not depend on
arrival order, and projecting an event twice changes nothing (tests/test_projector.py).
The webhook.projection.projector module applies these rules to the database; nothing else does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from webhook.core.timeparse import ParseError
from webhook.db.errors import describe_error
from webhook.db.events import FAILED, IGNORED, PROCESSED, EventFields, StoredEvent
from webhook.ingest.body import InvalidBody, load_body
from webhook.ingest.parsers import UNKNOWN, detect_trigger, parse_callback, parse_envelope
from webhook.ingest.records import (
    DeliveryReportRecord,
    FlowResponseRecord,
    FlowSendRecord,
    InboundMessageRecord,
    Record,
)

INBOUND, FLOW_RESPONSES, DELIVERY = "inbound_messages", "flow_responses", "delivery_reports"
STATUS, FLOW_SENDS = "message_status", "flow_sends"
FIRST_WINS, FILL, LATTICE = "first_wins", "fill", "lattice"
# send_status of a flow_sends row a MESSAGE_SUBMIT created. Every other status is a row
# our own sender recorded: a replay never deletes those, only what callbacks filled in.
SUBMITTED = "submitted"


@dataclass(frozen=True)
class Personal:
    """Where a projection table holds personal data (erasure reads this).

    ``keys``: identity, contact id and id columns, replaced by a pseudonym when they
    match the person; ``clear``: content removed; ``scrub``: free text in which a key
    is replaced; ``answers`` / ``document``: JSON columns rewritten value by value (flow
    answers keep their field names; a request body keeps its structural fields).
    """

    keys: tuple[str, ...]
    clear: tuple[str, ...] = ()
    scrub: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()
    document: tuple[str, ...] = ()


@dataclass(frozen=True)
class Projection:
    """One projection table: its natural key, how rows for one key combine, and where
    it keeps personal data."""

    table: str
    key: tuple[str, ...]
    rule: str
    record: type | None  # the record type that becomes a row; None: derived (status)
    personal: Personal


# The registry: the projector, replays and erasure read it. Add a table here
# (docs/extending.md).
PROJECTIONS: tuple[Projection, ...] = (
    Projection(INBOUND, ("message_id",), FIRST_WINS, InboundMessageRecord, Personal(
        keys=("identity", "contact_id", "sender_id", "message_id", "reply_to_message_id"),
        clear=("text", "postback_data", "media_url", "metadata_text"))),
    Projection(FLOW_RESPONSES, ("message_id",), FIRST_WINS, FlowResponseRecord, Personal(
        keys=("identity", "contact_id", "message_id", "reply_to_message_id"),
        clear=("response_raw",), answers=("response",))),
    Projection(DELIVERY, ("kind", "message_id", "status", "channel"), FIRST_WINS,
               DeliveryReportRecord, Personal(
        keys=("identity", "contact_id", "message_id"), clear=("metadata_text",),
        scrub=("reason_description",))),
    Projection(FLOW_SENDS, ("message_id",), FILL, FlowSendRecord, Personal(
        keys=("identity", "contact_id", "message_id"), scrub=("error",),
        document=("request_body",))),
    Projection(STATUS, ("message_id",), LATTICE, None, Personal(
        keys=("contact_id", "message_id"))),
)  # fmt: skip
BY_TABLE = {p.table: p for p in PROJECTIONS}
PROJECTION_TABLES = tuple(p.table for p in PROJECTIONS)
_TABLE_OF_RECORD: dict[type, Projection] = {p.record: p for p in PROJECTIONS if p.record}


def projection_of(record: Record) -> Projection:
    """The projection (table) a record becomes a row of."""
    return _TABLE_OF_RECORD[type(record)]


_FIELDS: dict[type, tuple[str, ...]] = {
    t: tuple(f.name for f in dataclasses.fields(t)) for t in _TABLE_OF_RECORD
}
# Columns a MESSAGE_SUBMIT fills in on a flow_sends row that lacks them.
SUBMIT_FILL = (
    "flow_id", "flow_token", "flow_mode", "flow_cta", "flow_action", "screen", "channel",
    "identity", "contact_id", "conversation_id", "correlation_id",
)  # fmt: skip


# ---------------------------------------------------------------- stored events


class Parsed(NamedTuple):
    """A stored event parsed (picklable: rebuild parses in worker processes)."""

    id: int
    received_at: datetime
    fields: EventFields  # as parsing decides them now
    records: tuple[Record, ...]
    before: EventFields | None = None  # as stored; the projector writes only changes


def parse_event(event: StoredEvent) -> Parsed:
    """Parse a stored body; an event that cannot be parsed is ``failed`` with the reason.

    A known trigger is ``processed``, an unknown one ``ignored``. A parser bug must not
    lose the event: whatever it raises becomes the event's error.
    """
    assert event.body is not None
    before = event.fields
    try:
        payload = load_body(event.body)
    except InvalidBody as err:  # only for a body stored by other means than the endpoint
        fields = _fields(event.trigger, FAILED, str(err))
        return Parsed(event.id, event.received_at, fields, (), before)
    try:
        parsed = parse_callback(payload)
    except ParseError as err:
        fields = _fields(detect_trigger(payload), FAILED, str(err), payload)
        return Parsed(event.id, event.received_at, fields, (), before)
    except Exception as err:
        fields = _fields(detect_trigger(payload), FAILED, f"parser error: {describe_error(err)}",
                         payload)  # fmt: skip
        return Parsed(event.id, event.received_at, fields, (), before)
    env = parsed.envelope
    status = IGNORED if parsed.trigger == UNKNOWN else PROCESSED
    fields = EventFields(parsed.trigger, status, None, env.app_id, env.project_id,
                         env.event_time, env.correlation_id)  # fmt: skip
    return Parsed(event.id, event.received_at, fields, parsed.records, before)


def _fields(trigger: str, status: str, error: str | None,
            payload: Mapping[str, Any] | None = None) -> EventFields:  # fmt: skip
    env = parse_envelope(payload or {})
    return EventFields(trigger, status, error, env.app_id, env.project_id, env.event_time,
                       env.correlation_id)  # fmt: skip


def failed(parsed: Parsed, error: str) -> Parsed:
    """The same event, marked failed with ``error`` and projecting nothing."""
    return parsed._replace(fields=parsed.fields._replace(status=FAILED, error=error), records=())


# ---------------------------------------------------------------- message_status


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


STATUS_COLUMNS = StatusRow._fields
# The stage a MESSAGE_DELIVERY status stands for; any other status stays in the history.
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


def derive_status(read: Any, delivered: Any, failed_at: Any, queued: Any) -> str:
    """The current status from the stage times seen (None: not seen)."""
    if read is not None:
        return "READ"
    if delivered is not None:
        return "DELIVERED"
    if failed_at is not None:
        return "FAILED"
    if queued is not None:
        return "QUEUED_ON_CHANNEL"
    return "SWITCHING_CHANNEL"


def status_of_report(r: Any, received_at: datetime) -> StatusRow | None:
    """The message_status row one MESSAGE_DELIVERY report alone stands for.

    ``r`` is a DeliveryReportRecord, or a delivery_reports row (same attribute names).
    """
    if r.kind != "message" or r.status not in STAGE_COLUMNS:
        return None
    s, at = r.status, r.event_time or received_at
    return StatusRow(
        r.message_id, s, STATUS_RANKS[s],
        at if s == "QUEUED_ON_CHANNEL" else None, at if s == "SWITCHING_CHANNEL" else None,
        at if s == "DELIVERED" else None, at if s == "READ" else None,
        at if s == "FAILED" else None,
        False, r.reason_code if s in ("FAILED", "SWITCHING_CHANNEL") else None,
        r.contact_id, r.conversation_id, received_at,
    )  # fmt: skip


def _min(a: Any, b: Any) -> Any:
    """The smaller, None only if both are."""
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


def merge_status(t: StatusRow | None, x: StatusRow) -> StatusRow:
    """Join two message_status rows of one message (commutative, associative, idempotent).

    Ties between two different strings go to the larger in code-point order.
    """
    if t is None:
        return x
    queued, switching = _min(t.queued_at, x.queued_at), _min(t.switching_at, x.switching_at)
    delivered, read = _min(t.delivered_at, x.delivered_at), _min(t.read_at, x.read_at)
    failed_at = _min(t.failed_at, x.failed_at)
    status = derive_status(read, delivered, failed_at, queued)
    # Once a FAILED is seen, only FAILED reports' reasons count (a switch reason never
    # stands for a failure); before, the SWITCHING ones'.
    if t.failed_at is not None and x.failed_at is None:
        reason = t.reason_code
    elif x.failed_at is not None and t.failed_at is None:
        reason = x.reason_code
    else:
        reason = _max(t.reason_code, x.reason_code)
    return StatusRow(
        t.message_id, status, STATUS_RANKS[status], queued, switching, delivered, read,
        failed_at, failed_at is not None and (read is not None or delivered is not None),
        reason, _max(t.contact_id, x.contact_id), _max(t.conversation_id, x.conversation_id),
        _max(t.updated_at, x.updated_at),
    )  # fmt: skip


# ---------------------------------------------------------------- flow_sends


def merge_send(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Join two flow_sends rows of one message (commutative, associative, idempotent).

    The row our own sender recorded comes first, else the one from the lower event id;
    the other fills in what it lacks. submitted_at and source_event_id: the earliest.
    """
    if _order(b) < _order(a):
        a, b = b, a
    merged = dict(a)
    for col in SUBMIT_FILL:
        if merged[col] is None:
            merged[col] = b[col]
    merged["submitted_at"] = _min(a["submitted_at"], b["submitted_at"])
    merged["source_event_id"] = _min(a["source_event_id"], b["source_event_id"])
    return merged


def _order(row: Mapping[str, Any]) -> tuple[int, int]:
    if row["send_status"] != SUBMITTED:
        return (0, 0)
    source = row["source_event_id"]
    return (1, -1 if source is None else source)  # a pruned source: the earliest


# ---------------------------------------------------------------- rows and the fold


def row_of(r: Record, event_id: int | None, received_at: datetime) -> dict[str, Any]:
    """The row one record writes (flow_sends: as a MESSAGE_SUBMIT creates it).

    A flow_sends row leaves out the sender's own columns (request_body, error,
    sent_at), so an upsert never touches them.
    """
    row = {name: getattr(r, name) for name in _FIELDS[type(r)]}
    row["source_event_id"] = event_id
    if isinstance(r, DeliveryReportRecord):
        row["received_at"] = received_at
    elif isinstance(r, FlowSendRecord):
        row["send_status"] = SUBMITTED
    return row


def columns_of(table: str) -> tuple[str, ...]:
    """The columns the projector writes in ``table``."""
    if table == STATUS:
        return STATUS_COLUMNS
    record = BY_TABLE[table].record
    assert record is not None
    blank = record(*([None] * len(_FIELDS[record])))
    return tuple(row_of(blank, None, None))  # type: ignore[arg-type]


def key_getter(table: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    cols = BY_TABLE[table].key
    return lambda row: tuple(row[c] for c in cols)


_KEYS = {p.table: key_getter(p.table) for p in PROJECTIONS if p.rule != LATTICE}


@dataclass
class Folded:
    """A batch's rows, one per natural key and table, already combined by each rule."""

    rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]]
    statuses: dict[str, StatusRow]

    @classmethod
    def empty(cls) -> Folded:
        return cls({p.table: {} for p in PROJECTIONS if p.rule != LATTICE}, {})

    def add(self, parsed: Parsed) -> None:
        """Fold one event's records in."""
        for r in parsed.records:
            p = _TABLE_OF_RECORD[type(r)]
            row = row_of(r, parsed.id, parsed.received_at)
            key = _KEYS[p.table](row)
            held = self.rows[p.table]
            have = held.get(key)
            if have is None:
                held[key] = row
            elif p.rule == FILL:
                held[key] = merge_send(have, row)
            elif row["source_event_id"] < have["source_event_id"]:  # first wins
                held[key] = row
            if isinstance(r, DeliveryReportRecord):
                status = status_of_report(r, parsed.received_at)
                if status is not None:
                    mid = status.message_id
                    self.statuses[mid] = merge_status(self.statuses.get(mid), status)


def fold(events: Iterable[Parsed]) -> Folded:
    folded = Folded.empty()
    for parsed in events:
        folded.add(parsed)
    return folded
