"""Tables. `comms_log` keeps the seed's columns; the schema itself enforces one terminal row per
message_id (a partial unique index), so no code path can write a second one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TERMINAL_OUTCOMES = ("SENT", "FAILED", "SUPPRESSED")
OUTCOMES = (*TERMINAL_OUTCOMES, "RETRYING", "DEFERRED")
#: Dispatch lifecycle. queued -> sending -> (retrying -> sending)* -> sent|failed|suppressed;
#: deferred while parked in the deferral table.
DISPATCH_STATES = ("queued", "sending", "retrying", "deferred", "sent", "failed", "suppressed")
TERMINAL_STATES = ("sent", "failed", "suppressed")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, also on SQLite (which stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: SQLite only autoincrements INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime, uuid.UUID: Uuid}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Dispatch(Base):
    """One accepted request, the unit of idempotency (message_id) and of claim-before-send."""

    __tablename__ = "dispatches"

    message_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(320))
    priority: Mapped[str] = mapped_column(String(8))
    signal_type: Mapped[str | None] = mapped_column(String(100))
    severity: Mapped[str | None] = mapped_column(String(40))
    parent_message_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    #: The validated request envelope (no secrets: credentials live in the environment only).
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(12), default="queued")
    #: Vendor calls started so far (a claim counts one).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Who holds the send: "<celery task id>:<retries>"; the lease ends at lease_until.
    claimed_by: Mapped[str | None] = mapped_column(String(120))
    lease_until: Mapped[datetime | None]
    response_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    #: Times the outbox sweep re-enqueued it.
    replays: Mapped[int] = mapped_column(Integer, default=0)
    #: Times it was parked for a later round (e-mail's 15-minute retry).
    parkings: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint(_in("state", DISPATCH_STATES), name="state"),
        Index("ix_dispatches_state_updated", "state", "updated_at"),
    )


class CommsLog(Base):
    """The receipt log (design.md §3): one row per attempt outcome, appended."""

    __tablename__ = "comms_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[uuid.UUID] = mapped_column(index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    channel: Mapped[str] = mapped_column(String(16))
    signal_type: Mapped[str | None] = mapped_column(String(100))
    severity: Mapped[str | None] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(12))
    dispatched_at: Mapped[datetime] = mapped_column(default=utcnow)
    response_id: Mapped[str | None] = mapped_column(String(255))
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    #: A fallback's row points at the message whose failure started it.
    parent_message_id: Mapped[uuid.UUID | None]

    __table_args__ = (
        CheckConstraint(_in("outcome", OUTCOMES), name="outcome"),
        Index(
            "uq_comms_log_terminal",
            "message_id",
            unique=True,
            postgresql_where=text(_in("outcome", TERMINAL_OUTCOMES)),
            sqlite_where=text(_in("outcome", TERMINAL_OUTCOMES)),
        ),
    )


class Contact(Base):
    """What we know of a customer; opt-outs here win over anything a request says."""

    __tablename__ = "contacts"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(32))
    timezone: Mapped[str | None] = mapped_column(String(64))
    sms_opt_out: Mapped[bool] = mapped_column(Boolean, default=False)
    push_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    email_unsubscribed: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class FcmToken(Base):
    __tablename__ = "fcm_tokens"

    token: Mapped[str] = mapped_column(String(4096), primary_key=True)
    email: Mapped[str] = mapped_column(ForeignKey("contacts.email", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deferred(Base):
    """Work parked until `due_at` (e-mail's 15-minute retry, quiet hours), drained by beat."""

    __tablename__ = "deferred_dispatches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[uuid.UUID] = mapped_column(index=True)
    #: Which parking this is for the message (1, 2, ...): unique, so one parking per round.
    round_no: Mapped[int] = mapped_column(Integer)
    due_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text)
    #: pending -> enqueued
    status: Mapped[str] = mapped_column(String(10), default="pending")
    claimed_by: Mapped[str | None] = mapped_column(String(120))
    enqueued_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("uq_deferred_round", "message_id", "round_no", unique=True),
        Index("ix_deferred_status_due", "status", "due_at"),
    )
