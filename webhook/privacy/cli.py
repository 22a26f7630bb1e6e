"""`flask events prune` and `flask contacts erase`: retention and erasure commands."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

import click

from webhook.core.cli import contacts, events
from webhook.core.cli_support import database_errors, dry_run_option, yes_option
from webhook.core.state import state
from webhook.privacy.erasure import ErasureError, ErasureResult, erase
from webhook.privacy.retention import BATCH_SIZE, PrunePlan, plan_prune, run_prune
from webhook.projection.projector import drain

log = logging.getLogger("webhook.privacy")


def _describe(plan: PrunePlan, older_than: int, delete_after: int | None) -> str:
    lines = [
        f"bodies to drop: {plan.bodies} (received more than {older_than} days ago, "
        f"before {plan.prune_before:%Y-%m-%d %H:%M} UTC; digests kept)"
    ]
    if plan.failed_bodies:
        lines.append(f"  of which failed: {plan.failed_bodies} (they can no longer be reprocessed)")
    if plan.delete_before is not None:
        lines.append(
            f"raw events to delete: {plan.deletes} (received more than {delete_after} days "
            f"ago, before {plan.delete_before:%Y-%m-%d %H:%M} UTC; projections kept)"
        )
    return "\n".join(lines)


@events.command("prune")
@click.option(
    "--older-than",
    "older_than",
    type=click.IntRange(min=0),
    required=True,
    metavar="DAYS",
    help="Drop the raw body of events received more than DAYS days ago (digest kept).",
)
@click.option(
    "--delete-after",
    "delete_after",
    type=click.IntRange(min=0),
    metavar="DAYS",
    help="Also delete raw events received more than DAYS days ago (>= --older-than).",
)
@dry_run_option("Only show what would change.")
@yes_option
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=BATCH_SIZE, show_default=True,
    help="Rows per transaction.",
)  # fmt: skip
def prune_command(
    older_than: int, delete_after: int | None, dry_run: bool, yes: bool, batch_size: int
) -> None:
    """Drop old raw bodies (keeping their digests) and delete raw events past a second horizon."""
    if delete_after is not None and delete_after < older_than:
        raise click.ClickException("--delete-after must be at least --older-than")
    engine = state().engine
    with database_errors():
        with engine.connect() as conn:
            plan = plan_prune(conn, datetime.now(UTC), older_than, delete_after)
        click.echo(_describe(plan, older_than, delete_after))
        if dry_run:
            click.echo("dry run: nothing changed")
            return
        if not plan.bodies and not plan.deletes:
            click.echo("nothing to prune")
            return
        if not yes:
            click.confirm("Proceed?", abort=True)
        dropped, deleted = run_prune(engine, plan, batch_size)
    click.echo(f"pruned: dropped {dropped} bodies, deleted {deleted} raw events")


def _summary(result: ErasureResult, dry_run: bool) -> Iterable[str]:
    verb = "would change" if dry_run else "changed"
    for table, n in result.rows.items():
        yield f"{table}: {n} rows {verb}"
    total = sum(result.rows.values())
    prefix = "dry run: " if dry_run else ""
    yield (
        f"{prefix}{result.key_kind} {result.key_hash[:16]}: {total} rows {verb} "
        f"({result.identities} identities, {result.contact_ids} contact ids linked)"
        + ("; nothing changed" if dry_run else "")
    )


@contacts.command("erase")
@click.option("--identity", metavar="NUMBER", help="The person's phone number (any format).")
@click.option("--contact-id", "contact_id", metavar="ID", help="The person's Sinch contact id.")
@dry_run_option("Only count what would change.")
@yes_option
def erase_command(identity: str | None, contact_id: str | None, dry_run: bool, yes: bool) -> None:
    """Erase one person's data everywhere: keys become a keyed hash, content is removed.

    It cannot be undone, so it asks first (unless --yes or --dry-run).
    """
    if (identity is None) == (contact_id is None):
        raise click.UsageError("give exactly one of --identity or --contact-id")
    if not dry_run and not yes:
        click.confirm(
            f"Erase every trace of this {'number' if identity else 'contact id'}? "
            "This cannot be undone", abort=True, err=True,
        )  # fmt: skip
    st = state()
    key = st.settings.privacy.erasure_key
    if key is None:
        raise click.ClickException(
            "ERASURE_KEY is not set: it keys the hashes that replace personal data; "
            "set it (and keep it secret and stable) before erasing"
        )
    try:
        with database_errors():
            if not dry_run:
                # Project what is pending first: an event projected after the erasure
                # would otherwise bring its unredacted rows back.
                drain(st.engine)
            with st.engine.connect() as conn:
                trans = conn.begin()
                try:
                    result = erase(conn, key.reveal(), identity=identity,
                                   contact_id=contact_id)  # fmt: skip
                except BaseException:
                    trans.rollback()
                    raise
                if dry_run:
                    trans.rollback()
                else:
                    trans.commit()
    except ErasureError as err:
        raise click.ClickException(str(err)) from None
    if not dry_run:
        fields = {"key_kind": result.key_kind, "key_hash": result.key_hash, **result.rows}
        log.info("erasure", extra={"fields": fields})
    for line in _summary(result, dry_run):
        click.echo(line)
