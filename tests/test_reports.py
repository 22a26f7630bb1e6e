"""Report queries: hand-computed answers on a known dataset, and agreement with the views."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import Boolean, Connection, Engine, Float, bindparam, text

from tests import report_data as data
from webhook.db.engine import make_engine
from webhook.db.models import JSONType, UTCDateTime
from webhook.reports import queries as reports

WINDOW = reports.Window(data.SINCE, data.UNTIL)


@pytest.fixture
def loaded(backend: str, new_database_url: Callable[[str], str]) -> Iterator[Engine]:
    engine = make_engine(data.loaded_database(backend, new_database_url))
    yield engine
    engine.dispose()


def run(engine: Engine, name: str, window: reports.Window = WINDOW, **kw: Any) -> reports.Report:
    with engine.connect() as conn:
        return reports.REPORTS[name](conn, window, **kw)


def view(conn: Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of a query over a view, with the same Python types the reports return."""
    stmt = text(sql).columns(
        sent_at=UTCDateTime(), completed_at=UTCDateTime(), queued_at=UTCDateTime(),
        switching_at=UTCDateTime(), delivered_at=UTCDateTime(), read_at=UTCDateTime(),
        failed_at=UTCDateTime(), failed_after_delivery=Boolean(), response=JSONType,
        seconds_to_complete=Float(),
    )  # fmt: skip
    binds = [
        bindparam(k, type_=UTCDateTime()) for k, v in params.items() if isinstance(v, datetime)
    ]
    return [dict(r._mapping) for r in conn.execute(stmt.bindparams(*binds), params)]


