"""reporting views and the indexes their lookups need

Revision ID: 0003_reporting
Revises: 0002_source_event_ix
Create Date: 2026-11-21 10:30:00

Views for analysts (see docs/reporting.md): flow_completions, flow_funnel_daily,
flow_funnel, delivery_failures, message_timeline. The SQL is written out here, not
imported, so that this revision keeps creating the same views whatever the code
becomes later. Day truncation and durations differ between SQLite and PostgreSQL;
everything else is the same text on both.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_reporting"
down_revision: str | None = "0002_source_event_ix"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Dependants first: each view is dropped before the views it is built on.
VIEWS = (
    "message_timeline",
    "delivery_failures",
    "flow_funnel",
    "flow_funnel_daily",
    "flow_completions",
)

SENT_TIME = "COALESCE({t}.sent_at, {t}.submitted_at)"


def _day(expr: str, dialect: str) -> str:
    """The UTC calendar day of a timestamp (DATE on PostgreSQL, 'YYYY-MM-DD' on SQLite)."""
    if dialect == "postgresql":
        return f"CAST(({expr}) AT TIME ZONE 'UTC' AS DATE)"
    return f"date({expr})"


def _seconds(start: str, end: str, dialect: str) -> str:
    """Seconds from start to end, exact to the microsecond, as a double."""
    if dialect == "postgresql":
        return f"CAST(EXTRACT(EPOCH FROM ({end}) - ({start})) AS DOUBLE PRECISION)"
    # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds plus the microsecond digits.
    whole = f"(CAST(strftime('%s', {end}) AS INTEGER) - CAST(strftime('%s', {start}) AS INTEGER))"
    micro = f"(CAST(substr({end}, 21, 6) AS INTEGER) - CAST(substr({start}, 21, 6) AS INTEGER))"
    return f"(({whole}) * 1000000 + {micro}) / 1000000.0"


# The send a completion answers: the send whose message_id the reply points at; else the
# latest accepted send with the same flow_token sent at or before the completion.
MATCHED_SEND = """COALESCE(
        rs.id,
        (SELECT ts.id FROM flow_sends ts
          WHERE ts.flow_token = fr.flow_token
            AND ts.message_id IS NOT NULL
            AND COALESCE(ts.sent_at, ts.submitted_at) <= fr.completed_at
          ORDER BY COALESCE(ts.sent_at, ts.submitted_at) DESC, ts.id DESC
          LIMIT 1)
      )"""


def flow_completions(dialect: str) -> str:
    sent = SENT_TIME.format(t="s")
    return f"""
CREATE VIEW flow_completions AS
SELECT
  m.id AS completion_id,
  m.message_id,
  m.flow_token,
  s.flow_id,
  s.id AS send_id,
  s.message_id AS send_message_id,
  CASE WHEN s.id IS NULL THEN NULL
       WHEN s.message_id = m.reply_to_message_id THEN 'reply_to'
       ELSE 'flow_token' END AS matched_by,
  COALESCE(m.contact_id, s.contact_id) AS contact_id,
  COALESCE(m.identity, s.identity) AS identity,
  COALESCE(m.channel, s.channel) AS channel,
  {sent} AS sent_at,
  m.completed_at,
  {_seconds(sent, "m.completed_at", dialect)} AS seconds_to_complete,
  m.response,
  m.parse_error
FROM (
  SELECT fr.id, fr.message_id, fr.flow_token, fr.reply_to_message_id, fr.contact_id,
         fr.identity, fr.channel, fr.completed_at, fr.response, fr.parse_error,
         {MATCHED_SEND} AS send_id
  FROM flow_responses fr
  LEFT JOIN flow_sends rs ON rs.message_id = fr.reply_to_message_id
) m
LEFT JOIN flow_sends s ON s.id = m.send_id
"""


def _funnel_counts(completed: str) -> str:
    # READ implies delivered (some channels skip DELIVERED); a message that reached the
    # channel but whose QUEUED_ON_CHANNEL report was lost still counts as queued.
    return f"""
  SUM(CASE WHEN s.send_status <> 'rejected' THEN 1 ELSE 0 END) AS sent,
  SUM(CASE WHEN s.send_status = 'rejected' THEN 1 ELSE 0 END) AS rejected,
  SUM(CASE WHEN ms.queued_at IS NOT NULL OR ms.delivered_at IS NOT NULL
            OR ms.read_at IS NOT NULL THEN 1 ELSE 0 END) AS queued,
  SUM(CASE WHEN ms.delivered_at IS NOT NULL OR ms.read_at IS NOT NULL
           THEN 1 ELSE 0 END) AS delivered,
  SUM(CASE WHEN ms.read_at IS NOT NULL THEN 1 ELSE 0 END) AS read,
  SUM(CASE WHEN {completed} THEN 1 ELSE 0 END) AS completed,
  SUM(CASE WHEN ms.status = 'FAILED' THEN 1 ELSE 0 END) AS failed,
  SUM(CASE WHEN ms.failed_after_delivery THEN 1 ELSE 0 END) AS failed_after_delivery,
  CASE WHEN SUM(CASE WHEN s.send_status <> 'rejected' THEN 1 ELSE 0 END) > 0
       THEN ROUND(SUM(CASE WHEN {completed} THEN 1 ELSE 0 END) * 1.0
                  / SUM(CASE WHEN s.send_status <> 'rejected' THEN 1 ELSE 0 END), 4)
  END AS completion_rate"""


def flow_funnel(dialect: str, daily: bool) -> str:
    name = "flow_funnel_daily" if daily else "flow_funnel"
    day = f"{_day(SENT_TIME.format(t='s'), dialect)} AS day,\n  " if daily else ""
    group = "1, 2" if daily else "s.flow_id"
    return f"""
