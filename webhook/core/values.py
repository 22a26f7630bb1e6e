"""Small facts about parsed JSON values, for error messages."""

from __future__ import annotations


def json_kind(value: object) -> str:
    """The JSON type of a parsed value, for error messages."""
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )
