"""initial schema: dispatches, comms_log, contacts, fcm_tokens, deferred_dispatches

Revision ID: 0001
Revises:
Create Date: 2026-12-04 16:17:34.476278
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.store.models

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "comms_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("signal_type", sa.String(length=100), nullable=True),
        sa.Column("severity", sa.String(length=40), nullable=True),
        sa.Column("outcome", sa.String(length=12), nullable=False),
        sa.Column("dispatched_at", worker.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("response_id", sa.String(length=255), nullable=True),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("parent_message_id", sa.Uuid(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('SENT', 'FAILED', 'SUPPRESSED', 'RETRYING', 'DEFERRED')",
            name=op.f("ck_comms_log_outcome"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comms_log")),
    )
    with op.batch_alter_table("comms_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_comms_log_message_id"), ["message_id"], unique=False)
        batch_op.create_index(
            "uq_comms_log_terminal",
            ["message_id"],
            unique=True,
            postgresql_where=sa.text("outcome IN ('SENT', 'FAILED', 'SUPPRESSED')"),
            sqlite_where=sa.text("outcome IN ('SENT', 'FAILED', 'SUPPRESSED')"),
        )

    op.create_table(
        "contacts",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("sms_opt_out", sa.Boolean(), nullable=False),
        sa.Column("push_enabled", sa.Boolean(), nullable=False),
        sa.Column("email_unsubscribed", sa.Boolean(), nullable=False),
        sa.Column("updated_at", worker.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("email", name=op.f("pk_contacts")),
    )
    op.create_table(
        "deferred_dispatches",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("round_no", sa.Integer(), nullable=False),
        sa.Column("due_at", worker.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("claimed_by", sa.String(length=120), nullable=True),
        sa.Column("enqueued_at", worker.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", worker.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deferred_dispatches")),
    )
    with op.batch_alter_table("deferred_dispatches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deferred_dispatches_message_id"), ["message_id"], unique=False
        )
        batch_op.create_index("ix_deferred_status_due", ["status", "due_at"], unique=False)
        batch_op.create_index("uq_deferred_round", ["message_id", "round_no"], unique=True)

    op.create_table(
        "dispatches",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("signal_type", sa.String(length=100), nullable=True),
        sa.Column("severity", sa.String(length=40), nullable=True),
        sa.Column("parent_message_id", sa.Uuid(), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=120), nullable=True),
        sa.Column("lease_until", worker.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("response_id", sa.String(length=255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("replays", sa.Integer(), nullable=False),
        sa.Column("parkings", sa.Integer(), nullable=False),
        sa.Column("created_at", worker.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", worker.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('queued', 'sending', 'retrying', 'deferred', "
            "'sent', 'failed', 'suppressed')",
            name=op.f("ck_dispatches_state"),
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_dispatches")),
    )
    with op.batch_alter_table("dispatches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dispatches_parent_message_id"), ["parent_message_id"], unique=False
        )
        batch_op.create_index("ix_dispatches_state_updated", ["state", "updated_at"], unique=False)

    op.create_table(
        "fcm_tokens",
        sa.Column("token", sa.String(length=4096), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("created_at", worker.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["email"],
            ["contacts.email"],
            name=op.f("fk_fcm_tokens_email_contacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_fcm_tokens")),
    )
    with op.batch_alter_table("fcm_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fcm_tokens_email"), ["email"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fcm_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fcm_tokens_email"))

    op.drop_table("fcm_tokens")
    with op.batch_alter_table("dispatches", schema=None) as batch_op:
        batch_op.drop_index("ix_dispatches_state_updated")
        batch_op.drop_index(batch_op.f("ix_dispatches_parent_message_id"))

    op.drop_table("dispatches")
    with op.batch_alter_table("deferred_dispatches", schema=None) as batch_op:
        batch_op.drop_index("uq_deferred_round")
        batch_op.drop_index("ix_deferred_status_due")
        batch_op.drop_index(batch_op.f("ix_deferred_dispatches_message_id"))

    op.drop_table("deferred_dispatches")
    op.drop_table("contacts")
    with op.batch_alter_table("comms_log", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_comms_log_terminal",
            postgresql_where=sa.text("outcome IN ('SENT', 'FAILED', 'SUPPRESSED')"),
            sqlite_where=sa.text("outcome IN ('SENT', 'FAILED', 'SUPPRESSED')"),
        )
        batch_op.drop_index(batch_op.f("ix_comms_log_message_id"))

    op.drop_table("comms_log")
