"""`flask flows send`: send a WhatsApp Flow message, or one per CSV row, and record it."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import IO, Any

import click
from sqlalchemy import Engine, exc

from webhook.core.cli import flows
from webhook.core.cli_support import no_schema
from webhook.core.errors import is_schema_missing
from webhook.core.outbound import Pacer, bounded_map, first_line
from webhook.core.state import state
from webhook.flows.batch import CsvError, CsvRow, read_rows
from webhook.flows.client import ClientConfig, ConversationClient, SinchAuthError, SinchError
from webhook.flows.message import FlowMessage, Problem, SendRequest, build_request, validate
from webhook.flows.sending import (
    ACCEPTED,
    FAILED,
    REJECTED,
    UNKNOWN,
    NotRecorded,
    SendOutcome,
    TokenInUse,
    send_flow,
    tokens_in_use,
)

# Payload field -> the option that sets it, so a problem names what to change.
OPTION_OF = {
    "recipient": "--to/--contact-id",
    "recipient.identity": "--to",
    "recipient.contact_id": "--contact-id",
    "flow_id": "--flow-id",
    "flow_cta": "--cta",
    "body.text": "--body",
    "header.text": "--header",
    "header.type": "--header-type",
    "header.link": "--header-url",
    "footer.text": "--footer",
    "flow_mode": "--mode",
    "flow_action": "--action",
    "flow_action_payload": "--screen/--data",
    "flow_action_payload.screen": "--screen",
    "flow_action_payload.data": "--data",
    "flow_token": "--token",
    "message_metadata": "--metadata",
    "correlation_id": "--correlation-id",
    "ttl": "--ttl",
}


def _option(problem: Problem) -> str:
    if problem.field.startswith("header.") and problem.field.endswith(".link"):
        return "--header-url"
    return OPTION_OF.get(problem.field, problem.field)


def _err(text: str) -> None:
    click.echo(text, err=True)


def _fail_on(problems: list[Problem], what: str) -> None:
    if not problems:
        return
    for problem in problems:
        _err(f"{_option(problem)}: {problem.message}")
    n = len(problems)
    raise click.ClickException(f"{n} problem{'s' if n != 1 else ''} with {what}; nothing sent")


def _parse_data(raw: str | None) -> tuple[Any, list[Problem]]:
    if raw is None:
        return None, []
    try:
        return json.loads(raw), []
    except ValueError as err:
        return None, [Problem("flow_action_payload.data", f"data is not valid JSON ({err})")]


def _db_error(err: exc.SQLAlchemyError) -> click.ClickException:
    if is_schema_missing(err):
        return click.ClickException(no_schema())
    return click.ClickException(f"database error: {first_line(err)}")


def _client() -> ConversationClient:
    try:
        return ConversationClient(ClientConfig.from_settings(state().settings))
    except SinchError as err:
        raise click.ClickException(str(err)) from None


@flows.command("send")
@click.option("--to", help="Recipient's WhatsApp number, international format (+5511987654321).")
@click.option("--contact-id", help="Recipient's Sinch contact id (instead of --to).")
@click.option("--flow-id", help="The flow's id at Meta. Required.")
@click.option("--cta", help="Button text: at most 20 characters, no emoji. Required.")
@click.option("--body", help="Message text, at most 1024 characters. Required.")
@click.option("--header", help="Header text, at most 60 characters.")
@click.option(
    "--header-type", help="Header type: text (the default with --header), image, video, document."
)
@click.option("--header-url", help="Link (http/https) to the header's image, video or document.")
@click.option("--footer", help="Footer text, at most 60 characters.")
@click.option("--screen", help="Id of the first screen (required with --action navigate).")
@click.option(
    "--data", "data_json", help='First screen\'s data, a JSON object: \'{"name":"Ana"}\'.'
)
@click.option("--mode", default="published", show_default=True, help="published or draft.")
@click.option("--action", default="navigate", show_default=True, help="navigate or data_exchange.")
@click.option("--token", help="Flow token (default: a new unguessable one); must be unused.")
@click.option(
    "--fallback-text", help="Text for clients without flows (default: the body; '' none)."
)
@click.option("--metadata", help="message_metadata, echoed in callbacks (at most 1024 chars).")
@click.option("--correlation-id", help="correlation_id, echoed in callbacks (at most 128 chars).")
@click.option("--ttl", help="Time to live in seconds, e.g. 86400 (or 86400s).")
@click.option(
    "--csv",
    "csv_file",
    type=click.File("r", encoding="utf-8-sig"),
    help="Send to every row of this CSV: to or contact_id, and optional token, data, "
    "data.<key>, metadata, correlation_id columns.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.01),
    default=10.0,
    show_default=True,
    help="With --csv: at most this many sends per second.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 32),
    default=4,
    show_default=True,
    help="With --csv: requests in flight at once.",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the exact request body (JSON) instead of sending."
)
def send_command(
    to: str | None,
    contact_id: str | None,
    flow_id: str | None,
    cta: str | None,
    body: str | None,
    header: str | None,
    header_type: str | None,
    header_url: str | None,
    footer: str | None,
    screen: str | None,
    data_json: str | None,
    mode: str,
    action: str,
    token: str | None,
    fallback_text: str | None,
    metadata: str | None,
    correlation_id: str | None,
    ttl: str | None,
    csv_file: IO[str] | None,
    rate: float,
    workers: int,
    dry_run: bool,
) -> None:
    """Send a WhatsApp Flow message through the Sinch Conversation API.

    Every field is checked first; all problems are listed and nothing is sent. An
    accepted send is recorded in flow_sends with Sinch's message id and the flow
    token, so delivery reports and the completion join to it. A rejected send is
    recorded too, with Sinch's error. With --csv, one message per row (progress on
    stderr, a summary at the end; exit status 1 if any row was invalid or not sent).

    Long: a click command's options are its parameters; the body is short.
    """
    data, problems = _parse_data(data_json)
    message = FlowMessage(
        flow_id=flow_id,
        cta=cta,
        body=body,
        to=to,
        contact_id=contact_id,
        header=header,
        header_type=header_type,
        header_url=header_url,
        footer=footer,
        screen=screen,
        data=data,
        mode=mode,
        action=action,
        token=token,
        fallback_text=fallback_text,
        metadata=metadata,
        correlation_id=correlation_id,
        ttl=ttl,
    )
    if csv_file is not None:
        if to is not None or contact_id is not None or token is not None:
            raise click.ClickException(
                "--to, --contact-id and --token are per recipient: put them in the CSV file"
            )
        _send_batch(message, problems, csv_file, rate=rate, workers=workers, dry_run=dry_run)
        return
    _fail_on(problems + validate(message), "the message")
    app_id = state().settings.sinch.app_id
    request = build_request(message, app_id)
    if dry_run:
        if not app_id:
            _err("note: SINCH_APP_ID is not set, so app_id is empty; set it before sending")
        click.echo(request.json_bytes().decode())
        return
    with _client() as client:
        outcome = _send_one(state().engine, client, request)
    if outcome.status != ACCEPTED:
        raise click.ClickException(
            f"not sent ({outcome.status}): {outcome.error} "
            f"[recorded in flow_sends; flow token {outcome.flow_token}]"
        )
    click.echo(f"accepted: message_id={outcome.message_id} flow_token={outcome.flow_token}")


def _send_one(engine: Engine, client: ConversationClient, request: SendRequest) -> SendOutcome:
    try:
        return send_flow(engine, client, request)
    except (TokenInUse, SinchAuthError, NotRecorded) as err:
        raise click.ClickException(str(err)) from None
    except exc.SQLAlchemyError as err:
        raise _db_error(err) from None


def _send_batch(  # noqa: C901 (see Long: in its docstring)
    template: FlowMessage,
    pre_problems: list[Problem],
    csv_file: IO[str],
    *,
    rate: float,
    workers: int,
    dry_run: bool,
) -> None:
    """Send one message per CSV row.

    Long: checks every row first (nothing sent if any is wrong), then sends
    (_send_rows) and reports the counts, the notes and the exit status.
    """
    # The shared options are checked once, with a stand-in recipient.
    shared = [p for p in validate(replace(template, contact_id="x")) if p.field != "recipient"]
    _fail_on(pre_problems + shared, "the options shared by every row")
    try:
        rows = read_rows(csv_file, template)
    except CsvError as err:
        raise click.ClickException(f"{csv_file.name}: {err}") from None
    st = state()
    if not dry_run:
        chosen = [r.message.token for r in rows if r.valid and r.message.token is not None]
        if chosen:
            try:
                with st.engine.connect() as conn:
                    used = tokens_in_use(conn, chosen)
            except exc.SQLAlchemyError as err:
                raise _db_error(err) from None
            for i, r in enumerate(rows):
                if r.valid and r.message.token in used:
                    problem = f"flow token {r.message.token!r} was already used by an earlier send"
                    rows[i] = replace(r, problems=(problem,))
    invalid = [r for r in rows if not r.valid]
    valid = [r for r in rows if r.valid]
    for row in invalid:
        _err(f"line {row.line}: {'; '.join(row.problems)}")
    requests = [(row, build_request(row.message, st.settings.sinch.app_id)) for row in valid]

    if dry_run:
        for _row, request in requests:
            click.echo(request.json_bytes().decode())
        _err(f"dry run: {len(valid)} valid, {len(invalid)} invalid rows; nothing sent")
        if invalid:
            raise click.exceptions.Exit(1)
        return

    with _client() as client:
        try:
            client.access_token()  # a refused key stops the batch before any row is sent
        except SinchError as err:
            raise click.ClickException(str(err)) from None
        counts, notes, abort = _send_rows(st.engine, client, requests, rate, workers)
    for note in notes:
        _err(note)
    not_sent = counts[REJECTED] + counts[FAILED] + counts[UNKNOWN]
    summary = (
        f"sent {counts[ACCEPTED]}, rejected {counts[REJECTED]}, failed {counts[FAILED]}, "
        f"unknown {counts[UNKNOWN]}, invalid {len(invalid)} ({len(rows)} rows)"
    )
    click.echo(summary)
    if abort:
        raise click.ClickException(f"stopped: {abort}")
    if not_sent or invalid:
        raise click.exceptions.Exit(1)


# A row and what its send gave: an outcome, or the error it raised.
Sent = tuple[CsvRow, SendOutcome | Exception]


def _send_rows(
    engine: Engine,
    client: ConversationClient,
    requests: list[tuple[CsvRow, SendRequest]],
    rate: float,
    workers: int,
) -> tuple[dict[str, int], list[str], str | None]:
    """Send the rows paced, ``workers`` at a time: the counts, notes and why it stopped.

    A row whose send raises stops the batch (rows not started are not sent), except
    TokenInUse (another process took the token meanwhile): that row counts as rejected.
    """
    counts = {ACCEPTED: 0, REJECTED: 0, FAILED: 0, UNKNOWN: 0}
    notes: list[str] = []
    abort: str | None = None
    pacer = Pacer(rate)

    def send(job: tuple[CsvRow, SendRequest]) -> Sent:
        row, request = job
        pacer.wait()
        try:
            return row, send_flow(engine, client, request)
        except Exception as err:  # settled on the calling thread, in settle()
            return row, err

    with click.progressbar(length=len(requests), label="sending", file=sys.stderr) as bar:

        def settle(sent: Sent) -> bool:
            nonlocal abort
            row, outcome = sent
            if isinstance(outcome, TokenInUse):  # only if another process took it meanwhile
                notes.append(f"line {row.line}: {outcome}")
                counts[REJECTED] += 1
            elif isinstance(outcome, Exception):  # key refused, database, not recorded: stop
                abort = abort or f"line {row.line}: {first_line(outcome)}"
            else:
                counts[outcome.status] += 1
                if outcome.status != ACCEPTED:
                    notes.append(f"line {row.line}: {outcome.status}: {outcome.error}")
            bar.update(1)
            return abort is not None

        bounded_map(send, requests, workers=workers, on_result=settle, name="flows-send")
    return counts, notes, abort
