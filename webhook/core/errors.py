"""Errors every layer may raise or catch."""

from __future__ import annotations


class StorageUnavailable(Exception):
    """The database could not be written; nothing was stored. Retry later."""
