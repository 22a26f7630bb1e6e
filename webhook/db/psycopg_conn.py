"""The psycopg side of webhook.db.engine: connections whose waits end at the context's deadline.

Imported by ``db.make_engine`` for a PostgreSQL engine only, so that a service on
SQLite never imports psycopg (about 10 MB per process).
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen

from webhook.db.deadline import current_deadline

RV = TypeVar("RV")


class DeadlineTimeout(psycopg.OperationalError):
    """The server did not answer before the deadline; the connection was closed."""


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose waits for the server end at the context's deadline.

    A query cut short leaves the protocol mid-message, so the connection is closed:
    SQLAlchemy then sees a disconnect, drops it from the pool and connects afresh.
    """

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        deadline = current_deadline()
        if deadline is None or timeout is not None:
            return super().wait(gen, interval=interval, timeout=timeout)
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            return super().wait(gen, interval=interval, timeout=remaining)
        except psycopg.OperationalError:
            if time.monotonic() < deadline:
                raise
            self.close()
            raise DeadlineTimeout(
                f"the database did not answer within the deadline ({remaining:.1f} s)"
            ) from None
