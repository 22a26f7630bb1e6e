"""The queries behind `flask report ...`: funnel, completions, failures, timeline.

Each one answers what the view of the same name answers (migrations/versions/
0002_reporting.py, docs/reporting.md), restricted to a time window. The views are
for analysts and cover all time; these queries select the window first, on indexed
time columns, so their cost follows the rows in the window, not the table.

Windows are half-open, [since, until), in UTC, and apply to:
  funnel, timeline   the send time, coalesce(sent_at, submitted_at)
  completions        flow_responses.completed_at
  failures           the FAILED report's event_time (received_at when it has none)

Functions take a Connection and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import BindParameter, Boolean, Connection, Float, Integer, String, bindparam, text
from sqlalchemy.types import TypeEngine

from webhook.models import JSONType, UTCDateTime


@dataclass(frozen=True, slots=True)
class Window:
    since: datetime
    until: datetime


@dataclass(frozen=True, slots=True)
class Report:
    name: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]


# ---------------------------------------------------------------- SQL pieces


def day_sql(expr: str, dialect: str) -> str:
    """The UTC calendar day of a timestamp (as the views compute it)."""
    if dialect == "postgresql":
        return f"CAST(({expr}) AT TIME ZONE 'UTC' AS DATE)"
    return f"date({expr})"


def seconds_sql(start: str, end: str, dialect: str) -> str:
    """Seconds from start to end, exact to the microsecond (as the views compute it)."""
    if dialect == "postgresql":
        return f"CAST(EXTRACT(EPOCH FROM ({end}) - ({start})) AS DOUBLE PRECISION)"
    whole = f"(CAST(strftime('%s', {end}) AS INTEGER) - CAST(strftime('%s', {start}) AS INTEGER))"
    micro = f"(CAST(substr({end}, 21, 6) AS INTEGER) - CAST(substr({start}, 21, 6) AS INTEGER))"
    return f"(({whole}) * 1000000 + {micro}) / 1000000.0"


# The send a completion answers (fr: flow_responses, rs: the send its reply_to names).
MATCHED_SEND = """COALESCE(
      rs.id,
      (SELECT ts.id FROM flow_sends ts
        WHERE ts.flow_token = fr.flow_token
          AND ts.message_id IS NOT NULL
          AND COALESCE(ts.sent_at, ts.submitted_at) <= fr.completed_at
        ORDER BY COALESCE(ts.sent_at, ts.submitted_at) DESC, ts.id DESC
        LIMIT 1))"""

# Sends in the window: each branch can use its own index (sent_at, submitted_at).
SENDS_IN_WINDOW = """s AS (
  SELECT id, message_id, flow_id, flow_token, contact_id, identity, channel, send_status,
         COALESCE(sent_at, submitted_at) AS sent_time
  FROM flow_sends
  WHERE ((sent_at >= :since AND sent_at < :until)
         OR (sent_at IS NULL AND submitted_at >= :since AND submitted_at < :until)){flow}
)"""

# The first completion of each send in `s`. Only completions that can point at one of
# those sends are matched: by reply_to, or by a flow_token one of them carries.
COMPLETED_SENDS = f"""cand AS (
  SELECT fr.id FROM flow_responses fr JOIN s ON fr.reply_to_message_id = s.message_id
  UNION
  SELECT fr.id FROM flow_responses fr JOIN s ON fr.flow_token = s.flow_token
   WHERE s.message_id IS NOT NULL
),
done AS (
  SELECT send_id, MIN(completed_at) AS completed_at FROM (
    SELECT {MATCHED_SEND} AS send_id, fr.completed_at
    FROM cand
    JOIN flow_responses fr ON fr.id = cand.id
    LEFT JOIN flow_sends rs ON rs.message_id = fr.reply_to_message_id
  ) m
  WHERE send_id IS NOT NULL
  GROUP BY send_id
)"""

FUNNEL_COUNTS = """
  SUM(CASE WHEN s.send_status <> 'rejected' THEN 1 ELSE 0 END) AS sent,
  SUM(CASE WHEN s.send_status = 'rejected' THEN 1 ELSE 0 END) AS rejected,
  SUM(CASE WHEN ms.queued_at IS NOT NULL OR ms.delivered_at IS NOT NULL
            OR ms.read_at IS NOT NULL THEN 1 ELSE 0 END) AS queued,
  SUM(CASE WHEN ms.delivered_at IS NOT NULL OR ms.read_at IS NOT NULL
           THEN 1 ELSE 0 END) AS delivered,
  SUM(CASE WHEN ms.read_at IS NOT NULL THEN 1 ELSE 0 END) AS read,
  SUM(CASE WHEN c.send_id IS NOT NULL THEN 1 ELSE 0 END) AS completed,
  SUM(CASE WHEN ms.status = 'FAILED' THEN 1 ELSE 0 END) AS failed,
  SUM(CASE WHEN ms.failed_after_delivery THEN 1 ELSE 0 END) AS failed_after_delivery"""

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
    stmt = text(sql).bindparams(*binds).columns(**types)
    return [dict(row._mapping) for row in conn.execute(stmt, params)]


def _flow_filter(flow_id: str | None, column: str) -> str:
    return f" AND {column} = :flow_id" if flow_id is not None else ""


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
    day = f"{day_sql('s.sent_time', dialect)} AS day, " if daily else ""
    group = "1, 2" if daily else "s.flow_id"
    sql = f"""
