"""A completed flow's answers: ``nfm_reply.response_json`` read into a JSON object."""

from __future__ import annotations

import math
from typing import Any

from webhook.core.values import json_kind
from webhook.ingest.body import JSONError, loads_json


def parse_flow_reply(response_json: object) -> tuple[str | None, Any, str | None, str | None]:
    """Read ``nfm_reply.response_json``: (flow_token, response, raw_if_broken, error)."""
    value: Any = response_json
    if isinstance(response_json, str):
        try:
            value = loads_json(response_json)
        except JSONError as exc:
            return None, None, response_json, f"response_json is not valid JSON: {exc}"
    elif response_json is None:
        return None, None, None, "response_json is missing"
    if not isinstance(value, dict):
        return None, value, None, f"response_json is a JSON {json_kind(value)}, not an object"
    problem = unstorable(value)
    if problem is not None:  # kept losslessly as text, the same on every database
        raw = response_json if isinstance(response_json, str) else None
        token = value.get("flow_token")
        return (
            (token if isinstance(token, str) and token else None),
            None,
            raw,
            (
                f"response_json holds {problem}, which the database cannot store as JSON; "
                "kept as text in response_raw"
            ),
        )
    token = value.get("flow_token")
    if token is None or token == "":
        return None, value, None, "response_json has no flow_token"
    if not isinstance(token, str):
        return str(token), value, None, f"flow_token is a {json_kind(token)}, not a string"
    return token, value, None, None


def unstorable(value: Any) -> str | None:
    """What in a JSON value no database here can store as JSON, if anything: a number
    beyond a double's range (read as infinity) or a NUL character (PostgreSQL)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return "a number beyond a double's range"
        if isinstance(node, str) and "\x00" in node:
            return "a NUL character"
        if isinstance(node, dict):
            if any("\x00" in key for key in node):
                return "a NUL character"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None
