"""events are appended as 'pending' and projected afterwards

Revision ID: 0004_pending_events
Revises: 0003_reporting
Create Date: 2026-12-03 14:30:00

callback_events.status gains the value 'pending' (stored, not yet projected), and the
set of statuses becomes a CHECK constraint. A partial index holds just the pending
events, so the projector's claim and the lag metrics read a small index however
many events are stored. Existing events keep their status.

Downgrade: the older code never projects a pending event, so any left are marked
'failed' with a note; `flask events reprocess --status failed` recovers them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_pending_events"
down_revision: str | None = "0003_reporting"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "status IN ('pending', 'processed', 'ignored', 'failed')"
PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    with op.batch_alter_table("callback_events", schema=None) as batch_op:
        batch_op.create_check_constraint("status", STATUSES)
        batch_op.create_index(
            "ix_callback_events_pending",
            ["id"],
            unique=False,
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        )


def downgrade() -> None:
    op.execute(
        "UPDATE callback_events SET status = 'failed', "
        "error = 'pending when the schema was downgraded: reprocess it' "
        "WHERE status = 'pending'"
    )
    with op.batch_alter_table("callback_events", schema=None) as batch_op:
        batch_op.drop_index("ix_callback_events_pending")
        batch_op.drop_constraint(op.f("ck_callback_events_status"), type_="check")
