"""The outbox sweep's queries: dispatches the broker may have lost, and receipts a lost chord
callback never wrote (docs/operations.md, "Outbox replay").

`dispatches` is the outbox: every accepted request has a row there before anything is enqueued, so
whatever Redis forgets (a flush, a restart without persistence, a worker killed with messages
reserved) can be found again in PostgreSQL. Each function is one transaction; rows are taken with
FOR UPDATE SKIP LOCKED, so sweeps running at once split the rows between them and a row is
replayed by one sweep only. The caller enqueues after the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, or_, select, update

from worker.store.db import transaction
from worker.store.dispatches import _write_terminal, comms_log, dispatches
from worker.store.models import TERMINAL_OUTCOMES, TERMINAL_STATES, utcnow

#: States of a dispatch that is waiting for a Celery task to move it (`deferred` waits for the
#: deferral drain instead, and terminal ones for nothing).
LIVE_STATES = ("queued", "retrying", "sending")
#: How far back the reconciliation of lost receipts looks (keeps the sweep's scan small).
RECONCILE_LOOKBACK = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Replay:
    """A dispatch to enqueue again: the same round (task id) and the same try number as the
    message that was lost, exactly as if the broker had redelivered it."""

    message_id: uuid.UUID
    request: dict[str, Any]
    round_no: int
    retries: int
    replay_no: int


@dataclass(frozen=True, slots=True)
class Exhausted:
    message_id: uuid.UUID
    reason: str


@dataclass(frozen=True, slots=True)
class MissingFallback:
    """A failed (or suppressed) message whose fallback was never accepted."""

    message_id: uuid.UUID
    state: str
    error: str | None


def _has_terminal() -> Any:
    return (
        select(comms_log.c.id)
        .where(
            comms_log.c.message_id == dispatches.c.message_id,
            comms_log.c.outcome.in_(TERMINAL_OUTCOMES),
        )
        .exists()
    )


def tries_in_round(conn: Connection, message_id: uuid.UUID) -> int:
    """Retries already made in the message's current round: one more than the last RETRYING row's
    retry_count since its last parking, 0 when there is none."""
    last_parking = (
        select(func.coalesce(func.max(comms_log.c.id), 0))
        .where(comms_log.c.message_id == message_id, comms_log.c.outcome == "DEFERRED")
        .scalar_subquery()
    )
    last = conn.execute(
        select(func.max(comms_log.c.retry_count)).where(
            comms_log.c.message_id == message_id,
            comms_log.c.outcome == "RETRYING",
            comms_log.c.id > last_parking,
        )
    ).scalar()
    return 0 if last is None else int(last) + 1


def _lost_try(conn: Connection, row: Any) -> int:
    """The `retries` of the message that was lost."""
    if row.state == "sending" and row.claimed_by:
        tail = str(row.claimed_by).rsplit(":", 1)[-1]
        if tail.isdigit():
            return int(tail)
    if row.state == "queued":
        return 0
    return tries_in_round(conn, row.message_id)


def claim_stale(
    *, now: datetime | None = None, older_than: datetime, limit: int, max_replays: int
) -> tuple[list[Replay], list[Exhausted]]:
    """Take unfinished dispatches with no sign of life since `older_than`: no state change, no live
    lease, no retry still due. Each is either marked replayed (replays + 1, updated_at touched, so
    the next sweep waits a full period again) or, past `max_replays`, closed FAILED."""
    now = now or utcnow()
    with transaction() as conn:
        rows = conn.execute(
            select(dispatches)
            .where(
                dispatches.c.state.in_(LIVE_STATES),
                dispatches.c.updated_at < older_than,
                or_(dispatches.c.lease_until.is_(None), dispatches.c.lease_until < now),
                ~_has_terminal(),
            )
            .order_by(dispatches.c.updated_at)
            .limit(limit)
            .with_for_update(of=dispatches, skip_locked=True)
        ).all()
        replays: list[Replay] = []
        exhausted: list[Exhausted] = []
        for row in rows:
            if row.replays >= max_replays:
                reason = f"no progress after {row.replays} replays (last state {row.state})"
                conn.execute(
                    update(dispatches)
                    .where(dispatches.c.message_id == row.message_id)
                    .values(state="failed", error=reason, claimed_by=None, lease_until=None,
                            updated_at=now)
                )
                _write_terminal(conn, row, "FAILED", response_id=None,
                                retry_count=tries_in_round(conn, row.message_id), error=reason)
                exhausted.append(Exhausted(row.message_id, reason))
                continue
            conn.execute(
                update(dispatches)
                .where(dispatches.c.message_id == row.message_id)
                .values(replays=dispatches.c.replays + 1, updated_at=now)
            )
            replays.append(Replay(row.message_id, dict(row.request), int(row.parkings),
                                  _lost_try(conn, row), int(row.replays) + 1))
    return replays, exhausted


def reconcile_receipts(*, now: datetime | None = None, older_than: datetime,
                       limit: int) -> list[uuid.UUID]:
    """Write the missing terminal comms_log row of dispatches whose state is terminal but whose
    receipt never came (a chord callback lost with the broker, or a worker killed between the
    state commit and the callback). The row is built from the dispatch, as the callback would."""
    now = now or utcnow()
    with transaction() as conn:
        rows = conn.execute(
            select(dispatches)
            .where(
                dispatches.c.state.in_(TERMINAL_STATES),
                dispatches.c.updated_at < older_than,
                dispatches.c.updated_at >= now - RECONCILE_LOOKBACK,
                ~_has_terminal(),
            )
            .limit(limit)
            .with_for_update(of=dispatches, skip_locked=True)
        ).all()
        written: list[uuid.UUID] = []
        for row in rows:
            if _write_terminal(conn, row, row.state.upper(), response_id=row.response_id,
                               retry_count=tries_in_round(conn, row.message_id), error=row.error):
                written.append(row.message_id)
    return written


def missing_fallbacks(*, now: datetime | None = None, older_than: datetime,
                      channels: Sequence[str], limit: int) -> list[MissingFallback]:
    """First-generation dispatches of a channel that falls back, failed or suppressed before
    `older_than`, with no fallback dispatch: the fallback's `comms.dispatch` message was lost
    (Redis flushed, a worker killed as it took the message, or the process that failed the
    parent died before it enqueued the fallback). Invalid requests never fall back."""
    now = now or utcnow()
    child = dispatches.alias("child")
    has_fallback = select(child.c.message_id).where(
        child.c.parent_message_id == dispatches.c.message_id).exists()
    invalid = func.coalesce(dispatches.c.request["invalid_request"].as_boolean(), False)
    with transaction() as conn:
        rows = conn.execute(
            select(dispatches.c.message_id, dispatches.c.state, dispatches.c.error)
            .where(
                dispatches.c.state.in_(("failed", "suppressed")),
                dispatches.c.updated_at < older_than,
                dispatches.c.updated_at >= now - RECONCILE_LOOKBACK,
                dispatches.c.parent_message_id.is_(None),
                dispatches.c.channel.in_(list(channels)),
                invalid.is_(False),
                ~has_fallback,
            )
            .order_by(dispatches.c.updated_at)
            .limit(limit)
        ).all()
    return [MissingFallback(row.message_id, row.state, row.error) for row in rows]
