"""`flask events reprocess | rebuild | import | export | forward | simulate`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Engine, exc

from webhook.callbacks import TRIGGERS, UNKNOWN, ParseError, parse_time
from webhook.cli import events
from webhook.events_query import EventFilter, count_selection, iter_batches
from webhook.forward import (
    EVENT_ID_HEADER,
    REPLAY_HEADER,
    SIMULATION_HEADER,
    Outbound,
    Result,
    SendOptions,
    SendReport,
    send_all,
)
from webhook.ingest import FAILED, IGNORED, PROCESSED, StorageUnavailable
from webhook.rebuild import ReplayReport, rebuild
from webhook.replay import reprocess
from webhook.simulate import SimulationConfig, simulate
from webhook.state import state
from webhook.transfer import count_items, export, import_path

CONFIRM_ABOVE = 100
F = TypeVar("F", bound=Callable[..., Any])


def _engine() -> Engine:
    return state().engine


@contextmanager
def _database_errors() -> Iterator[None]:
    """A database that cannot be reached is one line and a non-zero exit, not a trace."""
    try:
        yield
    except StorageUnavailable as err:
        raise click.ClickException(f"database unavailable: {err}") from None
    except (exc.OperationalError, exc.InterfaceError) as err:
        first = (str(err.orig or err).strip().splitlines() or [""])[0]
        raise click.ClickException(f"database unavailable: {first}") from None


class _Quiet:
    """Stands in for the progress bar when stderr is not a terminal (logs, pipes, tests)."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress(length: int, label: str) -> Any:
    if not sys.stderr.isatty():
        return _Quiet()
    return click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True)


# ---------------------------------------------------------------- selection options


class _Time(click.ParamType[datetime]):
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


def _trigger(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    known = TRIGGERS | {UNKNOWN}
    out = tuple(v.strip().upper() for v in values)
    for name in out:
        if name not in known:
            raise click.BadParameter(f"unknown trigger {name!r}; one of {', '.join(sorted(known))}")
    return out


def selection_options(fn: F) -> F:
    """--id, --since, --until, --trigger, --status: every one given must match."""
    options = [
        click.option("--status", "statuses", multiple=True,
                     type=click.Choice([PROCESSED, FAILED, IGNORED]),
                     help="Only events with this status (repeatable)."),
        click.option("--trigger", "triggers", multiple=True, callback=_trigger,
                     help="Only events of this trigger, e.g. MESSAGE_DELIVERY (repeatable)."),
        click.option("--until", type=_Time(), help="Only events received before this time (UTC)."),
        click.option("--since", type=_Time(),
                     help="Only events received at or after this date or time (UTC)."),
        click.option("--id", "ids", multiple=True, type=click.IntRange(min=1),
                     help="Only this stored event id (repeatable)."),
    ]  # fmt: skip
    for option in options:
        fn = option(fn)
    return fn


def _filter(
    ids: tuple[int, ...],
    since: datetime | None,
    until: datetime | None,
    triggers: tuple[str, ...],
    statuses: tuple[str, ...],
) -> EventFilter:
    return EventFilter(ids, since, until, triggers, statuses)


def _describe(f: EventFilter) -> str:
    parts = []
    if f.ids:
        parts.append("id " + ",".join(map(str, f.ids)))
    if f.since:
        parts.append(f"since {f.since:%Y-%m-%d %H:%M:%S}")
    if f.until:
        parts.append(f"until {f.until:%Y-%m-%d %H:%M:%S}")
    if f.triggers:
        parts.append("trigger " + ",".join(f.triggers))
    if f.statuses:
        parts.append("status " + ",".join(f.statuses))
    return "; ".join(parts) or "all events"


# ---------------------------------------------------------------- reports


def _n(value: int) -> str:
    return f"{value:,}"


def _print_report(report: ReplayReport, dry_run: bool) -> None:
    if report.changes:
        head = "would change" if dry_run else "changes"
        click.echo(f"{head:<18}{'inserted':>10}{'updated':>10}{'unchanged':>11}{'deleted':>9}")
        for name, c in report.changes.items():
            click.echo(
                f"{name:<18}{_n(c.inserted):>10}{_n(c.updated):>10}{_n(c.unchanged):>11}"
                f"{_n(c.deleted):>9}"
            )
    if report.rows and not dry_run:
        click.echo("rows: " + ", ".join(f"{k} {_n(v)}" for k, v in report.rows.items()))
    for (old, new), n in sorted(report.transitions.items()):
        click.echo(f"events {old} -> {new}: {_n(n)}")
    if report.failed:
        click.echo(f"{'would still fail' if dry_run else 'still failing'}: {_n(report.failed)}")
        for f in report.failures:
            click.echo(f"  event {f.event_id} ({f.trigger}): {f.error}")
        if report.failed > len(report.failures):
            click.echo(f"  ... and {_n(report.failed - len(report.failures))} more")


def _summary(verb: str, report: ReplayReport, dry_run: bool) -> str:
    rate = report.events / report.seconds if report.seconds else 0.0
    statuses = ", ".join(f"{_n(n)} {s}" for s, n in sorted(report.statuses.items()))
    line = (
        f"{verb} {_n(report.events)} events in {report.seconds:.1f} s ({rate:,.0f} events/s)"
        f"{': ' + statuses if statuses else ''}"
    )
    if report.pruned:
        line += f"; skipped {_n(report.pruned)} events whose body was pruned"
    if report.slow_batches:
        line += f"; {report.slow_batches} batches replayed one event at a time"
    return line + ("; dry run, nothing written" if dry_run else "")


# ---------------------------------------------------------------- reprocess, rebuild


@events.command("reprocess")
@selection_options
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(min=1))
def reprocess_command(
    ids: tuple[int, ...], since: datetime | None, until: datetime | None,
    triggers: tuple[str, ...], statuses: tuple[str, ...], dry_run: bool, batch_size: int,
) -> None:  # fmt: skip
    """Run the projections again over chosen stored events, as after a parser fix.

    Rows each event is the source of are brought in line with what its body projects
    to today; events that now project become 'processed', those that still fail keep
    the new error. Running it twice changes nothing the second time.
    """
    selected = _filter(ids, since, until, triggers, statuses)
    engine = _engine()
    with _database_errors():
        with engine.connect() as conn:
            selection = count_selection(conn, selected.clause())
        if not selection.total:
            click.echo(f"no stored events match ({_describe(selected)})")
            return
        with _progress(selection.with_body, "reprocess") as bar:
            report = reprocess(
                engine, selected, dry_run=dry_run, batch_size=batch_size, progress=bar.update
            )
    _print_report(report, dry_run)
    click.echo(_summary("reprocessed", report, dry_run))


