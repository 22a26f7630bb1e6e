"""Telling a database that is gone from one that refuses some rows, and describing
database errors in one line without their SQL parameters."""

from __future__ import annotations

import sys

from webhook.core.errors import (
    UNAVAILABLE_ERRORS,
    StorageUnavailable,
    cause_of,
    first_line,
    is_schema_missing,
)

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


def unavailable(err: BaseException) -> StorageUnavailable:
    """The StorageUnavailable to raise for ``err``, with its cause."""
    return StorageUnavailable(describe_error(err), cause_of(err))
