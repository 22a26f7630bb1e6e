"""The bulk-replay mirrors of projections.py: row builders and the status lattice fold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select

from tests.helpers import FIXTURES
from webhook.callbacks import DeliveryReportRecord, load_body, parse_callback
from webhook.models import Base, MessageStatus
from webhook.projections import upsert_status
from webhook.replay_rows import (
    FLOW_SENDS,
    PROJECTION_TABLES,
    STATUS,
    StatusRow,
    event_rows,
    fold_status,
    report_from_record,
    status_row_from_db,
)

# Columns only our own sender fills in; a MESSAGE_SUBMIT never names them.
SENDER_ONLY = {"error", "request_body", "sent_at"}


def test_row_builders_name_every_column() -> None:
    """A column added to a table but not to replay_rows would be lost by a rebuild."""
    seen: dict[str, set[str]] = {}
    received = datetime(2026, 3, 1, tzinfo=UTC)
    for path in sorted(FIXTURES.glob("*.json")):
        records = parse_callback(load_body(path.read_bytes())).records
        for table, rows in event_rows(records, 1, received).rows.items():
            for row in rows:
                seen.setdefault(table, set()).update(row)
    for table in PROJECTION_TABLES:
        if table == STATUS:
            continue
        columns = {c.name for c in Base.metadata.tables[table].columns} - {"id"}
        if table == FLOW_SENDS:
            columns -= SENDER_ONLY
        assert seen[table] == columns, table
    assert set(StatusRow._fields) == {c.name for c in MessageStatus.__table__.columns}


STATUSES = ["QUEUED_ON_CHANNEL", "SWITCHING_CHANNEL", "DELIVERED", "READ", "FAILED"]
reports = st.lists(
    st.tuples(
        st.sampled_from(["M1", "M2"]),
        st.sampled_from(STATUSES),
        st.integers(0, 6),  # seconds after the start: ties happen
        st.sampled_from([None, "AAA_FAILED", "ZZZ_SWITCH", "MMM"]),
        st.sampled_from([None, "C1", "C2"]),
        st.booleans(),  # event_time present, or fall back to received_at
    ),
    min_size=1,
    max_size=7,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(reports)
def test_fold_equals_upsert_status(engine: Engine, sequence: list[tuple[object, ...]]) -> None:
    """Any sequence of reports, folded in Python, gives the rows the SQL upsert gives."""
    start = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    records = []
    for i, (mid, status, sec, code, contact, timed) in enumerate(sequence):
        record = DeliveryReportRecord(
            "message", str(mid), str(status), "WHATSAPP", None, contact, None,  # type: ignore[arg-type]
            code, None, None, None, None, None,  # type: ignore[arg-type]
            start + timedelta(seconds=int(sec)) if timed else None,  # type: ignore[call-overload]
        )  # fmt: skip
        records.append((record, start + timedelta(seconds=10 + i)))
    with engine.begin() as conn:
        conn.execute(delete(MessageStatus))
        for record, received in records:
            upsert_status(conn, record, received)
        in_sql = {
            row.message_id: status_row_from_db(row) for row in conn.execute(select(MessageStatus))
        }
        conn.execute(delete(MessageStatus))
    folded: dict[str, StatusRow] = {}
    fold_status(folded, (report_from_record(r, at) for r, at in records))
    assert folded == in_sql
