"""Telling a database that is gone from one that refuses some rows, and describing
database errors in one line without their SQL parameters."""

from __future__ import annotations

import sys

from webhook.core.errors import UNAVAILABLE_ERRORS, StorageUnavailable, first_line

__all__ = [
    "UNAVAILABLE_ERRORS",
    "StorageUnavailable",
    "cause_of",
    "describe_error",
    "is_schema_missing",
    "is_unavailable",
    "unavailable",
]


def is_unavailable(err: BaseException) -> bool:
    """The database is gone (stop, retry later), as opposed to refusing some rows.

    Code that talks to psycopg directly (COPY, binary reads) sees its errors unwrapped.
    """
    if isinstance(err, UNAVAILABLE_ERRORS):
        return True
    psycopg = sys.modules.get("psycopg")  # never imported on SQLite just to ask
    return psycopg is not None and isinstance(
        err, psycopg.OperationalError | psycopg.InterfaceError
    )


def describe_error(err: BaseException) -> str:
    """One line naming an error, never its SQL parameters (they may hold personal data)."""
    orig = getattr(err, "orig", None) or err
    # PostgreSQL text cannot hold NUL; the error must be storable whatever caused it.
    return f"{type(orig).__name__}: {first_line(orig)}"[:500].replace("\x00", "")


# SQLSTATEs and SQLite messages that mean "the tables are not there": not migrated.
_NO_SCHEMA_STATES = {"42P01", "42703"}  # undefined table, undefined column
_NO_SCHEMA_TEXT = ("no such table", "no such column")


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


def unavailable(err: BaseException) -> StorageUnavailable:
    """The StorageUnavailable to raise for ``err``, with its cause."""
    return StorageUnavailable(describe_error(err), cause_of(err))
