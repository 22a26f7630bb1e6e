"""What the `flask` commands of every feature share: the engine, one-line database
errors, progress bars (on a terminal only), time options and number formatting."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
from sqlalchemy import Engine

from webhook.core.errors import UNAVAILABLE_ERRORS, StorageUnavailable, first_line
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
        raise click.ClickException(f"database unavailable: {err}") from None
    except UNAVAILABLE_ERRORS as err:
        raise click.ClickException(f"database unavailable: {first_line(err)}") from None


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


class TimeParam(click.ParamType[datetime]):
    """A date (its midnight, UTC) or an ISO-8601 time; without an offset, UTC."""

    name = "TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if len(text) == 10:  # a date alone: its midnight, UTC
            text += "T00:00:00Z"
        elif not text.endswith(("Z", "z")) and "+" not in text[10:] and "-" not in text[10:]:
            text += "Z"  # no offset given: UTC
        try:
            parsed = parse_time(text, param.name if param and param.name else "time")
        except ParseError:
            parsed = None
        if parsed is None:
            self.fail(f"{value!r} is not a date or ISO-8601 time", param, ctx)
        return parsed


def number(value: int) -> str:
    return f"{value:,}"
