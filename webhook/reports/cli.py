"""`flask report funnel|completions|failures|timeline`: reports on a time window."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import click
from sqlalchemy import Connection, Engine, exc

from webhook.core.cli import report
from webhook.core.cli_support import database_errors, parse_when
from webhook.core.errors import first_line
from webhook.core.state import state
from webhook.reports import queries as reports
from webhook.reports.sql import tune

DEFAULT_DAYS = 30
FORMATS = ("table", "csv", "json")
TABLE_CELL_LIMIT = 60


# ---------------------------------------------------------------- options


def make_window(
    since: str | None, until: str | None, now: datetime | None = None
) -> reports.Window:
    """The [since, until) window: until defaults to now, since to DEFAULT_DAYS before until."""
    now = now or datetime.now(UTC)
    end = parse_when(until, now, "--until") if until else now
    start = parse_when(since, now, "--since") if since else end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise click.UsageError(f"--since ({_iso(start)}) must be before --until ({_iso(end)})")
    return reports.Window(start, end)


def _remember_raw(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta["raw_csv"] = value
    return value


def window_options(fn: Callable[..., None]) -> Callable[..., None]:
    decorators = [
        click.option("--since", metavar="WHEN",
                     help="Start (inclusive): 2026-03-01, 2026-03-01T08:00:00Z or 7d "
                          "(ago). Default: 30 days before --until."),
        click.option("--until", metavar="WHEN",
                     help="End (exclusive), same forms. Default: now."),
        click.option("--flow-id", help="Only this flow_id."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="table",
                     show_default=True, help="Aligned table, CSV or JSON."),
        click.option("--raw-csv", is_flag=True, expose_value=False, callback=_remember_raw,
                     help="CSV cells exactly as stored: no quote put before a leading "
                          "= + - @ TAB or CR (see docs/reporting.md)."),
    ]  # fmt: skip
    for decorate in reversed(decorators):
        fn = decorate(fn)
    return fn


# ---------------------------------------------------------------- rendering


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def plain(value: Any) -> Any:
    """A value as JSON would carry it: times as ISO-8601 UTC strings."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def cell(value: Any) -> str:
    """A value as one CSV cell: text as is, everything else as JSON, NULL empty."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if value is None:
        return ""
    if kind is int:  # the common cases first: reports can run to many thousand rows
        return str(value)
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    # Keys sorted: JSONB keeps object keys in its own order, SQLite in the order received.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def key_order(value: Any) -> Any:
    """JSON with every object's keys sorted, so both databases print the same document."""
    if isinstance(value, dict):
        return {k: key_order(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [key_order(v) for v in value]
    return value


# Characters that would drive a terminal (escape sequences, carriage returns, bells):
# shown as U+FFFD in tables, which are for people at a terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str, raw: bool = False) -> str:
    """A text cell for CSV: a leading formula character is neutralised with a quote."""
    return "'" + text if not raw and text.startswith(FORMULA_START) else text


def _table_cell(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    text = _CONTROL.sub("\ufffd", cell(value))
    return text if len(text) <= TABLE_CELL_LIMIT else text[: TABLE_CELL_LIMIT - 1] + "…"


def render_table(result: reports.Report) -> str:
    header = list(result.columns)
    body = [[_table_cell(row.get(c)) for c in header] for row in result.rows]
    numeric = [
        all(isinstance(row.get(c), int | float) and not isinstance(row.get(c), bool)
            for row in result.rows if row.get(c) is not None)
        for c in header
    ]  # fmt: skip
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out.extend(line(r) for r in body)
    out.append(f"({len(body)} row{'' if len(body) == 1 else 's'})")
    return "\n".join(out)


def answer_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Every answer key of the completions, sorted; flow_token already has its column."""
    keys: set[str] = set()
    for row in rows:
        if isinstance(row.get("response"), dict):
            keys.update(row["response"])
    keys.discard("flow_token")
    return sorted(keys)


def render_csv(result: reports.Report, raw: bool = False) -> str:
    """CSV, one line per row. A value with a carriage return is quoted (its whole row
    is), so it never splits a row; text starting like a formula gets a leading quote
    unless ``raw``."""
    buffer = io.StringIO()
    minimal = csv.writer(buffer, lineterminator="\n")
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def write(values: list[Any]) -> None:
        cells = [csv_text(v, raw) if isinstance(v, str) else cell(v) for v in values]
        (quoted if any("\r" in c for c in cells) else minimal).writerow(cells)

    if result.name != "completions":
        write(list(result.columns))
        for row in result.rows:
            write([row.get(c) for c in result.columns])
        return buffer.getvalue()
    # One column per answer key, so a spreadsheet can filter and pivot on answers.
    base = [c for c in result.columns if c != "response"]
    keys = answer_keys(result.rows)
    write(base + [f"answer.{k}" for k in keys])
    for row in result.rows:
        answers = row["response"] if isinstance(row.get("response"), dict) else {}
        write([row.get(c) for c in base] + [answers.get(k) for k in keys])
    return buffer.getvalue()


def render_json(result: reports.Report, window: reports.Window, flow_id: str | None) -> str:
    doc = {
        "report": result.name,
        "since": _iso(window.since),
        "until": _iso(window.until),
        "flow_id": flow_id,
        "rows": [{c: key_order(plain(row.get(c))) for c in result.columns} for row in result.rows],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2)


def render(result: reports.Report, fmt: str, window: reports.Window, flow_id: str | None,
           raw_csv: bool = False) -> str:  # fmt: skip
    if fmt == "csv":
        return render_csv(result, raw_csv).rstrip("\n")
    if fmt == "json":
        return render_json(result, window, flow_id)
    return render_table(result)


# ---------------------------------------------------------------- commands


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A connection for reading: no write lock on SQLite, a read-only transaction on PostgreSQL."""
    with engine.connect() as conn:
        conn = conn.execution_options(sqlite_begin="DEFERRED")
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        tune(conn)
        yield conn
        conn.rollback()


def _emit(name: str, since: str | None, until: str | None, flow_id: str | None, fmt: str,
          **options: Any) -> None:  # fmt: skip
    window = make_window(since, until)
    try:
        with database_errors(), read_only(state().engine) as conn:
            result = reports.REPORTS[name](conn, window, flow_id, **options)
    except exc.SQLAlchemyError as err:
        raise click.ClickException(f"report {name} failed: {first_line(err)}") from None
    raw_csv = bool(click.get_current_context().meta.get("raw_csv"))
    click.echo(render(result, fmt, window, flow_id, raw_csv))


@report.command("funnel")
@window_options
@click.option("--daily", is_flag=True, help="One row per day and flow.")
def funnel_command(since: str | None, until: str | None, flow_id: str | None, fmt: str,
                   daily: bool) -> None:  # fmt: skip
    """Funnel per flow: sent, delivered, read, completed, failed.

    Counts the flow messages sent in the window. READ counts as delivered even when
    DELIVERED never arrived; a FAILED after DELIVERED or READ stays delivered and is
    counted in failed_after_delivery.
    """
    _emit("funnel", since, until, flow_id, fmt, daily=daily)


@report.command("completions")
@window_options
def completions_command(since: str | None, until: str | None, flow_id: str | None,
                        fmt: str) -> None:  # fmt: skip
    """Completed flows: their send, time to complete, answers.

    One row per completion in the window.

    --format csv puts each answer key in its own column (answer.<key>).
    """
    _emit("completions", since, until, flow_id, fmt)


@report.command("failures")
@window_options
@click.option("--daily", is_flag=True, help="One row per day, channel and reason.")
def failures_command(since: str | None, until: str | None, flow_id: str | None, fmt: str,
                     daily: bool) -> None:  # fmt: skip
    """Delivery failures by channel and reason code.

    Counts the FAILED reports in the window (events are not messages: not counted).
    """
    _emit("failures", since, until, flow_id, fmt, daily=daily)


@report.command("timeline")
@window_options
def timeline_command(since: str | None, until: str | None, flow_id: str | None,
                     fmt: str) -> None:  # fmt: skip
    """Per message: when queued, delivered, read, failed, completed.

    One row per flow message sent in the window, with its current status.
    """
    _emit("timeline", since, until, flow_id, fmt)
