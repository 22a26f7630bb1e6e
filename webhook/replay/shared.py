"""What reprocess and rebuild share: a write transaction, and message_status folded
from the delivery history."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine

from webhook.db.engine import write_lock
from webhook.projection.rules import StatusRow, merge_status, status_of_report


@contextmanager
def transaction(engine: Engine, conn: Connection) -> Iterator[None]:
    """One write transaction on ``conn`` (SQLite: under the process-wide write lock)."""
    with write_lock(engine), conn.begin():
        yield


def fold_history(rows: Iterable[Any]) -> dict[str, StatusRow]:
    folded: dict[str, StatusRow] = {}
    for row in rows:
        status = status_of_report(row, row.received_at)
        if status is not None:
            folded[status.message_id] = merge_status(folded.get(status.message_id), status)
    return folded
