"""`flask events project [--follow]`: the projector as a command, for deployments that
run the service with PROJECTOR=off (the Procfile's `worker:`)."""

from __future__ import annotations

import logging
import signal
import time

import click

from webhook.core.cli import events
from webhook.core.cli_support import app_engine, database_errors, number
from webhook.projection.projector import BATCH_SIZE, Progress, drain

log = logging.getLogger("webhook.projector")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@events.command("project")
@click.option("--follow", is_flag=True,
              help="Keep projecting new events as they arrive (a Procfile worker); stop "
              "with Ctrl-C or SIGTERM.")  # fmt: skip
@click.option("--batch-size", default=BATCH_SIZE, show_default=True, type=click.IntRange(min=1))
@click.option("--poll", default=1.0, show_default=True, type=click.FloatRange(min=0.01),
              help="--follow: seconds between looks for new events.")  # fmt: skip
def project_command(follow: bool, batch_size: int, poll: float) -> None:
    """Project pending events into the typed tables, then exit (or --follow).

    For deployments that run the service with PROJECTOR=off. Any number may run at
    once against one PostgreSQL: each event is projected by exactly one of them.
    """
    engine = app_engine()
    total = Progress()
    if follow:
        signal.signal(signal.SIGTERM, _interrupt)  # stop between batches, like Ctrl-C
    try:
        with database_errors():
            while True:
                done = drain(engine, batch_size)
                total.add(done)
                if done.events:
                    log.info("projected %s events", done.events,
                             extra={"fields": done.as_fields()})  # fmt: skip
                if not follow:
                    break
                time.sleep(poll)
    except KeyboardInterrupt:
        pass
    click.echo(
        f"projected {number(total.events)} events: {number(total.processed)} processed, "
        f"{number(total.ignored)} ignored, {number(total.failed)} failed"
    )


# ---------------------------------------------------------------- import, export