@events.command("rebuild")
@click.option("--dry-run", is_flag=True, help="Show per table what would change; write nothing.")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(min=1))
def rebuild_command(dry_run: bool, batch_size: int) -> None:
    """Empty the projection tables and rebuild them from every stored event, in order.

    Batches of events are re-projected, each batch in its own transaction, with the
    result live ingestion would give. Rows whose source event was pruned, and flow
    sends recorded by this service, are kept. Pause ingestion while it runs.
    """
    engine = _engine()
    with _database_errors():
        with engine.connect() as conn:
            selection = count_selection(conn, EventFilter().clause())
        with _progress(selection.with_body, "rebuild") as bar:
            report = rebuild(engine, batch_size=batch_size, dry_run=dry_run, progress=bar.update)
    _print_report(report, dry_run)
    click.echo(_summary("rebuilt from", report, dry_run))


# ---------------------------------------------------------------- import, export


@events.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def import_command(path: Path) -> None:
    """Load saved callbacks from a JSON Lines file or a folder of .json files.

    A line (or file) is a callback body, or an object with "body" (the exact body as
    a string, or a JSON object), or "body_base64", and optional "headers" and
    "received_at" -- what `events export` writes. Each goes through the same ingest
    code as HTTP: duplicates are recognised, projections applied. Bad lines are
    reported with their line number and skipped; the exit code is 1 if any were.
    """
    engine = _engine()
    try:
        total = count_items(path)
    except OSError as err:
        raise click.ClickException(f"cannot read {path}: {err.strerror or err}") from None
    with _database_errors(), _progress(total, "import") as bar:
        try:
            report = import_path(engine, path, progress=bar.update)
        except OSError as err:
            raise click.ClickException(f"cannot read {path}: {err.strerror or err}") from None
    for where, why in report.skipped:
        click.echo(f"{path.name}, {where}: {why}", err=True)
    statuses = ", ".join(f"{_n(n)} {s}" for s, n in sorted(report.statuses.items()))
    click.echo(
        f"imported {path.name}: {_n(report.items)} items, {_n(report.stored)} stored"
        f"{' (' + statuses + ')' if statuses else ''}, {_n(report.duplicates)} duplicates, "
        f"{_n(len(report.skipped))} skipped"
    )
    if report.skipped:
        raise click.ClickException(f"{len(report.skipped)} of {report.items} items were skipped")


