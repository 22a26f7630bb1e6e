"""SQL building blocks of the report queries, and the planner settings they run with.

Text SQL that runs on SQLite and PostgreSQL alike; where the two differ (days,
durations) a function takes the dialect name. Aliases: fr = flow_responses, and the
fragments say which others they expect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text

# ---------------------------------------------------------------- planner settings

# Transaction-local PostgreSQL settings for report queries (see tune() and
# docs/performance.md#reports for what each one saves).
REPORT_SETTINGS = {
    # The queries take milliseconds: compiling them with JIT costs more than it saves.
    "jit": "off",
    # Their lookups hit cached index pages: price random reads as on an SSD (1.1, not
    # the spinning-disk 4), so joins from a window's rows use the indexes.
    "random_page_cost": "1.1",
    # Windows differ in size by orders of magnitude: plan each query for its own.
    "plan_cache_mode": "force_custom_plan",
    # Worker start-up costs more than it saves on window-sized work, and takes cores
    # from the callback endpoint sharing the server.
    "max_parallel_workers_per_gather": "0",
}
# Joins that look up at most one row per row of the window, by a unique key.
LOOKUP_JOINS = {"enable_hashjoin": "off", "enable_mergejoin": "off"}


def _set(conn: Connection, settings: dict[str, str]) -> None:
    names = list(settings)
    calls = ", ".join(f"set_config(:n{i}, :v{i}, true)" for i in range(len(names)))
    params = {f"n{i}": n for i, n in enumerate(names)}
    params.update({f"v{i}": settings[n] for i, n in enumerate(names)})
    conn.execute(text(f"SELECT {calls}"), params)


def tune(conn: Connection) -> None:
    """Set REPORT_SETTINGS for the current transaction (PostgreSQL; nothing elsewhere)."""
    if conn.dialect.name == "postgresql":
        _set(conn, REPORT_SETTINGS)


@contextmanager
def lookup_joins(conn: Connection) -> Iterator[None]:
    """Within the block, join by index lookups only (PostgreSQL; nothing elsewhere).

    For a listing that fetches one send per completion, the planner otherwise prefers
    hashing every send ever made to a few thousand index lookups.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    names = list(LOOKUP_JOINS)
    current = conn.execute(
        text("SELECT " + ", ".join(f"current_setting(:n{i})" for i in range(len(names)))),
        {f"n{i}": n for i, n in enumerate(names)},
    ).one()
    _set(conn, LOOKUP_JOINS)
    try:
        yield
    finally:
        _set(conn, dict(zip(names, current, strict=True)))


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


# The latest accepted send with the completion's flow_token, sent at or before it
# (fr: flow_responses). Used when the completion's reply_to names no send of ours.
TOKEN_MATCH = """(SELECT ts.id FROM flow_sends ts
        WHERE ts.flow_token = fr.flow_token
          AND ts.message_id IS NOT NULL
          AND COALESCE(ts.sent_at, ts.submitted_at) <= fr.completed_at
        ORDER BY COALESCE(ts.sent_at, ts.submitted_at) DESC, ts.id DESC
        LIMIT 1)"""
# The send a completion answers (rs: the send whose message_id its reply_to names).
MATCHED_SEND = f"COALESCE(rs.id, {TOKEN_MATCH})"


def in_window(a: str, flow_id: str | None) -> str:
    """Sends (alias a) of the window; each branch can use its own index (sent_at, submitted_at)."""
    return (
        f"(({a}.sent_at >= :since AND {a}.sent_at < :until)"
        f" OR ({a}.sent_at IS NULL AND {a}.submitted_at >= :since"
        f" AND {a}.submitted_at < :until)){flow_filter(flow_id, f'{a}.flow_id')}"
    )


def token_completions(flow_id: str | None) -> str:
    """(send_id, completed_at) of completions matched by flow_token to sends of the window.

    Only completions whose reply_to names no send of ours fall back to the token. A
    completion can only be matched to a send made before it, so it is no older than
    the window. Most completions reply to the very send that carries their token, which
    the join rules out; the few left are checked one by one, by a scalar subquery that
    names w so that it runs after the join, not on every completion (x.id <> w.id holds
    anyway once reply_to <> w.message_id). A completion may come out more than once
    (a token shared by several sends); callers take DISTINCT or MIN.
    """
    return f"""(
  SELECT {TOKEN_MATCH} AS send_id, fr.completed_at
  FROM flow_sends w
  JOIN flow_responses fr ON fr.flow_token = w.flow_token
  WHERE {in_window("w", flow_id)} AND w.message_id IS NOT NULL
    AND fr.completed_at >= :since
    AND (fr.reply_to_message_id IS NULL OR fr.reply_to_message_id <> w.message_id)
    AND (SELECT x.id FROM flow_sends x
          WHERE x.message_id = fr.reply_to_message_id AND x.id <> w.id) IS NULL
)"""


FUNNEL_COUNTS = """
  SUM(CASE WHEN s.send_status <> 'rejected' THEN 1 ELSE 0 END) AS sent,
  SUM(CASE WHEN s.send_status = 'rejected' THEN 1 ELSE 0 END) AS rejected,
  SUM(CASE WHEN ms.queued_at IS NOT NULL OR ms.delivered_at IS NOT NULL
            OR ms.read_at IS NOT NULL THEN 1 ELSE 0 END) AS queued,
  SUM(CASE WHEN ms.delivered_at IS NOT NULL OR ms.read_at IS NOT NULL
           THEN 1 ELSE 0 END) AS delivered,
  SUM(CASE WHEN ms.read_at IS NOT NULL THEN 1 ELSE 0 END) AS read,
  SUM(CASE WHEN s.message_id IN (SELECT reply_to_message_id FROM flow_responses)
            OR t.send_id IS NOT NULL THEN 1 ELSE 0 END) AS completed,
  SUM(CASE WHEN ms.status = 'FAILED' THEN 1 ELSE 0 END) AS failed,
  SUM(CASE WHEN ms.failed_after_delivery THEN 1 ELSE 0 END) AS failed_after_delivery"""


def flow_filter(flow_id: str | None, column: str) -> str:
    return f" AND {column} = :flow_id" if flow_id is not None else ""