WITH {SENDS_IN_WINDOW.format(flow=_flow_filter(flow_id, "flow_id"))},
{COMPLETED_SENDS}
SELECT {day}s.flow_id,{FUNNEL_COUNTS}
FROM s
LEFT JOIN message_status ms ON ms.message_id = s.message_id
LEFT JOIN done c ON c.send_id = s.id
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
WHERE 1 = 1{_flow_filter(flow_id, "s.flow_id")}
ORDER BY m.completed_at, m.message_id"""
    types: dict[str, TypeEngine[Any]] = {
        "completed_at": UTCDateTime(),
        "sent_at": UTCDateTime(),
        "seconds_to_complete": Float(),
        "response": JSONType,
    }
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
    flow_join = (
        "JOIN flow_sends s ON s.message_id = d.message_id AND s.flow_id = :flow_id"
        if flow_id is not None
        else ""
    )
    sql = f"""
SELECT {day}d.channel, d.reason_code,
  COUNT(*) AS failures,
  SUM(CASE WHEN ms.failed_after_delivery THEN 1 ELSE 0 END) AS after_delivery
FROM delivery_reports d
LEFT JOIN message_status ms ON ms.message_id = d.message_id
{flow_join}
WHERE d.kind = 'message' AND d.status = 'FAILED'
  AND ((d.event_time >= :since AND d.event_time < :until)
       OR (d.event_time IS NULL AND d.received_at >= :since AND d.received_at < :until))
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
WITH {SENDS_IN_WINDOW.format(flow=_flow_filter(flow_id, "flow_id"))},
{COMPLETED_SENDS}
SELECT s.message_id, s.flow_id, s.flow_token, s.contact_id, s.identity, s.channel,
  s.sent_time AS sent_at, ms.queued_at, ms.switching_at, ms.delivered_at, ms.read_at,
  ms.failed_at, c.completed_at, ms.status, ms.failed_after_delivery, ms.reason_code
FROM s
LEFT JOIN message_status ms ON ms.message_id = s.message_id
LEFT JOIN done c ON c.send_id = s.id
WHERE s.message_id IS NOT NULL
ORDER BY s.sent_time, s.message_id"""
    types: dict[str, TypeEngine[Any]] = {name: UTCDateTime() for name in TIMELINE_TIMES}
    types["failed_after_delivery"] = Boolean()
    return Report("timeline", TIMELINE_COLUMNS, _run(conn, sql, window, flow_id, types))


REPORTS = {"funnel": funnel, "completions": completions, "failures": failures,
           "timeline": timeline}  # fmt: skip