@events.command("export")
@selection_options
@click.option("-o", "--output", default="-", show_default=True,
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="File to write ('-': standard output).")  # fmt: skip
def export_command(
    ids: tuple[int, ...], since: datetime | None, until: datetime | None,
    triggers: tuple[str, ...], statuses: tuple[str, ...], output: Path,
) -> None:  # fmt: skip
    """Write stored events as JSON Lines: byte-exact body, headers, received time, status.

    `events import` of the file into an empty database reproduces the same tables.
    """
    selected = _filter(ids, since, until, triggers, statuses)
    engine = _engine()
    with _database_errors():
        if str(output) == "-":
            report = export(engine, selected, sys.stdout.buffer)
        else:
            partial = output.with_name(output.name + ".part")
            try:
                with partial.open("wb") as out:
                    report = export(engine, selected, out)
                os.replace(partial, output)
            except OSError as err:
                raise click.ClickException(f"cannot write {output}: {err.strerror}") from None
            finally:
                partial.unlink(missing_ok=True)
    where = "standard output" if str(output) == "-" else str(output)
    note = f" ({_n(report.pruned)} pruned events have no body and were left out)"
    click.echo(
        f"exported {_n(report.written)} events to {where}{note if report.pruned else ''}",
        err=True,
    )


# ---------------------------------------------------------------- forward, simulate


def sending_options(fn: F) -> F:
    options = [
        click.option("--yes", is_flag=True,
                     help=f"Do not ask before sending more than {CONFIRM_ABOVE}."),
        click.option("--dry-run", is_flag=True, help="Count what would be sent; send nothing."),
        click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
                     help="Seconds to wait for each answer."),
        click.option("--backoff", default=0.5, show_default=True, type=click.FloatRange(min=0),
                     help="Seconds before the first retry; doubles each retry."),
        click.option("--retries", default=3, show_default=True, type=click.IntRange(min=0),
                     help="Retries after a 5xx, a 429, a timeout or a refused connection."),
        click.option("--rate", type=click.FloatRange(min=0, min_open=True),
                     help="At most this many sends per second (default: no limit)."),
        click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64),
                     help="Sends in flight at once."),
        click.option("--secret", help="Webhook secret to sign with (default: the first of "
                     "SINCH_WEBHOOK_SECRETS)."),
        click.option("--to", "url", metavar="URL", help="Endpoint to send the callbacks to."),
    ]  # fmt: skip
    for option in options:
        fn = option(fn)
    return fn


def _send_options(
    url: str, secret: str | None, concurrency: int, rate: float | None, retries: int,
    backoff: float, timeout: float,
) -> SendOptions:  # fmt: skip
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--to")
    secret = secret or next(iter(state().settings.webhook_secrets), None)
    if not secret:
        raise click.ClickException(
            "no secret to sign with: pass --secret or set SINCH_WEBHOOK_SECRETS"
        )
    return SendOptions(url, secret, concurrency, rate, retries, backoff, timeout=timeout)


def _confirm(count: int, what: str, url: str, yes: bool) -> None:
    if count > CONFIRM_ABOVE and not yes:
        click.confirm(f"Send {_n(count)} {what} to {url}?", abort=True, err=True)


def _send(items: Iterator[Outbound], total: int, opts: SendOptions, what: str) -> None:
    """Send with a progress bar, one line per failure, a summary, and the exit code."""

    def on_result(result: Result) -> None:
        bar.update(1)
        if not result.ok and not result.unreachable:
            tries = f"after {result.attempts} attempts" if result.attempts > 1 else "not retried"
            click.echo(f"{result.label}: {result.error} ({tries})", err=True)

    with _progress(total, "send") as bar:
        report: SendReport = send_all(items, opts, on_result)
    if report.unreachable:
        raise click.ClickException(
            f"cannot reach {opts.url}: {report.unreachable}; "
            f"{_n(total - report.delivered)} of {_n(total)} {what} not delivered"
        )
    click.echo(
        f"sent {_n(report.sent)} {what} to {opts.url} in {report.seconds:.1f} s: "
        f"{_n(report.delivered)} delivered, {_n(report.failed)} failed, "
        f"{_n(report.retries)} retries"
    )
    if report.failed:
        raise click.ClickException(f"{report.failed} of {report.sent} {what} were not delivered")


