"""The queries behind `flask report ...`: funnel, completions, failures, timeline.

Each one answers what the view of the same name answers (migrations/versions/
0003_reporting.py, docs/reporting.md), restricted to a time window. The views are
for analysts and cover all time; these queries select the window first, on indexed
time columns, so their cost follows the rows in the window, not the table.

Windows are half-open, [since, until), in UTC, and apply to:
  funnel, timeline   the send time, coalesce(sent_at, submitted_at)
  completions        flow_responses.completed_at
  failures           the FAILED report's event_time (received_at when it has none)

Functions take a Connection and never commit.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import BindParameter, Boolean, Connection, Float, Integer, String, bindparam, text
from sqlalchemy.types import TypeEngine

from webhook.db.models import JSONType, UTCDateTime
from webhook.reports.sql import (
    FUNNEL_COUNTS,
    MATCHED_SEND,
    day_sql,
    flow_filter,
    in_window,
    lookup_joins,
    seconds_sql,
    token_completions,
)


@dataclass(frozen=True, slots=True)
class Window:
    since: datetime
    until: datetime


@dataclass(frozen=True, slots=True)
class Report:
    name: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]


FUNNEL_COLUMNS = ("sent", "rejected", "queued", "delivered", "read", "completed", "failed",
                  "failed_after_delivery")  # fmt: skip


def _run(
    conn: Connection,
    sql: str,
    window: Window,
    flow_id: str | None,
    types: dict[str, TypeEngine[Any]],
) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"since": window.since, "until": window.until}
    binds: list[BindParameter[Any]] = [
        bindparam("since", type_=UTCDateTime()),
        bindparam("until", type_=UTCDateTime()),
    ]
    if flow_id is not None:
        params["flow_id"] = flow_id
        binds.append(bindparam("flow_id", type_=String()))
    stmt = text(sql).bindparams(*binds)
    # SQLite hands back text for times and JSON, integers for booleans. psycopg already
    # returns the Python types, so there the per-value conversions are skipped.
    typed = stmt if conn.dialect.name == "postgresql" else stmt.columns(**types)
    # Tens of thousands of new rows would set off the cyclic garbage collector again and
    # again, each full pass walking every row fetched so far; rows hold no cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        result = conn.execute(typed, params)
        keys = tuple(result.keys())
        return [dict(zip(keys, row, strict=True)) for row in result]
    finally:
        if was_enabled:
            gc.enable()


def _day_text(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, date) else value


def _sort_key(*values: Any) -> tuple[Any, ...]:
    # NULLs last, the same on both databases whatever their collation.
    return tuple((v is None, v if v is not None else "") for v in values)


def _rate(completed: int, sent: int) -> float | None:
    return round(completed / sent, 4) if sent else None


# ---------------------------------------------------------------- reports


def funnel(conn: Connection, window: Window, flow_id: str | None = None,
           daily: bool = False) -> Report:  # fmt: skip
    """Per flow (and per day): sent, queued, delivered, read, completed, failed."""
    dialect = conn.dialect.name
    day = f"{day_sql('COALESCE(s.sent_at, s.submitted_at)', dialect)} AS day, " if daily else ""
    group = "1, 2" if daily else "s.flow_id"
    sql = f"""
SELECT {day}s.flow_id,{FUNNEL_COUNTS}
FROM flow_sends s
LEFT JOIN message_status ms ON ms.message_id = s.message_id
LEFT JOIN (SELECT DISTINCT send_id FROM {token_completions(flow_id)} tc) t ON t.send_id = s.id
WHERE {in_window("s", flow_id)}
GROUP BY {group}"""
    types: dict[str, TypeEngine[Any]] = {name: Integer() for name in FUNNEL_COLUMNS}
    rows = _run(conn, sql, window, flow_id, types)
    for row in rows:
        if daily:
            row["day"] = _day_text(row["day"])
        row["completion_rate"] = _rate(row["completed"], row["sent"])
    rows.sort(key=lambda r: _sort_key(r.get("day"), r["flow_id"]))
    columns = (("day",) if daily else ()) + ("flow_id", *FUNNEL_COLUMNS, "completion_rate")
    return Report("funnel", columns, [{c: r[c] for c in columns} for r in rows])


COMPLETION_COLUMNS = ("completed_at", "message_id", "flow_token", "flow_id", "send_message_id",
                      "matched_by", "contact_id", "identity", "channel", "sent_at",
                      "seconds_to_complete", "parse_error", "response")  # fmt: skip


def completions(conn: Connection, window: Window, flow_id: str | None = None) -> Report:
    """One row per flow completed in the window, with its send and its answers."""
    dialect = conn.dialect.name
    sent = "COALESCE(s.sent_at, s.submitted_at)"
    sql = f"""
WITH m AS (
  SELECT fr.id, fr.message_id, fr.flow_token, fr.reply_to_message_id, fr.contact_id,
         fr.identity, fr.channel, fr.completed_at, fr.response, fr.parse_error,
         {MATCHED_SEND} AS send_id
  FROM flow_responses fr
  LEFT JOIN flow_sends rs ON rs.message_id = fr.reply_to_message_id
  WHERE fr.completed_at >= :since AND fr.completed_at < :until
)
SELECT
  m.completed_at, m.message_id, m.flow_token, s.flow_id, s.message_id AS send_message_id,
  CASE WHEN s.id IS NULL THEN NULL
       WHEN s.message_id = m.reply_to_message_id THEN 'reply_to'
       ELSE 'flow_token' END AS matched_by,
  COALESCE(m.contact_id, s.contact_id) AS contact_id,
  COALESCE(m.identity, s.identity) AS identity,
  COALESCE(m.channel, s.channel) AS channel,
  {sent} AS sent_at,
  {seconds_sql(sent, "m.completed_at", dialect)} AS seconds_to_complete,
  m.parse_error, m.response
