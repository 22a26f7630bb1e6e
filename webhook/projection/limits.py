"""Column lengths, checked before writing, so SQLite and PostgreSQL agree on every event."""

from __future__ import annotations

from sqlalchemy import String

from webhook.db.models import Base
from webhook.projection.rules import PROJECTIONS, Parsed, failed, projection_of

# Text columns with a length (VARCHAR(n)): SQLite would store a longer value, PostgreSQL
# refuse it. Checked here, so both databases end the same way: the event fails, saying so.
_LIMITS: dict[str, dict[str, int]] = {
    name: {c.name: c.type.length for c in t.columns if isinstance(c.type, String) and c.type.length}
    for name, t in ((p.table, Base.metadata.tables[p.table]) for p in PROJECTIONS)
}


def within_limits(event: Parsed) -> Parsed:
    """The event, or the event failed if a value is longer than its column allows."""
    for r in event.records:
        table = projection_of(r).table
        for column, limit in _LIMITS[table].items():
            value = getattr(r, column, None)
            if isinstance(value, str) and len(value) > limit:
                return failed(event, f"{table}.{column} is longer than {limit} characters "
                                     f"({len(value)})")  # fmt: skip
    return event
