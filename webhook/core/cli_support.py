"""What the `flask` commands of every feature share: the engine, one-line database
errors, progress bars (on a terminal only), time options and number formatting."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
from sqlalchemy import Engine

from webhook.core.envvars import mask_url
from webhook.core.errors import (
    UNAVAILABLE_ERRORS,
    StorageUnavailable,
    first_line,
    is_schema_missing,
)
from webhook.core.state import state
from webhook.core.timeparse import ParseError, parse_time


def app_engine() -> Engine:
    return state().engine


@contextmanager
def database_errors() -> Iterator[None]:
    """A database that cannot be reached is one line and a non-zero exit, not a trace."""
    try:
        yield
    except StorageUnavailable as err:
        if err.cause == "schema":
            raise click.ClickException(no_schema()) from None
        raise click.ClickException(f"database unavailable: {err}") from None
    except UNAVAILABLE_ERRORS as err:
        if is_schema_missing(err):
            raise click.ClickException(no_schema()) from None
        raise click.ClickException(f"database unavailable: {first_line(err)}") from None
    except Exception as err:  # a PostgreSQL database without the tables
        if is_schema_missing(err):
            raise click.ClickException(no_schema()) from None
        raise


def no_schema() -> str:
    """The one line for a command run against a missing or unmigrated database."""
    url = state().settings.database.url
    shown = mask_url(url) if "@" in url else url
    return f"database {shown} has no schema: run `flowhooks db upgrade`"


class _Quiet:
    """Stands in for the progress bar when stderr is not a terminal (logs, pipes, tests)."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def progress_bar(length: int, label: str) -> Any:
    if not sys.stderr.isatty():
        return _Quiet()
    return click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True)


F = TypeVar("F", bound=Callable[..., Any])

_AGE = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
TIME_FORMS = "a date (2026-03-01), a time (2026-03-01T08:00:00Z) or an age (7d, 12h, 30m)"


def parse_when(value: str, now: datetime, option: str) -> datetime:
    """The one time parser of every command: a date (its midnight, UTC), an ISO-8601
    time (UTC unless it says otherwise), or an age (7d, 12h, 30m: that long before
    ``now``). A bad or out-of-range value is a usage error (exit status 2)."""
    raw = value.strip()
    age = _AGE.match(raw)
    try:
        if age:
            amount, unit = age.groups()
            return now - timedelta(**{_UNITS[unit]: int(amount)})
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            return datetime.fromisoformat(raw).replace(tzinfo=UTC)
        text = raw if raw[-1:] in ("Z", "z") or "+" in raw[10:] or "-" in raw[10:] else raw + "Z"
        parsed = parse_time(text, option)
    except (OverflowError, ValueError, ParseError):
        parsed = None
    if parsed is None:
        raise click.BadParameter(f"{value!r} is not {TIME_FORMS}, or is out of range",
                                 param_hint=option)  # fmt: skip
    return parsed


class TimeParam(click.ParamType[datetime]):
    """A command-line time: see parse_when."""

    name = "WHEN"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        option = f"--{param.name}" if param and param.name else "time"
        return parse_when(str(value), datetime.now(UTC), option)


def number(value: int) -> str:
    return f"{value:,}"


def dry_run_option(what: str) -> Callable[[F], F]:
    """`--dry-run`: ``what`` the command does instead (it writes or sends nothing)."""
    return click.option("--dry-run", is_flag=True, help=what)


def yes_option(fn: F) -> F:
    """`--yes`: do not ask for confirmation (the same flag in every command that asks)."""
    return click.option("--yes", is_flag=True, help="Do not ask for confirmation.")(fn)