FROM m
LEFT JOIN flow_sends s ON s.id = m.send_id
WHERE 1 = 1{flow_filter(flow_id, "s.flow_id")}
ORDER BY m.completed_at, m.message_id"""
    types: dict[str, TypeEngine[Any]] = {
        "completed_at": UTCDateTime(),
        "sent_at": UTCDateTime(),
        "seconds_to_complete": Float(),
        "response": JSONType,
    }
    with lookup_joins(conn):
        rows = _run(conn, sql, window, flow_id, types)
    for row in rows:
        if row["seconds_to_complete"] is not None:
            row["seconds_to_complete"] = round(row["seconds_to_complete"], 3)
    return Report("completions", COMPLETION_COLUMNS, rows)


def failures(conn: Connection, window: Window, flow_id: str | None = None,
             daily: bool = False) -> Report:  # fmt: skip
    """FAILED delivery reports by channel and reason code (and per day)."""
    dialect = conn.dialect.name
    when = "COALESCE(d.event_time, d.received_at)"
    day = f"{day_sql(when, dialect)} AS day, " if daily else ""
    group = "1, 2, 3" if daily else "1, 2"
    # One status and at most one send per report: scalar lookups by unique key, so the
    # cost follows the failures in the window (a join may hash every status instead).
    flow = (
        "\n  AND (SELECT s.flow_id FROM flow_sends s WHERE s.message_id = d.message_id) = :flow_id"
        if flow_id is not None
        else ""
    )
    sql = f"""
SELECT {day}d.channel, d.reason_code,
  COUNT(*) AS failures,
  SUM(CASE WHEN (SELECT ms.failed_after_delivery FROM message_status ms
                  WHERE ms.message_id = d.message_id) THEN 1 ELSE 0 END) AS after_delivery
FROM delivery_reports d
WHERE d.kind = 'message' AND d.status = 'FAILED'
  AND ((d.event_time >= :since AND d.event_time < :until)
       OR (d.event_time IS NULL AND d.received_at >= :since AND d.received_at < :until)){flow}
GROUP BY {group}"""
    types: dict[str, TypeEngine[Any]] = {"failures": Integer(), "after_delivery": Integer()}
    rows = _run(conn, sql, window, flow_id, types)
    for row in rows:
        if daily:
            row["day"] = _day_text(row["day"])
    rows.sort(key=lambda r: (_sort_key(r.get("day")), -r["failures"],
                             _sort_key(r["channel"], r["reason_code"])))  # fmt: skip
    columns = (("day",) if daily else ()) + ("channel", "reason_code", "failures",
                                             "after_delivery")  # fmt: skip
    return Report("failures", columns, [{c: r[c] for c in columns} for r in rows])


TIMELINE_TIMES = ("sent_at", "queued_at", "switching_at", "delivered_at", "read_at", "failed_at",
                  "completed_at")  # fmt: skip
TIMELINE_COLUMNS = ("message_id", "flow_id", "flow_token", "contact_id", "identity", "channel",
                    *TIMELINE_TIMES, "status", "failed_after_delivery", "reason_code")  # fmt: skip


def timeline(conn: Connection, window: Window, flow_id: str | None = None) -> Report:
    """Per flow message sent in the window: when each stage was first seen, and its status."""
    sql = f"""
SELECT s.message_id, s.flow_id, s.flow_token, s.contact_id, s.identity, s.channel,
  COALESCE(s.sent_at, s.submitted_at) AS sent_at, ms.queued_at, ms.switching_at,
  ms.delivered_at, ms.read_at, ms.failed_at,
  c.completed_at,
  ms.status, ms.failed_after_delivery, ms.reason_code
FROM flow_sends s
LEFT JOIN message_status ms ON ms.message_id = s.message_id
LEFT JOIN (
  SELECT send_id, MIN(completed_at) AS completed_at FROM (
    SELECT w.id AS send_id, r.completed_at
    FROM flow_sends w JOIN flow_responses r ON r.reply_to_message_id = w.message_id
    WHERE {in_window("w", flow_id)}
    UNION ALL
    SELECT send_id, completed_at FROM {token_completions(flow_id)} tc
  ) u
  GROUP BY send_id
) c ON c.send_id = s.id
WHERE {in_window("s", flow_id)} AND s.message_id IS NOT NULL
ORDER BY COALESCE(s.sent_at, s.submitted_at), s.message_id"""
    types: dict[str, TypeEngine[Any]] = {name: UTCDateTime() for name in TIMELINE_TIMES}
    types["failed_after_delivery"] = Boolean()
    return Report("timeline", TIMELINE_COLUMNS, _run(conn, sql, window, flow_id, types))


REPORTS = {"funnel": funnel, "completions": completions, "failures": failures,
           "timeline": timeline}  # fmt: skip
