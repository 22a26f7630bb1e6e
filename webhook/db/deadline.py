"""A per-context deadline for database waits (the web app sets one per request).

Kept apart from webhook.db.engine so that the psycopg connection class (webhook.db.psycopg_conn)
and the engine set-up can both read it without importing each other.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_deadline: ContextVar[float | None] = ContextVar("database_deadline", default=None)


def set_deadline(seconds: float | None) -> Token[float | None]:
    """Bound every PostgreSQL wait in this context to ``seconds`` from now (None: no bound)."""
    return _deadline.set(None if seconds is None else time.monotonic() + seconds)


def current_deadline() -> float | None:
    """The monotonic time this context's database waits must end by, if any."""
    return _deadline.get()


def deadline_passed() -> bool:
    """True when this context has a database deadline and it is already over."""
    deadline = _deadline.get()
    return deadline is not None and time.monotonic() >= deadline


def clear_deadline(token: Token[float | None] | None = None) -> None:
    """End the bound set by ``set_deadline``."""
    if token is not None:
        try:
            _deadline.reset(token)
            return
        except ValueError:  # set in another context (a copied one): just lift the bound
            pass
    _deadline.set(None)
