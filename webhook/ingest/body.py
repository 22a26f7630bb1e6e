"""Reading a callback body as JSON: one loader for every stored body (ingest, replay,
erasure, export, forward), with the same fallbacks everywhere."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from webhook.core.values import json_kind


class InvalidBody(ValueError):
    """The body is not a JSON object (answered 400, nothing stored)."""


class JSONError(ValueError):
    """Text that is not JSON (RFC 8259), or nested deeper than we parse (about 1000)."""


# 19 digits in a row: a number orjson may round (it reads integers beyond 64 bits as floats).
_LONG_DIGITS = re.compile(r"\d{19}")
_LONG_DIGITS_B = re.compile(rb"\d{19}")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A surrogate, raw or as an escape: the parsed value may then hold a lone one.
_MAY_HOLD_SURROGATE = re.compile("[\ud800-\udfff]|\\\\u[dD][89a-fA-F]")


def loads_json(data: bytes | str) -> Any:
    """Parse JSON text; raise JSONError unless it is JSON as RFC 8259 defines it.

    orjson does the work. Where it refuses or bends text the JSON grammar allows, the
    text is parsed again with the standard library, so an authentic callback is never
    refused for being unusual: integers beyond 64 bits stay exact (orjson rounds them
    to floats), numbers beyond a double's range read as infinity, a lone surrogate
    escape (``"\\ud83d"``, text cut mid-emoji) becomes U+FFFD, and a leading byte
    order mark is ignored (RFC 8259 section 8.1 allows both). What JSON forbids is
    still refused: invalid UTF-8, NaN/Infinity literals, control characters inside
    strings, trailing data.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            return _stdlib_loads(data)
        except JSONError:
            raise JSONError(str(exc)) from None
    pattern = _LONG_DIGITS_B if isinstance(data, bytes) else _LONG_DIGITS
    if pattern.search(data):  # type: ignore[arg-type]  # bytes pattern for bytes, str for str
        return _stdlib_loads(data)
    return value


def _refuse_constant(name: str) -> Any:
    raise JSONError(f"{name} is not a JSON value")


def _exact_int(digits: str) -> int | float:
    try:
        return int(digits)
    except ValueError:  # beyond Python's int-from-text digit limit: read as +-infinity
        return float(digits)


def _stdlib_loads(data: bytes | str) -> Any:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(
            text.removeprefix("\ufeff"), parse_constant=_refuse_constant, parse_int=_exact_int
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError too
        raise JSONError(str(exc)) from None
    return _scrub(value) if _MAY_HOLD_SURROGATE.search(text) else value


def _scrub(value: Any) -> Any:
    """Replace lone surrogates (not Unicode, so no database can store them) with U+FFFD.

    Iterative, in place: the value may be nested as deep as the parser allows.
    """
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, str):
                    node[index] = _SURROGATE.sub("\ufffd", item)
                elif isinstance(item, list | dict):
                    stack.append(item)
        elif isinstance(node, dict):
            pairs = list(node.items())
            node.clear()
            for key, item in pairs:
                if isinstance(item, str):
                    item = _SURROGATE.sub("\ufffd", item)
                elif isinstance(item, list | dict):
                    stack.append(item)
                node[_SURROGATE.sub("\ufffd", key)] = item
    return value


def load_body(body: bytes) -> dict[str, Any]:
    """Parse a callback body; raise InvalidBody unless it is a JSON object."""
    try:
        value = loads_json(body)
    except JSONError as exc:
        raise InvalidBody(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidBody(f"body must be a JSON object, got {json_kind(value)}")
    return value
