"""Reading fields of a callback payload, and the one normaliser of phone numbers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from webhook.core.timeparse import ParseError
from webhook.core.values import json_kind

# Channels whose identity is a phone number (MSISDN): normalised to digits, no "+".
MSISDN_CHANNELS = frozenset({"WHATSAPP", "SMS", "MMS", "VIBERBM", "RCS"})


def obj_field(
    parent: Mapping[str, Any], key: str, path: str, required: bool = False
) -> dict[str, Any]:
    """``parent[key]`` as an object ({} when absent); ParseError naming ``path`` otherwise."""
    value = parent.get(key)
    if value is None:
        if required:
            raise ParseError(f"{path}.{key}: required object is missing")
        return {}
    if not isinstance(value, dict):
        raise ParseError(f"{path}.{key}: expected an object, got {json_kind(value)}")
    return value


def str_field(parent: Mapping[str, Any], key: str, path: str, required: bool = False) -> str | None:
    """``parent[key]`` as text (numbers too; None when absent or empty unless required)."""
    value = parent.get(key)
    if value is None or (value == "" and not required):
        if required:
            raise ParseError(f"{path}.{key}: required string is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ParseError(f"{path}.{key}: expected a string, got {json_kind(value)}")
    text = str(value)
    if required and not text:
        raise ParseError(f"{path}.{key}: required string is empty")
    return text


def normalize_identity(channel: str | None, identity: str | None) -> str | None:
    """Phone-number identities as digits without '+', spaces or dashes."""
    if identity is None:
        return None
    if channel in MSISDN_CHANNELS:
        stripped = re.sub(r"[\s\-().]", "", identity)
        if stripped.startswith("+"):
            stripped = stripped[1:]
        if stripped.startswith("00") and stripped[2:].isdigit():
            stripped = stripped[2:]
        return stripped or None
    return identity


def identity_of(parent: Mapping[str, Any], path: str) -> tuple[str | None, str | None]:
    """(channel, normalised identity) of ``parent.channel_identity``."""
    ci = obj_field(parent, "channel_identity", path)
    channel = str_field(ci, "channel", f"{path}.channel_identity")
    return channel, normalize_identity(
        channel, str_field(ci, "identity", f"{path}.channel_identity")
    )
