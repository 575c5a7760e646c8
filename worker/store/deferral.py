"""Parked work in PostgreSQL: anything that waits longer than a Celery countdown may (quiet hours,
e-mail's 15-minute retry, a vendor's long Retry-After) waits here, never in a broker ETA.

The drain claims due rows with FOR UPDATE SKIP LOCKED, so drains running at once split the rows
between them; in the same transaction each claimed dispatch goes back to `queued`, so if the
enqueue after commit is lost the outbox sweep still sees a stale, unfinished dispatch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select, update

from worker.store.db import transaction
from worker.store.dispatches import _dispatch_row, _insert, _log_values, comms_log, dispatches
from worker.store.models import Deferred, utcnow

deferred = cast(Table, Deferred.__table__)


def park(message_id: uuid.UUID, *, due_at: datetime, reason: str, retry_count: int) -> int:
    """Park a dispatch until `due_at` with a DEFERRED receipt; returns its parking number."""
    with transaction() as conn:
        row = _dispatch_row(conn, message_id)
        round_no = int(row.parkings) + 1
        conn.execute(
            _insert(conn, deferred)
            .values(message_id=message_id, round_no=round_no, due_at=due_at, reason=reason,
                    status="pending", created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["message_id", "round_no"])
        )
        conn.execute(
            update(dispatches)
            .where(dispatches.c.message_id == message_id)
            .values(state="deferred", parkings=round_no, claimed_by=None, lease_until=None,
                    error=reason, updated_at=utcnow())
        )
        conn.execute(comms_log.insert().values(
            **_log_values(row, "DEFERRED", response_id=None, retry_count=retry_count,
                          error=f"{reason}; due {due_at.isoformat(timespec='seconds')}")))
        return round_no


@dataclass(frozen=True, slots=True)
class Due:
    message_id: uuid.UUID
    round_no: int
    request: dict[str, object]


def claim_due(*, now: datetime, limit: int, claimer: str) -> list[Due]:
    """Take up to `limit` due rows for this drain; each row is taken by exactly one drain."""
    with transaction() as conn:
        picked = (
            select(deferred.c.id)
            .where(deferred.c.status == "pending", deferred.c.due_at <= now)
            .order_by(deferred.c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = conn.execute(
            update(deferred)
            .where(deferred.c.id.in_(picked.scalar_subquery()), deferred.c.status == "pending")
            .values(status="enqueued", claimed_by=claimer, enqueued_at=now)
            .returning(deferred.c.message_id, deferred.c.round_no)
        ).all()
        if not rows:
            return []
        ids = [r.message_id for r in rows]
        conn.execute(
            update(dispatches)
            .where(dispatches.c.message_id.in_(ids), dispatches.c.state == "deferred")
            .values(state="queued", updated_at=utcnow())
        )
        requests = {row.message_id: row.request for row in conn.execute(
            select(dispatches.c.message_id, dispatches.c.request)
            .where(dispatches.c.message_id.in_(ids))
        )}
    return [Due(r.message_id, int(r.round_no), dict(requests[r.message_id])) for r in rows]


def pending(message_id: uuid.UUID) -> list[dict[str, Any]]:
    with transaction() as conn:
        rows = conn.execute(
            select(deferred).where(deferred.c.message_id == message_id).order_by(deferred.c.id)
        ).mappings().all()
    return [dict(r) for r in rows]
