"""index source_event_id on the projection tables

Deleting raw events (`flask events prune --delete-after`) makes the database set
source_event_id to NULL in every projection row that points at them; without an
index that is a full table scan per deleted event.

Revision ID: 0009_source_event_ix
Revises: 0001_core
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009_source_event_ix"
down_revision: str | None = "0001_core"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("inbound_messages", "flow_responses", "delivery_reports", "flow_sends")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(f"ix_{table}_source_event_id", ["source_event_id"], unique=False)


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_source_event_id")
