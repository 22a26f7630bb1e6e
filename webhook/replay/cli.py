"""`flask events reprocess | rebuild | import | export`, and the helpers the event
commands share (selection options, progress, database errors). forward and simulate
live in forward_cli.py."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from webhook.core.cli import events
from webhook.core.cli_support import (
    TimeParam,
    app_engine,
    database_errors,
    dry_run_option,
    number,
    progress_bar,
)
from webhook.db.events import FAILED, IGNORED, PENDING, PROCESSED, EventFilter, count_selection
from webhook.ingest.parsers import TRIGGERS, UNKNOWN
from webhook.replay.rebuild import default_workers, rebuild
from webhook.replay.report import ReplayReport
from webhook.replay.reprocess import reprocess
from webhook.replay.transfer import count_items, export, import_path

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("webhook.projection.projector")


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
                     type=click.Choice([PENDING, PROCESSED, FAILED, IGNORED]),
                     help="Only events with this status (repeatable)."),
        click.option("--trigger", "triggers", multiple=True, callback=_trigger,
                     help="Only events of this trigger, e.g. MESSAGE_DELIVERY (repeatable)."),
        click.option("--until", type=TimeParam(),
                     help="Only events received before this time (UTC)."),
        click.option("--since", type=TimeParam(),
                     help="Only events received at or after this date or time (UTC)."),
        click.option("--id", "ids", multiple=True, type=click.IntRange(min=1),
                     help="Only this stored event id (repeatable)."),
    ]  # fmt: skip
    for option in options:
        fn = option(fn)
    return fn


def event_filter(
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


def _print_report(report: ReplayReport, dry_run: bool) -> None:
    if report.changes:
        head = "would change" if dry_run else "changes"
        click.echo(f"{head:<18}{'inserted':>10}{'updated':>10}{'unchanged':>11}{'deleted':>9}")
        for name, c in report.changes.items():
            click.echo(
                f"{name:<18}{number(c.inserted):>10}{number(c.updated):>10}{number(c.unchanged):>11}"
                f"{number(c.deleted):>9}"
            )
    if report.rows and not dry_run:
        click.echo("rows: " + ", ".join(f"{k} {number(v)}" for k, v in report.rows.items()))
    for (old, new), n in sorted(report.transitions.items()):
        click.echo(f"events {old} -> {new}: {number(n)}")
    if report.failed:
        click.echo(f"{'would still fail' if dry_run else 'still failing'}: {number(report.failed)}")
        for f in report.failures:
            click.echo(f"  event {f.event_id} ({f.trigger}): {f.error}")
        if report.failed > len(report.failures):
            click.echo(f"  ... and {number(report.failed - len(report.failures))} more")


def _summary(verb: str, report: ReplayReport, dry_run: bool) -> str:
    rate = report.events / report.seconds if report.seconds else 0.0
    statuses = ", ".join(f"{number(n)} {s}" for s, n in sorted(report.statuses.items()))
    line = (
        f"{verb} {number(report.events)} events in {report.seconds:.1f} s ({rate:,.0f} events/s)"
        f"{': ' + statuses if statuses else ''}"
    )
    if report.pruned:
        line += f"; skipped {number(report.pruned)} events whose body was pruned"
    return line + ("; dry run, nothing written" if dry_run else "")


# ---------------------------------------------------------------- reprocess, rebuild


@events.command("reprocess")
@selection_options
@click.option("--all", "everything", is_flag=True,
              help="Every stored event (as with no filter, but said explicitly).")  # fmt: skip
@dry_run_option("Show what would change; write nothing.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(min=1))
def reprocess_command(
    ids: tuple[int, ...], since: datetime | None, until: datetime | None,
    triggers: tuple[str, ...], statuses: tuple[str, ...], everything: bool, dry_run: bool,
    batch_size: int,
) -> None:  # fmt: skip
    """Run the projections again over chosen stored events, as after a parser fix.

    Rows each event is the source of are brought in line with what its body projects
    to today; events that now project become 'processed', those that still fail keep
    the new error. Running it twice changes nothing the second time.
    """
    if everything and (ids or since or until or triggers or statuses):
        raise click.UsageError("--all cannot be combined with --id, --since, --until, "
                               "--trigger or --status")  # fmt: skip
    selected = event_filter(ids, since, until, triggers, statuses)
    engine = app_engine()
    with database_errors():
        with engine.connect() as conn:
            selection = count_selection(conn, selected.clause())
        if not selection.total:
            click.echo(f"no stored events match ({_describe(selected)})")
            return
        with progress_bar(selection.with_body, "reprocess") as bar:
            report = reprocess(
                engine, selected, dry_run=dry_run, batch_size=batch_size, progress=bar.update
            )
    _print_report(report, dry_run)
    click.echo(_summary("reprocessed", report, dry_run))


@events.command("rebuild")
@dry_run_option("Show per table what would change; write nothing.")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", type=click.IntRange(min=0),
              help="Processes parsing ahead of the writes (default: 2 from 50,000 events "
              "on a machine with 2 or more CPUs; 0: a thread).")  # fmt: skip
def rebuild_command(dry_run: bool, batch_size: int, workers: int | None) -> None:
    """Empty the projection tables and rebuild them from every stored event, in order.

    Batches of events are re-projected, each batch in its own transaction, with the
    result live ingestion would give. Rows whose source event was pruned, and flow
    sends recorded by this service, are kept. Pause ingestion while it runs.
    """
    engine = app_engine()
    with database_errors():
        with engine.connect() as conn:
            selection = count_selection(conn, EventFilter().clause())
        if workers is None:
            workers = default_workers(selection.with_body)
        with progress_bar(selection.with_body, "rebuild") as bar:
            report = rebuild(
                engine, batch_size=batch_size, dry_run=dry_run, progress=bar.update,
                workers=workers,
            )  # fmt: skip
    _print_report(report, dry_run)
    click.echo(_summary("rebuilt from", report, dry_run))


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
    engine = app_engine()
    try:
        total = count_items(path)
    except OSError as err:
        raise click.ClickException(f"cannot read {path}: {err.strerror or err}") from None
    with database_errors(), progress_bar(total, "import") as bar:
        try:
            report = import_path(engine, path, progress=bar.update)
        except OSError as err:
            raise click.ClickException(f"cannot read {path}: {err.strerror or err}") from None
    for where, why in report.skipped:
        click.echo(f"{path.name}, {where}: {why}", err=True)
    statuses = ", ".join(f"{number(n)} {s}" for s, n in sorted(report.statuses.items()))
    click.echo(
        f"imported {path.name}: {number(report.items)} items, {number(report.stored)} stored"
        f"{' (' + statuses + ')' if statuses else ''}, {number(report.duplicates)} duplicates, "
        f"{number(len(report.skipped))} skipped"
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
    selected = event_filter(ids, since, until, triggers, statuses)
    engine = app_engine()
    with database_errors():
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
    note = f" ({number(report.pruned)} pruned events have no body and were left out)"
    click.echo(
        f"exported {number(report.written)} events to {where}{note if report.pruned else ''}",
        err=True,
    )
