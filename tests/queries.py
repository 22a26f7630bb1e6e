"""Questions a business asks of the data, to check that retention and erasure keep the
answers the same."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select, text

from webhook.db.models import Base

FUNNEL = text("""
    SELECT s.flow_id,
           COUNT(DISTINCT s.id) AS sends,
           COUNT(DISTINCT s.contact_id) AS contacts,
           COUNT(DISTINCT CASE WHEN ms.delivered_at IS NOT NULL OR ms.read_at IS NOT NULL
                               THEN s.id END) AS delivered,
           COUNT(DISTINCT CASE WHEN ms.read_at IS NOT NULL THEN s.id END) AS read,
           COUNT(DISTINCT CASE WHEN ms.status = 'FAILED' THEN s.id END) AS failed,
           COUNT(DISTINCT fr.id) AS completions,
           COUNT(DISTINCT fr.contact_id) AS completing_contacts
    FROM flow_sends s
    LEFT JOIN message_status ms ON ms.message_id = s.message_id
    LEFT JOIN flow_responses fr
           ON fr.reply_to_message_id = s.message_id AND fr.flow_token = s.flow_token
    GROUP BY s.flow_id
    ORDER BY s.flow_id
""")


def funnel(engine: Engine) -> list[tuple[Any, ...]]:
    """Per flow: sends, contacts, delivered, read, failed, completions, completing contacts."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(FUNNEL)]


def status_counts(engine: Engine) -> list[tuple[Any, ...]]:
    """How many messages are in each current status, and per failure reason."""
    query = text(
        "SELECT status, reason_code, COUNT(*) FROM message_status "
        "GROUP BY status, reason_code ORDER BY status, reason_code"
    )
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


def table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: int(conn.execute(text(f"SELECT COUNT(*) FROM {name}")).scalar_one())
            for name in sorted(Base.metadata.tables)
        }


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (for before/after comparisons)."""
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for name, table in sorted(Base.metadata.tables.items()):
            key = list(table.primary_key.columns)
            rows = conn.execute(select(table).order_by(*key)).all()
            out[name] = [dict(row._mapping) for row in rows]
    return out
