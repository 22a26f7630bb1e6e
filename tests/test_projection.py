"""The projection rules (webhook.projection.rules): every column named, and each rule
commutative, associative and idempotent, so projection does not depend on order."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from tests.helpers import FIXTURES
from webhook.db.models import Base, MessageStatus
from webhook.ingest.body import load_body
from webhook.ingest.parsers import parse_callback
from webhook.ingest.records import DeliveryReportRecord
from webhook.projection.projector import write_rows
from webhook.projection.rules import (
    FLOW_SENDS,
    PROJECTION_TABLES,
    STATUS,
    STATUS_COLUMNS,
    SUBMITTED,
    Parsed,
    StatusRow,
    columns_of,
    fold,
    merge_send,
    merge_status,
    row_of,
    status_of_report,
)

# Columns only our own sender fills in; a MESSAGE_SUBMIT never names them.
SENDER_ONLY = {"error", "request_body", "sent_at"}
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_rows_name_every_column() -> None:
    """A column added to a table but not to the projection would be lost."""
    seen: dict[str, set[str]] = {}
    for path in sorted(FIXTURES.glob("*.json")):
        for r in parse_callback(load_body(path.read_bytes())).records:
            row = row_of(r, 1, START)
            seen.setdefault(type(r).__name__, set()).update(row)
    for table in PROJECTION_TABLES:
        columns = {c.name for c in Base.metadata.tables[table].columns} - {"id"}
        if table == FLOW_SENDS:
            columns -= SENDER_ONLY
        assert set(columns_of(table)) == columns, table
    assert set(STATUS_COLUMNS) == {c.name for c in MessageStatus.__table__.columns}
    assert len(seen) == 4  # every record type appears in the fixtures


def report(mid: str, status: str, sec: int, code: str | None = None,
           contact: str | None = None, timed: bool = True) -> DeliveryReportRecord:  # fmt: skip
    return DeliveryReportRecord(
        "message", mid, status, "WHATSAPP", None, contact, None, code, None, None, None, None,
        None, START + timedelta(seconds=sec) if timed else None,
    )  # fmt: skip


def status(r: DeliveryReportRecord, received_sec: int = 100) -> StatusRow:
    row = status_of_report(r, START + timedelta(seconds=received_sec))
    assert row is not None
    return row


def test_status_ranks_follow_the_lattice() -> None:
    """READ > DELIVERED > FAILED > QUEUED_ON_CHANNEL = SWITCHING_CHANNEL, as documented."""
    names = ("SWITCHING_CHANNEL", "QUEUED_ON_CHANNEL", "FAILED", "DELIVERED", "READ")
    ranks = {s: status(report("M", s, 0)).status_rank for s in names}
    assert ranks == {"SWITCHING_CHANNEL": 1, "QUEUED_ON_CHANNEL": 1, "FAILED": 2,
                     "DELIVERED": 3, "READ": 4}  # fmt: skip
    # READ before DELIVERED still ends READ; FAILED after DELIVERED is flagged, not a downgrade.
    row = merge_status(status(report("M", "READ", 5)), status(report("M", "DELIVERED", 3)))
    assert (row.status, row.delivered_at, row.read_at) == (
        "READ",
        START + timedelta(seconds=3),
        START + timedelta(seconds=5),
    )
    row = merge_status(row, status(report("M", "FAILED", 9, code="RECIPIENT_NOT_REACHABLE")))
    assert (row.status, row.failed_after_delivery, row.reason_code) == (
        "READ",
        True,
        "RECIPIENT_NOT_REACHABLE",
    )
    assert status_of_report(report("M", "UNKNOWN_STATUS", 1), START) is None


def test_a_switch_reason_never_stands_for_a_failure() -> None:
    failed = status(report("M", "FAILED", 2, code=None))
    switched = status(report("M", "SWITCHING_CHANNEL", 1, code="ZZZ_SWITCH"))
    assert merge_status(failed, switched).reason_code is None
    assert merge_status(switched, failed).reason_code is None
    assert merge_status(switched, status(report("M", "QUEUED_ON_CHANNEL", 0))).reason_code == (
        "ZZZ_SWITCH"
    )


STATUSES = ["QUEUED_ON_CHANNEL", "SWITCHING_CHANNEL", "DELIVERED", "READ", "FAILED"]
reports = st.lists(
    st.builds(
        report,
        st.sampled_from(["M1", "M2"]),
        st.sampled_from(STATUSES),
        st.integers(0, 6),  # seconds after the start: ties happen
        st.sampled_from([None, "AAA_FAILED", "ZZZ_SWITCH", "MMM"]),
        st.sampled_from([None, "C1", "C2"]),
        st.booleans(),  # event_time present, or fall back to received_at
    ),
    min_size=1,
    max_size=8,
)


def _fold_all(rows: list[StatusRow]) -> dict[str, StatusRow]:
    out: dict[str, StatusRow] = {}
    for row in rows:
        out[row.message_id] = merge_status(out.get(row.message_id), row)
    return out


@given(reports, st.randoms(use_true_random=False))
def test_status_fold_ignores_order_grouping_and_repeats(
    sequence: list[DeliveryReportRecord], rnd: random.Random
) -> None:
    rows = [status(r, 10 + i) for i, r in enumerate(sequence)]
    expected = _fold_all(rows)
    shuffled = rows + rnd.sample(rows, len(rows) // 2)  # some twice
    rnd.shuffle(shuffled)
    cut = rnd.randint(0, len(shuffled))
    left, right = _fold_all(shuffled[:cut]), _fold_all(shuffled[cut:])
    grouped = {m: merge_status(left.get(m), right[m]) if m in right else left[m]
               for m in {*left, *right}}  # fmt: skip
    assert _fold_all(shuffled) == expected
    assert grouped == expected


def send(source: int | None, sender: bool = False, **values: object) -> dict[str, object]:
    row: dict[str, object] = {c: None for c in columns_of(FLOW_SENDS)}
    row.update(message_id="M", send_status="accepted" if sender else SUBMITTED,
               source_event_id=source, **values)  # fmt: skip
    return row


def test_send_fill_prefers_the_sender_then_the_earliest_event() -> None:
    """Any order gives the same row. (Two submits of one message that disagree on a
    column the sender left empty are the exception: the first merged fills it.)"""
    sender = send(None, sender=True, flow_id="F1")
    early = send(3, flow_id="F2", flow_token="T3", submitted_at=START)
    late = send(7, flow_id="F7", screen="S7", submitted_at=START - timedelta(seconds=1))
    for a, b, c in ((sender, early, late), (late, early, sender), (early, late, sender)):
        merged = merge_send(merge_send(a, b), c)
        assert merged == merge_send(a, merge_send(b, c))
        assert (merged["flow_id"], merged["flow_token"], merged["screen"]) == ("F1", "T3", "S7")
        assert merged["send_status"] == "accepted"
        assert merged["submitted_at"] == START - timedelta(seconds=1)
        assert merged["source_event_id"] == 3


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(reports, st.randoms(use_true_random=False))
def test_batches_written_in_any_order_give_one_fold(
    engine: Engine, sequence: list[DeliveryReportRecord], rnd: random.Random
) -> None:
    """The database merge (write_rows) agrees with the fold, whatever the batches."""
    events = [Parsed(i + 1, START + timedelta(seconds=10 + i), None, (r,))  # type: ignore[arg-type]
              for i, r in enumerate(sequence)]  # fmt: skip
    expected = fold(events).statuses
    rnd.shuffle(events)
    with engine.begin() as conn:
        conn.execute(MessageStatus.__table__.delete())
        cut = rnd.randint(0, len(events))
        for batch in (events[:cut], events[cut:], events[: cut // 2]):
            folded = fold(batch)
            folded.rows = {table: {} for table in folded.rows}  # no events stored: statuses only
            write_rows(conn, folded)
        stored = {r.message_id: StatusRow(*r) for r in conn.execute(
            select(*(MessageStatus.__table__.c[c] for c in STATUS_COLUMNS)))}  # fmt: skip
        conn.execute(MessageStatus.__table__.delete())
    assert stored == expected
    assert STATUS in PROJECTION_TABLES
