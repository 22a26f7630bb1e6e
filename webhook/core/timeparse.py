"""ISO-8601 timestamps as Sinch sends them (0 to 9 fractional digits) -> aware UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from webhook.core.values import json_kind


class ParseError(ValueError):
    """A known trigger whose payload has a shape we cannot read."""


_TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:?\d{2})?$"
)


def parse_time(value: object, field: str = "time") -> datetime | None:
    """Parse an ISO-8601 timestamp with 0-9 fractional digits into aware UTC."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ParseError(f"{field}: expected a timestamp string, got {json_kind(value)}")
    m = _TIME_RE.match(value.strip())
    if not m:
        raise ParseError(f"{field}: not an ISO-8601 timestamp: {value[:40]!r}")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        tzinfo: timezone = UTC
        if tz and tz not in {"Z", "z"}:
            sign = 1 if tz[0] == "+" else -1
            digits = tz[1:].replace(":", "")
            tzinfo = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
        parsed = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo
        )
        # Year 1 or 9999 with an offset falls outside what datetime can hold in UTC.
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # day 31 of February, offset +99:00, ...
        raise ParseError(f"{field}: {exc}: {value[:40]!r}") from None


def lenient_time(value: object) -> datetime | None:
    """parse_time for envelope fields: a bad value is dropped, never fatal."""
    try:
        return parse_time(value)
    except ParseError:
        return None
