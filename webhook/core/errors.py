"""Errors every layer may raise or catch, and the one way to say an error in one line."""

from __future__ import annotations

from sqlalchemy import exc

# Database errors that mean "the database is not there right now", as opposed to "this
# row is bad" (webhook.db.errors.is_unavailable also knows psycopg's own).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.DisconnectionError,
    exc.TimeoutError,
    exc.ResourceClosedError,
)


class StorageUnavailable(Exception):
    """The database could not be written; nothing was stored. Retry later.

    ``cause`` says why, in a word the logs carry: refused, timeout, auth, schema, other.
    """

    def __init__(self, message: str, cause: str = "other") -> None:
        super().__init__(message)
        self.cause = cause


def first_line(err: BaseException) -> str:
    """An error in one line: the first line of its message, else its type's name.

    A database error wrapped by SQLAlchemy is described by the driver's own error
    (``orig``), without the wrapper's SQL statement and parameters.
    """
    orig = getattr(err, "orig", None)
    if isinstance(orig, BaseException):
        err = orig
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