CREATE VIEW {name} AS
SELECT
  {day}s.flow_id,{_funnel_counts("c.send_id IS NOT NULL")}
FROM flow_sends s
LEFT JOIN message_status ms ON ms.message_id = s.message_id
LEFT JOIN (SELECT DISTINCT send_id FROM flow_completions WHERE send_id IS NOT NULL) c
  ON c.send_id = s.id
GROUP BY {group}
"""


def delivery_failures(dialect: str) -> str:
    return f"""
CREATE VIEW delivery_failures AS
SELECT
  {_day("COALESCE(d.event_time, d.received_at)", dialect)} AS day,
  s.flow_id,
  d.channel,
  d.reason_code,
  COUNT(*) AS failures,
  SUM(CASE WHEN ms.failed_after_delivery THEN 1 ELSE 0 END) AS after_delivery
FROM delivery_reports d
LEFT JOIN flow_sends s ON s.message_id = d.message_id
LEFT JOIN message_status ms ON ms.message_id = d.message_id
WHERE d.kind = 'message' AND d.status = 'FAILED'
GROUP BY 1, 2, 3, 4
"""


def message_timeline(dialect: str) -> str:
    return f"""
CREATE VIEW message_timeline AS
SELECT
  s.message_id, s.flow_id, s.flow_token, s.contact_id, s.identity, s.channel,
  {SENT_TIME.format(t="s")} AS sent_at,
  ms.queued_at, ms.switching_at, ms.delivered_at, ms.read_at, ms.failed_at,
  c.completed_at,
  ms.status, ms.failed_after_delivery, ms.reason_code
FROM flow_sends s
LEFT JOIN message_status ms ON ms.message_id = s.message_id
LEFT JOIN (SELECT send_id, MIN(completed_at) AS completed_at
             FROM flow_completions WHERE send_id IS NOT NULL GROUP BY send_id) c
  ON c.send_id = s.id
WHERE s.message_id IS NOT NULL
UNION ALL
SELECT
  ms.message_id, NULL, NULL, ms.contact_id, NULL, NULL,
  NULL,
  ms.queued_at, ms.switching_at, ms.delivered_at, ms.read_at, ms.failed_at,
  NULL,
  ms.status, ms.failed_after_delivery, ms.reason_code
FROM message_status ms
WHERE NOT EXISTS (SELECT 1 FROM flow_sends x WHERE x.message_id = ms.message_id)
"""


def upgrade() -> None:
    with op.batch_alter_table("flow_sends", schema=None) as batch_op:
        batch_op.create_index("ix_flow_sends_sent_at", ["sent_at"], unique=False)
        batch_op.create_index("ix_flow_sends_submitted_at", ["submitted_at"], unique=False)
    with op.batch_alter_table("delivery_reports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_delivery_reports_status_received_at", ["status", "received_at"], unique=False
        )

    dialect = op.get_bind().dialect.name
    for sql in (
        flow_completions(dialect),
        flow_funnel(dialect, daily=True),
        flow_funnel(dialect, daily=False),
        delivery_failures(dialect),
        message_timeline(dialect),
    ):
        op.execute(sql)


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("delivery_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_reports_status_received_at")
    with op.batch_alter_table("flow_sends", schema=None) as batch_op:
        batch_op.drop_index("ix_flow_sends_submitted_at")
        batch_op.drop_index("ix_flow_sends_sent_at")