def day_text(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


# ---------------------------------------------------------------- hand-computed answers


def test_funnel(loaded: Engine) -> None:
    assert run(loaded, "funnel").rows == data.FUNNEL


def test_funnel_daily(loaded: Engine) -> None:
    assert run(loaded, "funnel", daily=True).rows == data.FUNNEL_DAILY


def test_funnel_for_one_flow(loaded: Engine) -> None:
    assert run(loaded, "funnel", flow_id=data.FLOW_B).rows == [data.FUNNEL[1]]
    assert run(loaded, "funnel", flow_id="no-such-flow").rows == []


def test_completions(loaded: Engine) -> None:
    result = run(loaded, "completions")
    got = [(r["message_id"], r["flow_id"], r["send_message_id"], r["matched_by"],
            r["seconds_to_complete"]) for r in result.rows]  # fmt: skip
    assert got == data.COMPLETIONS
    first = result.rows[1]
    assert first["response"] == {"flow_token": "tok1", **data.ANSWERS_1}
    assert first["sent_at"] == data.at(2, 9)  # our sender's sent_at wins over submitted_at
    assert first["completed_at"] == data.at(2, 9, 10, 30, 250000)
    assert first["identity"] == "5511900010000"
    assert first["contact_id"] == "contact1"
    unmatched = result.rows[-1]
    assert unmatched["sent_at"] is None and unmatched["flow_token"] == "tok-unknown"


def test_completions_for_one_flow(loaded: Engine) -> None:
    got = [r["message_id"] for r in run(loaded, "completions", flow_id=data.FLOW_B).rows]
    assert got == ["C5", "C67"]


def test_failures(loaded: Engine) -> None:
    got = [tuple(r.values()) for r in run(loaded, "failures").rows]
    assert got == data.FAILURES
    daily = [tuple(r.values()) for r in run(loaded, "failures", daily=True).rows]
    assert daily == data.FAILURES_DAILY
    flow_a = [r["reason_code"] for r in run(loaded, "failures", flow_id=data.FLOW_A).rows]
    assert flow_a == ["CHANNEL_FAILURE", "OUTSIDE_ALLOWED_SENDING_WINDOW"]


def test_timeline(loaded: Engine) -> None:
    rows = run(loaded, "timeline").rows
    got = {r["message_id"]: (r["status"], r["failed_after_delivery"], r["completed_at"] is not None)
           for r in rows}  # fmt: skip
    assert [r["message_id"] for r in rows] == list(data.TIMELINE)
    assert got == data.TIMELINE
    m1 = rows[0]
    # Each stage keeps the first time it was seen, whatever order the reports came in.
    assert (m1["sent_at"], m1["queued_at"], m1["delivered_at"], m1["read_at"]) == (
        data.at(2, 9), data.at(2, 9, 0, 1), data.at(2, 9, 1), data.at(2, 9, 5))  # fmt: skip
    assert m1["completed_at"] == data.at(2, 9, 10, 30, 250000)
    m2 = rows[1]
    assert m2["delivered_at"] is None and m2["read_at"] == data.at(2, 10, 2)
    m7 = rows[6]
    assert (
        m7["switching_at"] == data.at(3, 12, 0, 1)
        and m7["reason_code"] == "RECIPIENT_NOT_REACHABLE"
    )


def test_window_bounds_are_half_open(loaded: Engine) -> None:
    # Exactly at M2's send time: M2 is in [10:00, 11:00) and not in [09:00, 10:00).
    later = reports.Window(data.at(2, 10), data.at(2, 11))
    assert [r["message_id"] for r in run(loaded, "timeline", later).rows] == ["M2"]
    earlier = reports.Window(data.at(2, 9), data.at(2, 10))
    assert [r["message_id"] for r in run(loaded, "timeline", earlier).rows] == ["M1"]


def test_empty_database_gives_empty_reports(engine: Engine) -> None:
    for name in reports.REPORTS:
        assert run(engine, name).rows == []


# ---------------------------------------------------------------- commands == views


def test_funnel_equals_the_views(loaded: Engine) -> None:
    with loaded.connect() as conn:
        daily = view(conn, "SELECT * FROM flow_funnel_daily")
        whole = view(conn, "SELECT * FROM flow_funnel")
    in_window = [r for r in daily if "2026-03-01" <= day_text(r["day"]) < "2026-03-04"]
    for row in in_window:
        row["day"] = day_text(row["day"])
        row["completion_rate"] = float(row["completion_rate"])
    in_window.sort(key=lambda r: (r["day"], r["flow_id"]))
    assert in_window == run(loaded, "funnel", daily=True).rows
    # The per-flow view covers all time: it also has M9 (sent 02-20, completed).
    by_flow = {r["flow_id"]: r for r in whole}
    assert by_flow[data.FLOW_A]["sent"] == 5 and by_flow[data.FLOW_A]["completed"] == 2
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in daily:
        for column in reports.FUNNEL_COLUMNS:
            totals[row["flow_id"]][column] += row[column]
    for flow_id, row in by_flow.items():
        assert {c: row[c] for c in reports.FUNNEL_COLUMNS} == totals[flow_id]
        assert float(row["completion_rate"]) == round(row["completed"] / row["sent"], 4)


def test_completions_equal_the_view(loaded: Engine) -> None:
    with loaded.connect() as conn:
        rows = view(conn, "SELECT * FROM flow_completions WHERE completed_at >= :since "
                    "AND completed_at < :until ORDER BY completed_at, message_id",
                    since=WINDOW.since, until=WINDOW.until)  # fmt: skip
    for row in rows:
        if row["seconds_to_complete"] is not None:
            row["seconds_to_complete"] = round(row["seconds_to_complete"], 3)
    expected = [{c: r[c] for c in reports.COMPLETION_COLUMNS} for r in rows]
    assert expected == run(loaded, "completions").rows
    assert len(expected) == len(data.COMPLETIONS)


def test_failures_equal_the_view(loaded: Engine) -> None:
    with loaded.connect() as conn:
        rows = view(conn, "SELECT * FROM delivery_failures")
    sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        day = day_text(row["day"])
        if "2026-03-01" <= day < "2026-03-04":
            key = (day, row["channel"], row["reason_code"])
            sums[key][0] += row["failures"]
            sums[key][1] += row["after_delivery"]
    got = [tuple(r.values()) for r in run(loaded, "failures", daily=True).rows]
    assert got == sorted((*k, *v) for k, v in sums.items())


def test_timeline_equals_the_view(loaded: Engine) -> None:
    with loaded.connect() as conn:
        rows = view(conn, "SELECT * FROM message_timeline WHERE sent_at >= :since "
                    "AND sent_at < :until ORDER BY sent_at, message_id",
                    since=WINDOW.since, until=WINDOW.until)  # fmt: skip
        everything = view(conn, "SELECT * FROM message_timeline")
    expected = [{c: r[c] for c in reports.TIMELINE_COLUMNS} for r in rows]
    assert expected == run(loaded, "timeline").rows
    # The view also lists messages that are not flow sends (X1), with no flow.
    [x1] = [r for r in everything if r["message_id"] == "X1"]
    assert x1["flow_id"] is None and x1["status"] == "FAILED"
    assert x1["failed_at"] == datetime(2026, 3, 2, 15, tzinfo=UTC)
