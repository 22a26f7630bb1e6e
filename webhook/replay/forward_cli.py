"""`flask events forward` and `flask events simulate`: signed sends to an endpoint."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
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
    yes_option,
)
from webhook.core.envvars import mask_url
from webhook.core.state import state
from webhook.db.events import count_selection, iter_batches
from webhook.replay.cli import event_filter, selection_options
from webhook.replay.forward import (
    EVENT_ID_HEADER,
    REPLAY_HEADER,
    SIMULATION_HEADER,
    Outbound,
    Result,
    SendOptions,
    SendReport,
    send_all,
)
from webhook.replay.simulate import SimulationConfig, recent_start, simulate

CONFIRM_ABOVE = 100
F = TypeVar("F", bound=Callable[..., Any])


def sending_options(fn: F) -> F:
    options = [
        yes_option,
        dry_run_option("Count what would be sent; send nothing."),
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
    secrets = state().settings.callbacks.secrets
    secret = secret or (secrets[0].reveal() if secrets else None)
    if not secret:
        click.echo("no --secret and no SINCH_WEBHOOK_SECRETS: sending unsigned (a receiver "
                   "that checks signatures answers 401)", err=True)  # fmt: skip
    return SendOptions(url, secret, concurrency, rate, retries, backoff, timeout=timeout)


def _confirm(count: int, what: str, url: str, yes: bool) -> None:
    if count > CONFIRM_ABOVE and not yes:
        click.confirm(f"Send {number(count)} {what} to {mask_url(url)}?", abort=True, err=True)


def _send(items: Iterator[Outbound], total: int, opts: SendOptions, what: str) -> None:
    """Send with a progress bar, one line per failure, a summary, and the exit code."""

    def on_result(result: Result) -> None:
        bar.update(1)
        if not result.ok and not result.unreachable:
            tries = f"after {result.attempts} attempts" if result.attempts > 1 else "not retried"
            click.echo(f"{result.label}: {result.error} ({tries})", err=True)

    with progress_bar(total, "send") as bar:
        report: SendReport = send_all(items, opts, on_result)
    if report.stopped:
        raise click.ClickException(
            f"stopped: {report.stopped}; check the URL and the secret; "
            f"{number(total - report.delivered)} of {number(total)} {what} not delivered"
        )
    if report.unreachable:
        raise click.ClickException(
            f"cannot reach {mask_url(opts.url)}: {mask_url(str(report.unreachable))}; "
            f"{number(total - report.delivered)} of {number(total)} {what} not delivered"
        )
    click.echo(
        f"sent {number(report.sent)} {what} to {mask_url(opts.url)} in {report.seconds:.1f} s: "
        f"{number(report.delivered)} delivered, {number(report.failed)} failed, "
        f"{number(report.retries)} retries"
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
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--to")
    selected = event_filter(ids, since, until, triggers, statuses)
    engine = app_engine()
    with database_errors():
        with engine.connect() as conn:
            selection = count_selection(conn, selected.clause())
        skipped = f"; {number(selection.pruned)} without a body skipped" if selection.pruned else ""
        if dry_run or not selection.with_body:
            verb = "would forward" if dry_run else "forwarded"
            shown = mask_url(url)
            click.echo(f"{verb} {number(selection.with_body)} events to {shown}{skipped}")
            return
        _confirm(selection.with_body, "events", url, yes)
        opts = _send_options(url, secret, concurrency, rate, retries, backoff, timeout)

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
@click.option("--start", type=TimeParam(),
              help="When the first message is sent (default: so that the traffic ends an "
              "hour ago, and reports of the last days show it at once).")  # fmt: skip
def simulate_command(
    messages: int, start: datetime | None, seed: int, shuffle: str, duplicates: float,
    failure_rate: float,
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
    cfg = replace(cfg, start=start or recent_start(cfg))
    _, stream = simulate(cfg)
    if dry_run:
        click.echo(f"would {'send' if url else 'write'} {number(len(stream))} callbacks for "
                   f"{number(messages)} flow messages (seed {seed})")  # fmt: skip
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
        click.echo(f"wrote {number(len(stream))} callbacks to {output}", err=True)
        return
    assert url is not None
    _confirm(len(stream), "callbacks", url, yes)
    opts = _send_options(url, secret, concurrency, rate, retries, backoff, timeout)
    header = {SIMULATION_HEADER: str(seed)}
    items = (Outbound(f"callback {i + 1}", body, header) for i, body in enumerate(stream))
    _send(items, len(stream), opts, "callbacks")
