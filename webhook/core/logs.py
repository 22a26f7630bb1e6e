"""Logging: one line per record, JSON or text, level and format from the environment.

LOG_FORMAT=json writes one JSON object per line (for log shippers), text writes
`time LEVEL logger message key=value ...`, and auto (the default) picks text when
stderr is a terminal and JSON otherwise. Structured fields travel in
``extra={"fields": {...}}``. Callers put ids, codes, counts and timings there;
never a secret, a signature, a body or an answer.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from webhook.core.settings import LOG_FORMATS as FORMATS
from webhook.core.settings import ConfigError

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_BASE_KEYS = ("ts", "level", "logger", "msg")


def _timestamp(record: logging.LogRecord) -> str:
    when = datetime.fromtimestamp(record.created, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            doc[key if key not in _BASE_KEYS else f"field_{key}"] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(text: str) -> str:
    """Control characters as escapes (``\\n``, ``\\x1b``): a value can never start a
    forged log line or drive a terminal. JSON lines escape them by themselves."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message key=value ...`, for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        message = _escape(record.getMessage())
        parts = [_timestamp(record), f"{record.levelname:<7}", record.name, message]
        parts += [f"{key}={_escape(str(value))}" for key, value in _fields(record).items()
                  if value is not None]  # fmt: skip
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class StderrHandler(logging.Handler):
    """Write each record to the *current* sys.stderr in one write (lines never interleave)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def pick_format(log_format: str, isatty: bool) -> str:
    """Resolve "auto" to text on a terminal and JSON otherwise."""
    if log_format not in FORMATS:
        raise ConfigError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, got {log_format!r}")
    if log_format == "auto":
        return "text" if isatty else "json"
    return log_format


def configure_logging(level: str, log_format: str, isatty: bool | None = None) -> str:
    """Send the root logger to stderr in the chosen format; safe to call again."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    if isatty is None:
        isatty = sys.stderr.isatty()
    chosen = pick_format(log_format, isatty)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
    # Alembic narrates every migration context at INFO; keep that for DEBUG.
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))
    # httpx logs every request at INFO; our own lines already say what was sent.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    return chosen


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-Id if it is a plain token, else a fresh one."""
    if header and _REQUEST_ID_RE.match(header):
        return header
    return uuid.uuid4().hex


callback_log = logging.getLogger("webhook.callback")
flow_log = logging.getLogger("webhook.flow_exchange")


def log_callback(
    *,
    request_id: str | None,
    trigger: str,
    outcome: str,
    http_status: int,
    duration_ms: float,
    status: str | None = None,
    event_id: int | None = None,
    error: str | None = None,
    cause: str | None = None,
) -> None:
    """One line per callback: ids, outcome and timing; never the body or a header.

    ``cause``: why the database could not store it (refused, timeout, auth, schema).
    """
    level = logging.INFO
    if http_status >= 500:
        level = logging.ERROR
    elif http_status >= 400 or status == "failed":
        level = logging.WARNING
    if not callback_log.isEnabledFor(level):
        return
    fields: dict[str, Any] = {
        "request_id": request_id,
        "trigger": trigger,
        "outcome": outcome,
        "status": status,
        "event_id": event_id,
        "http_status": http_status,
        "duration_ms": round(duration_ms, 3),
    }
    if error:
        fields["error"] = error
    if cause:
        fields["cause"] = cause
    callback_log.log(level, "callback", extra={"fields": fields})


def log_flow_exchange(
    *,
    request_id: str | None,
    action: str,
    http_status: int,
    duration_ms: float,
    screen: str | None = None,
    error: str | None = None,
) -> None:
    """One line per Flows data endpoint request; never the flow token, data or answer.

    ``action`` should already be a label from metrics.flow_action_label, ``screen``
    a screen id of the flow, ``error`` a short code (not an exception message).
    """
    level = logging.ERROR if http_status >= 500 else logging.INFO
    if http_status >= 400 and http_status < 500:
        level = logging.WARNING
    fields: dict[str, Any] = {
        "request_id": request_id,
        "action": action,
        "screen": screen[:64] if screen else None,
        "http_status": http_status,
        "duration_ms": round(duration_ms, 3),
    }
    if error:
        fields["error"] = error[:64]
    flow_log.log(level, "flow_exchange", extra={"fields": fields})


def token_ref(token: object) -> str:
    """What a log line says instead of a flow token: a short hash, the same for the same
    token (to correlate lines), which cannot be turned back into the token."""
    if not isinstance(token, str) or not token:
        return "-"
    return "t:" + hashlib.sha256(token.encode()).hexdigest()[:12]
