"""core tables

Revision ID: 0001_core
Revises:
Create Date: 2026-11-21 09:50:28.668347
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import webhook.db.models

revision: str = "0001_core"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "callback_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column(
            "headers",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("received_at", webhook.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("trigger", sa.String(length=64), nullable=False),
        sa.Column("app_id", sa.String(length=64), nullable=True),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("event_time", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("correlation_id", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("processed_at", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("pruned_at", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("erased_at", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_callback_events")),
        sa.UniqueConstraint("body_sha256", name=op.f("uq_callback_events_body_sha256")),
    )
    with op.batch_alter_table("callback_events", schema=None) as batch_op:
        batch_op.create_index("ix_callback_events_received_at", ["received_at"], unique=False)
        batch_op.create_index("ix_callback_events_status", ["status"], unique=False)
        batch_op.create_index(
            "ix_callback_events_trigger_received_at", ["trigger", "received_at"], unique=False
        )

    op.create_table(
        "erasures",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("requested_at", webhook.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("key_kind", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "rows_affected",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
    )
    op.create_table(
        "flow_exchanges",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("flow_token", sa.String(length=255), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=True),
        sa.Column("screen", sa.String(length=128), nullable=True),
        sa.Column("answer_screen", sa.String(length=128), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("received_at", webhook.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_exchanges")),
    )
    with op.batch_alter_table("flow_exchanges", schema=None) as batch_op:
        batch_op.create_index("ix_flow_exchanges_flow_token", ["flow_token"], unique=False)
        batch_op.create_index("ix_flow_exchanges_received_at", ["received_at"], unique=False)

    op.create_table(
        "message_status",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_rank", sa.Integer(), nullable=False),
        sa.Column("queued_at", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("switching_at", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("read_at", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("failed_at", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("failed_after_delivery", sa.Boolean(), nullable=False),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("contact_id", sa.String(length=64), nullable=True),
        sa.Column("conversation_id", sa.String(length=64), nullable=True),
        sa.Column("updated_at", webhook.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_message_status")),
    )
    with op.batch_alter_table("message_status", schema=None) as batch_op:
        batch_op.create_index("ix_message_status_queued_at", ["queued_at"], unique=False)
        batch_op.create_index("ix_message_status_status", ["status"], unique=False)

    op.create_table(
        "delivery_reports",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("identity", sa.String(length=128), nullable=True),
        sa.Column("contact_id", sa.String(length=64), nullable=True),
        sa.Column("conversation_id", sa.String(length=64), nullable=True),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("reason_description", sa.Text(), nullable=True),
        sa.Column("reason_sub_code", sa.String(length=64), nullable=True),
        sa.Column("channel_code", sa.String(length=64), nullable=True),
        sa.Column("metadata_text", sa.Text(), nullable=True),
        sa.Column("processing_mode", sa.String(length=16), nullable=True),
        sa.Column("event_time", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("received_at", webhook.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "source_event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["source_event_id"],
            ["callback_events.id"],
            name=op.f("fk_delivery_reports_source_event_id_callback_events"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_reports")),
        sa.UniqueConstraint(
            "kind",
            "message_id",
            "status",
            "channel",
            name=op.f("uq_delivery_reports_kind_message_id_status_channel"),
        ),
    )
    with op.batch_alter_table("delivery_reports", schema=None) as batch_op:
        batch_op.create_index("ix_delivery_reports_contact_id", ["contact_id"], unique=False)
        batch_op.create_index("ix_delivery_reports_identity", ["identity"], unique=False)
        batch_op.create_index("ix_delivery_reports_message_id", ["message_id"], unique=False)
        batch_op.create_index(
            "ix_delivery_reports_status_event_time", ["status", "event_time"], unique=False
        )

    op.create_table(
        "flow_responses",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("flow_token", sa.String(length=255), nullable=True),
        sa.Column("reply_to_message_id", sa.String(length=64), nullable=True),
        sa.Column("contact_id", sa.String(length=64), nullable=True),
        sa.Column("conversation_id", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=64), nullable=True),
        sa.Column("identity", sa.String(length=128), nullable=True),
        sa.Column(
            "response",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("response_raw", sa.Text(), nullable=True),
        sa.Column("parse_error", sa.Text(), nullable=True),
        sa.Column("completed_at", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "source_event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["source_event_id"],
            ["callback_events.id"],
            name=op.f("fk_flow_responses_source_event_id_callback_events"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_responses")),
        sa.UniqueConstraint("message_id", name=op.f("uq_flow_responses_message_id")),
    )
    with op.batch_alter_table("flow_responses", schema=None) as batch_op:
        batch_op.create_index("ix_flow_responses_completed_at", ["completed_at"], unique=False)
        batch_op.create_index("ix_flow_responses_contact_id", ["contact_id"], unique=False)
        batch_op.create_index("ix_flow_responses_flow_token", ["flow_token"], unique=False)
        batch_op.create_index("ix_flow_responses_identity", ["identity"], unique=False)
        batch_op.create_index(
            "ix_flow_responses_reply_to_message_id", ["reply_to_message_id"], unique=False
        )

    op.create_table(
        "flow_sends",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.String(length=64), nullable=True),
        sa.Column("flow_id", sa.String(length=64), nullable=True),
        sa.Column("flow_token", sa.String(length=255), nullable=True),
        sa.Column("flow_mode", sa.String(length=16), nullable=True),
        sa.Column("flow_cta", sa.String(length=64), nullable=True),
        sa.Column("flow_action", sa.String(length=32), nullable=True),
        sa.Column("screen", sa.String(length=128), nullable=True),
        sa.Column("channel", sa.String(length=64), nullable=True),
        sa.Column("identity", sa.String(length=128), nullable=True),
        sa.Column("contact_id", sa.String(length=64), nullable=True),
        sa.Column("conversation_id", sa.String(length=64), nullable=True),
        sa.Column("correlation_id", sa.String(length=128), nullable=True),
        sa.Column("send_status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "request_body",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("sent_at", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("submitted_at", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "source_event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["source_event_id"],
            ["callback_events.id"],
            name=op.f("fk_flow_sends_source_event_id_callback_events"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_sends")),
        sa.UniqueConstraint("message_id", name=op.f("uq_flow_sends_message_id")),
    )
    with op.batch_alter_table("flow_sends", schema=None) as batch_op:
        batch_op.create_index("ix_flow_sends_contact_id", ["contact_id"], unique=False)
        batch_op.create_index("ix_flow_sends_flow_id", ["flow_id"], unique=False)
        batch_op.create_index("ix_flow_sends_flow_token", ["flow_token"], unique=False)
        batch_op.create_index("ix_flow_sends_identity", ["identity"], unique=False)

    op.create_table(
        "inbound_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=True),
        sa.Column("identity", sa.String(length=128), nullable=True),
        sa.Column("contact_id", sa.String(length=64), nullable=True),
        sa.Column("conversation_id", sa.String(length=64), nullable=True),
        sa.Column("reply_to_message_id", sa.String(length=64), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("postback_data", sa.Text(), nullable=True),
        sa.Column("media_url", sa.Text(), nullable=True),
        sa.Column("metadata_text", sa.Text(), nullable=True),
        sa.Column("sender_id", sa.String(length=128), nullable=True),
        sa.Column("processing_mode", sa.String(length=16), nullable=True),
        sa.Column("accept_time", webhook.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "source_event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["source_event_id"],
            ["callback_events.id"],
            name=op.f("fk_inbound_messages_source_event_id_callback_events"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_messages")),
        sa.UniqueConstraint("message_id", name=op.f("uq_inbound_messages_message_id")),
    )
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.create_index("ix_inbound_messages_accept_time", ["accept_time"], unique=False)
        batch_op.create_index("ix_inbound_messages_contact_id", ["contact_id"], unique=False)
        batch_op.create_index("ix_inbound_messages_identity", ["identity"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_messages_identity")
        batch_op.drop_index("ix_inbound_messages_contact_id")
        batch_op.drop_index("ix_inbound_messages_accept_time")

    op.drop_table("inbound_messages")
    with op.batch_alter_table("flow_sends", schema=None) as batch_op:
        batch_op.drop_index("ix_flow_sends_identity")
        batch_op.drop_index("ix_flow_sends_flow_token")
        batch_op.drop_index("ix_flow_sends_flow_id")
        batch_op.drop_index("ix_flow_sends_contact_id")

    op.drop_table("flow_sends")
    with op.batch_alter_table("flow_responses", schema=None) as batch_op:
        batch_op.drop_index("ix_flow_responses_reply_to_message_id")
        batch_op.drop_index("ix_flow_responses_identity")
        batch_op.drop_index("ix_flow_responses_flow_token")
        batch_op.drop_index("ix_flow_responses_contact_id")
        batch_op.drop_index("ix_flow_responses_completed_at")

    op.drop_table("flow_responses")
    with op.batch_alter_table("delivery_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_reports_status_event_time")
        batch_op.drop_index("ix_delivery_reports_message_id")
        batch_op.drop_index("ix_delivery_reports_identity")
        batch_op.drop_index("ix_delivery_reports_contact_id")

    op.drop_table("delivery_reports")
    with op.batch_alter_table("message_status", schema=None) as batch_op:
        batch_op.drop_index("ix_message_status_status")
        batch_op.drop_index("ix_message_status_queued_at")

    op.drop_table("message_status")
    with op.batch_alter_table("flow_exchanges", schema=None) as batch_op:
        batch_op.drop_index("ix_flow_exchanges_received_at")
        batch_op.drop_index("ix_flow_exchanges_flow_token")

    op.drop_table("flow_exchanges")
    op.drop_table("erasures")
    with op.batch_alter_table("callback_events", schema=None) as batch_op:
        batch_op.drop_index("ix_callback_events_trigger_received_at")
        batch_op.drop_index("ix_callback_events_status")
        batch_op.drop_index("ix_callback_events_received_at")

    op.drop_table("callback_events")
