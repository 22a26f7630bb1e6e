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


# SQLSTATEs and SQLite messages that mean "the tables are not there": not migrated.
_NO_SCHEMA_STATES = {"42P01", "42703"}  # undefined table, undefined column
_NO_SCHEMA_TEXT = ("no such table", "no such column", "unable to open database file")


def is_schema_missing(err: BaseException) -> bool:
    """The database answers but has no (or an older) schema: run the migrations."""
    orig = getattr(err, "orig", None) or err
    if getattr(orig, "sqlstate", None) in _NO_SCHEMA_STATES:
        return True
    return any(text in str(orig) for text in _NO_SCHEMA_TEXT)


def cause_of(err: BaseException) -> str:
    """Why the database could not be used, in one word: schema, auth, timeout, refused,
    or other (for logs and metrics; never the message itself)."""
    if is_schema_missing(err):
        return "schema"
    orig = getattr(err, "orig", None) or err
    state = getattr(orig, "sqlstate", None) or ""
    text = str(orig).lower()
    if state.startswith("28") or "authentication failed" in text or "password" in text:
        return "auth"
    if "timeout" in text or "timed out" in text or "deadline" in text:
        return "timeout"
    if "refused" in text or "could not connect" in text or "no route" in text:
        return "refused"
    return "other"