@events.command("forward")
@selection_options
@sending_options
def forward_command(
    ids: tuple[int, ...], since: datetime | None, until: datetime | None,
    triggers: tuple[str, ...], statuses: tuple[str, ...], url: str | None, secret: str | None,
    concurrency: int, rate: float | None, retries: int, backoff: float, timeout: float,
    dry_run: bool, yes: bool,
) -> None:  # fmt: skip
    """Re-deliver stored callbacks to another endpoint, byte-exact and freshly signed.

    Each request carries the stored body unchanged, the Sinch signature headers
    (new nonce and timestamp, signed with --secret or SINCH_WEBHOOK_SECRETS), and
    X-Flowhooks-Replay: 1 with X-Flowhooks-Event-Id. 5xx, 429 and timeouts are
    retried with backoff; the exit code is 1 unless every event was delivered.
    """
    if not url:
        raise click.UsageError("--to URL is required")
    opts = _send_options(url, secret, concurrency, rate, retries, backoff, timeout)
    selected = _filter(ids, since, until, triggers, statuses)
    engine = _engine()
    with _database_errors():
        with engine.connect() as conn:
            selection = count_selection(conn, selected.clause())
        skipped = f"; {_n(selection.pruned)} without a body skipped" if selection.pruned else ""
        if dry_run or not selection.with_body:
            verb = "would forward" if dry_run else "forwarded"
            click.echo(f"{verb} {_n(selection.with_body)} events to {url}{skipped}")
            return
        _confirm(selection.with_body, "events", url, yes)

        def outbound() -> Iterator[Outbound]:
            for batch in iter_batches(engine, selected.clause(), selection.max_id, 500):
                for event in batch:
                    assert event.body is not None
                    headers = {REPLAY_HEADER: "1", EVENT_ID_HEADER: str(event.id)}
                    yield Outbound(f"event {event.id}", event.body, headers)

        _send(outbound(), selection.with_body, opts, "events")
    if skipped:
        click.echo(skipped[2:])


@events.command("simulate")
@sending_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write the bodies as JSON Lines (for `events import`) instead of sending.",
)
@click.option(
    "--contacts",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Distinct contacts (0: one per message).",
)
@click.option("--flows", default=3, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--broken-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of completions whose response_json is cut short.",
)
@click.option(
    "--completion-rate",
    default=0.4,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of read messages whose flow is completed.",
)
@click.option("--read-rate", default=0.7, show_default=True, type=click.FloatRange(0, 1))
@click.option(
    "--failure-rate",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of messages that FAIL, with a real WhatsApp reason code.",
)
@click.option(
    "--duplicates",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Chance that a callback is delivered twice.",
)
@click.option(
    "--shuffle",
    default="window",
    show_default=True,
    type=click.Choice(["none", "window", "all"]),
    help="Delivery order: as produced, locally reordered, or fully shuffled.",
)
@click.option(
    "--seed",
    default=1,
    show_default=True,
    type=int,
    help="Same seed, same options: the same bodies, byte for byte.",
)
@click.option("--messages", default=100, show_default=True, type=click.IntRange(min=1),
              help="Flow messages to simulate (each gives several callbacks).")  # fmt: skip
def simulate_command(
    messages: int, seed: int, shuffle: str, duplicates: float, failure_rate: float,
    read_rate: float, completion_rate: float, broken_rate: float, flows: int, contacts: int,
    output: Path | None, url: str | None, secret: str | None, concurrency: int,
    rate: float | None, retries: int, backoff: float, timeout: float, dry_run: bool, yes: bool,
) -> None:  # fmt: skip
    """Generate realistic signed callback traffic for flow messages, without Sinch.

    For each message: MESSAGE_SUBMIT, QUEUED_ON_CHANNEL, DELIVERED and READ, or
    FAILED with a real reason code, and for some a completed flow with answers.
    Send it to --to URL (signed, with the same retries and pacing as `forward`), or
    write it with --output. Seeded: a run can be repeated exactly.
    """
    if (url is None) == (output is None):
        raise click.UsageError("give exactly one of --to URL or --output FILE")
    cfg = SimulationConfig(
        messages=messages, seed=seed, shuffle=shuffle, duplicate_rate=duplicates,
        failure_rate=failure_rate, read_rate=read_rate, completion_rate=completion_rate,
        broken_response_rate=broken_rate, flows=flows, contacts=contacts,
    )  # fmt: skip
    opts = _send_options(url, secret, concurrency, rate, retries, backoff, timeout) if url else None
    _, stream = simulate(cfg)
    if dry_run:
        click.echo(f"would {'send' if url else 'write'} {_n(len(stream))} callbacks for "
                   f"{_n(messages)} flow messages (seed {seed})")  # fmt: skip
        return
    if output is not None:
        lines = b"".join(body + b"\n" for body in stream)
        if str(output) == "-":
            sys.stdout.buffer.write(lines)
        else:
            try:
                output.write_bytes(lines)
            except OSError as err:
                raise click.ClickException(f"cannot write {output}: {err.strerror}") from None
        click.echo(f"wrote {_n(len(stream))} callbacks to {output}", err=True)
        return
    assert opts is not None and url is not None
    _confirm(len(stream), "callbacks", url, yes)
    header = {SIMULATION_HEADER: str(seed)}
    items = (Outbound(f"callback {i + 1}", body, header) for i, body in enumerate(stream))
    _send(items, len(stream), opts, "callbacks")
