"""The dispatch lifecycle in the database: accept once, claim before send, record every outcome.

Every function is one transaction. Terminal receipts are written with INSERT .. ON CONFLICT DO
NOTHING against comms_log's partial unique index, so the chord callback, the failure handler and
the reconciling sweep may all try and still only one terminal row exists.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from channels.base import without_nul
from worker.store import group_commit
from worker.store.db import transaction
from worker.store.group_commit import GroupCommit
from worker.store.models import (
    TERMINAL_OUTCOMES,
    TERMINAL_STATES,
    CommsLog,
    Dispatch,
    utcnow,
)

dispatches = cast(Table, Dispatch.__table__)
comms_log = cast(Table, CommsLog.__table__)

#: outcome -> dispatch state
STATE_FOR = {"SENT": "sent", "FAILED": "failed", "SUPPRESSED": "suppressed"}


def _insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (PostgreSQL and SQLite alike)."""
    return _dialect_insert(conn.dialect.name, table)


def _dialect_insert(dialect_name: str, table: Table) -> Any:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table)


#: The dispatch columns a comms_log row copies (RETURNING them saves a read per receipt).
_LOG_SOURCE = (
    dispatches.c.message_id,
    dispatches.c.recipient,
    dispatches.c.channel,
    dispatches.c.signal_type,
    dispatches.c.severity,
    dispatches.c.parent_message_id,
)
_LOG_COLUMNS = ("message_id", "recipient", "channel", "signal_type", "severity", "outcome",
                "dispatched_at", "response_id", "retry_count", "error", "parent_message_id")


class _Statements:
    """The hot path's statements, built once per dialect with bind parameters: building a
    SQLAlchemy statement on every call cost about as much CPU as running it (docs/scaling.md)."""

    def __init__(self, dialect_name: str) -> None:
        d = dispatches.c
        self.accept = (
            _dialect_insert(dialect_name, dispatches)
            .values(
                message_id=bindparam("b_mid"), channel=bindparam("b_channel"),
                recipient=bindparam("b_recipient"), priority=bindparam("b_priority"),
                signal_type=bindparam("b_signal_type"), severity=bindparam("b_severity"),
                parent_message_id=bindparam("b_parent"), request=bindparam("b_request"),
                state=bindparam("b_state"), claimed_by=bindparam("b_holder"),
                lease_until=bindparam("b_lease_until"), attempts=bindparam("b_attempts"),
                replays=0, parkings=0, created_at=bindparam("b_now"),
                updated_at=bindparam("b_now"),
            )
            .on_conflict_do_nothing(index_elements=["message_id"])
            .returning(d.message_id)
        )
        self.state = select(d.state).where(d.message_id == bindparam("b_mid"))
        self.claim = (
            update(dispatches)
            .where(
                d.message_id == bindparam("b_mid"),
                d.state.not_in(TERMINAL_STATES),
                or_(d.state != "sending", d.lease_until < bindparam("b_now")),
            )
            .values(state="sending", claimed_by=bindparam("b_holder"),
                    lease_until=bindparam("b_lease_until"), attempts=d.attempts + 1,
                    updated_at=bindparam("b_now"))
            .returning(d.request, d.attempts)
        )
        self.to_retrying = (
            update(dispatches)
            .where(d.message_id == bindparam("b_mid"), d.state == "sending")
            .values(state="retrying", claimed_by=None, lease_until=bindparam("b_expect_by"),
                    error=bindparam("b_error"), updated_at=bindparam("b_now"))
            .returning(*_LOG_SOURCE)
        )
        self.finish = (
            update(dispatches)
            .where(d.message_id == bindparam("b_mid"), d.state.not_in(TERMINAL_STATES))
            .values(state=bindparam("b_state"), response_id=bindparam("b_response_id"),
                    error=bindparam("b_error"), claimed_by=None, lease_until=None,
                    updated_at=bindparam("b_now"))
            .returning(*_LOG_SOURCE)
        )
        self.dispatch_row = select(dispatches).where(d.message_id == bindparam("b_mid"))
        # PostgreSQL: the state change and the terminal row in one statement (one round trip).
        done = self.finish.cte("done")
        self.finish_and_log = (
            postgresql.insert(comms_log)
            .from_select(list(_LOG_COLUMNS), select(
                done.c.message_id, done.c.recipient, done.c.channel, done.c.signal_type,
                done.c.severity,
                *(bindparam(f"l_{c}", type_=comms_log.c[c].type)
                  for c in ("outcome", "dispatched_at", "response_id", "retry_count", "error")),
                done.c.parent_message_id,
            ))
            .on_conflict_do_nothing(
                index_elements=["message_id"],
                index_where=comms_log.c.outcome.in_(TERMINAL_OUTCOMES),
            )
            .returning(comms_log.c.id)
            .add_cte(done)
        ) if dialect_name == "postgresql" else None
        log_values: dict[str, Any] = {c: bindparam(f"l_{c}") for c in _LOG_COLUMNS}
        self.log = comms_log.insert().values(**log_values)
        self.terminal = (
            _dialect_insert(dialect_name, comms_log)
            .values(**log_values)
            .on_conflict_do_nothing(
                index_elements=["message_id"],
                index_where=comms_log.c.outcome.in_(TERMINAL_OUTCOMES),
            )
            .returning(comms_log.c.id)
        )


@cache
def _built(dialect_name: str) -> _Statements:
    return _Statements(dialect_name)


def _stmts(conn: Connection) -> _Statements:
    return _built(conn.dialect.name)


# -- group commit (PostgreSQL): one statement for every thread writing at the same moment -------
# Arrays in, unnest() to rows: the statement's text is the same for any batch size, so psycopg2
# only adapts the parameters, and one round trip carries the batch.

_TERMINAL_STATES_SQL = ", ".join(f"'{s}'" for s in TERMINAL_STATES)
_TERMINAL_OUTCOMES_SQL = ", ".join(f"'{s}'" for s in TERMINAL_OUTCOMES)

_ACCEPT_MANY = """
INSERT INTO dispatches (message_id, channel, recipient, priority, signal_type, severity,
    parent_message_id, request, state, claimed_by, lease_until, attempts, replays, parkings,
    created_at, updated_at)
SELECT mid, channel, recipient, priority, signal_type, severity, parent, request::json, state,
    holder, lease_until, attempts, 0, 0, now, now
FROM unnest(%(mid)s::uuid[], %(channel)s::text[], %(recipient)s::text[], %(priority)s::text[],
    %(signal_type)s::text[], %(severity)s::text[], %(parent)s::uuid[], %(request)s::text[],
    %(state)s::text[], %(holder)s::text[], %(lease_until)s::timestamptz[],
    %(attempts)s::int[], %(now)s::timestamptz[])
    AS i(mid, channel, recipient, priority, signal_type, severity, parent, request, state,
         holder, lease_until, attempts, now)
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id
"""

_STATES = "SELECT message_id, state FROM dispatches WHERE message_id = ANY(%(mid)s::uuid[])"

_FINISH_MANY = f"""
WITH i AS (
    SELECT * FROM unnest(%(mid)s::uuid[], %(state)s::text[], %(outcome)s::text[],
        %(response_id)s::text[], %(error)s::text[], %(retry_count)s::int[],
        %(now)s::timestamptz[])
        AS i(mid, state, outcome, response_id, error, retry_count, now)
), done AS (
    UPDATE dispatches d
    SET state = i.state, response_id = i.response_id, error = i.error, claimed_by = NULL,
        lease_until = NULL, updated_at = i.now
    FROM i
    WHERE d.message_id = i.mid AND d.state NOT IN ({_TERMINAL_STATES_SQL})
    RETURNING d.message_id, d.recipient, d.channel, d.signal_type, d.severity,
        d.parent_message_id, i.outcome, i.now, i.response_id, i.retry_count, i.error
)
INSERT INTO comms_log (message_id, recipient, channel, signal_type, severity, outcome,
    dispatched_at, response_id, retry_count, error, parent_message_id)
SELECT message_id, recipient, channel, signal_type, severity, outcome, now, response_id,
    retry_count, error, parent_message_id
FROM done
ON CONFLICT (message_id) WHERE outcome IN ({_TERMINAL_OUTCOMES_SQL}) DO NOTHING
RETURNING message_id
"""


@dataclass(frozen=True, slots=True)
class Accepted:
    new: bool
    state: str


def accept(
    request: dict[str, Any],
    *,
    message_id: uuid.UUID,
    channel: str,
    recipient: str,
    priority: str,
    signal_type: str | None,
    severity: str | None,
    parent_message_id: uuid.UUID | None,
    state: str = "queued",
    claim_for: str | None = None,
    lease_seconds: float = 0.0,
) -> Accepted:
    """Record a request once per message_id; a repeat is reported, never recorded twice.

    With `claim_for` (a holder, as for `claim`), a new request is also claimed for sending, in
    the same statement: the dispatch task then makes the first attempt itself."""
    now = utcnow()
    claiming = claim_for is not None
    if claiming:
        state = "sending"
    binds = {
        "b_mid": message_id, "b_channel": channel, "b_recipient": recipient,
        "b_priority": priority, "b_signal_type": signal_type, "b_severity": severity,
        "b_parent": parent_message_id, "b_request": request,
        "b_state": state, "b_holder": claim_for,
        "b_lease_until": now + timedelta(seconds=lease_seconds) if claiming else None,
        "b_attempts": 1 if claiming else 0, "b_now": now,
    }
    if group_commit.enabled():
        return _accept_group(binds)
    return _accept_one(binds)


def _accept_one(binds: dict[str, Any]) -> Accepted:
    with transaction() as conn:
        st = _stmts(conn)
        if conn.execute(st.accept, binds).first() is not None:
            return Accepted(True, binds["b_state"])
        current = conn.execute(st.state, {"b_mid": binds["b_mid"]}).scalar_one()
        return Accepted(False, current)


def _accept_many(batch: Sequence[dict[str, Any]]) -> list[Accepted]:
    """`_accept_one` for many requests (one per message, GroupCommit sees to it): one INSERT and
    at most one SELECT, one transaction."""
    def column(key: str) -> list[Any]:
        return [b[key] for b in batch]

    with transaction() as conn:
        inserted = {uuid.UUID(str(m)) for m in conn.exec_driver_sql(_ACCEPT_MANY, {
            "mid": [str(m) for m in column("b_mid")], "channel": column("b_channel"),
            "recipient": column("b_recipient"), "priority": column("b_priority"),
            "signal_type": column("b_signal_type"), "severity": column("b_severity"),
            "parent": [None if p is None else str(p) for p in column("b_parent")],
            "request": [json.dumps(r) for r in column("b_request")],
            "state": column("b_state"), "holder": column("b_holder"),
            "lease_until": column("b_lease_until"), "attempts": column("b_attempts"),
            "now": column("b_now"),
        }).scalars()}
        known = [str(b["b_mid"]) for b in batch if b["b_mid"] not in inserted]
        states = {uuid.UUID(str(m)): state for m, state in conn.exec_driver_sql(
            _STATES, {"mid": known}).all()} if known else {}
    return [Accepted(True, b["b_state"]) if b["b_mid"] in inserted
            else Accepted(False, states[b["b_mid"]]) for b in batch]


@dataclass(frozen=True, slots=True)
class Claim:
    request: dict[str, Any]
    attempts: int


def claim(message_id: uuid.UUID, *, holder: str, lease_seconds: float) -> Claim | None:
    """Take the right to call the vendor for this message, or None when that would be a duplicate.

    Claimable: not terminal, and not held by a live lease. No try ever takes over a live lease,
    not even a later try of the same task: a pool child lost mid-send has its lease released by
    the worker's main process (`release_lost_claim`), anything else waits for the lease to end.
    `holder` is "<task id>:<retries>".
    """
    now = utcnow()
    with transaction() as conn:
        row = conn.execute(_stmts(conn).claim, {
            "b_mid": message_id, "b_now": now, "b_holder": holder,
            "b_lease_until": now + timedelta(seconds=lease_seconds),
        }).first()
    return None if row is None else Claim(dict(row.request), int(row.attempts))


def release_lost_claim(message_id: uuid.UUID, *, holder: str, state: str = "retrying") -> bool:
    """The try `holder` died with its pool child and Celery retries it: free its lease so the retry
    can claim at once. Only that holder's lease is released; returns whether it was. A first
    attempt lost inside comms.dispatch goes back to `queued`, so the retried dispatch routes it."""
    with transaction() as conn:
        released = conn.execute(
            update(dispatches)
            .where(
                dispatches.c.message_id == message_id,
                dispatches.c.state == "sending",
                dispatches.c.claimed_by == holder,
            )
            .values(state=state, claimed_by=None, lease_until=None, updated_at=utcnow())
            .returning(dispatches.c.message_id)
        ).first()
    return released is not None


def _log_values(
    row: Any, outcome: str, *, response_id: str | None, retry_count: int, error: str | None
) -> dict[str, Any]:
    return {
        "message_id": row.message_id,
        "recipient": row.recipient,
        "channel": row.channel,
        "signal_type": row.signal_type,
        "severity": row.severity,
        "outcome": outcome,
        "dispatched_at": utcnow(),
        "response_id": response_id,
        "retry_count": retry_count,
        "error": error,
        "parent_message_id": row.parent_message_id,
    }


def _log_binds(row: Any, outcome: str, *, response_id: str | None, retry_count: int,
               error: str | None) -> dict[str, Any]:
    values = _log_values(row, outcome, response_id=response_id, retry_count=retry_count,
                         error=error)
    return {f"l_{k}": v for k, v in values.items()}


def _dispatch_row(conn: Connection, message_id: uuid.UUID) -> Any:
    return conn.execute(_stmts(conn).dispatch_row, {"b_mid": message_id}).first()


def _write_terminal(
    conn: Connection,
    row: Any,
    outcome: str,
    *,
    response_id: str | None,
    retry_count: int,
    error: str | None,
) -> bool:
    binds = _log_binds(row, outcome, response_id=response_id, retry_count=retry_count,
                       error=error)
    return conn.execute(_stmts(conn).terminal, binds).first() is not None


def record_retrying(
    message_id: uuid.UUID, *, retry_count: int, error: str, expect_by: datetime | None = None
) -> None:
    """A failed attempt that will be retried: a RETRYING row, and the lease released.

    `expect_by` is when the retry should have started at the latest (its countdown plus slack);
    it is kept in `lease_until`, which the claim ignores for a `retrying` row, so the outbox sweep
    does not replay a retry that is merely waiting out its countdown."""
    with transaction() as conn:
        st = _stmts(conn)
        row = conn.execute(st.to_retrying, {
            "b_mid": message_id, "b_expect_by": expect_by, "b_error": error, "b_now": utcnow(),
        }).first() or _dispatch_row(conn, message_id)
        conn.execute(st.log, _log_binds(row, "RETRYING", response_id=None,
                                        retry_count=retry_count, error=error))


def finish(
    message_id: uuid.UUID,
    outcome: str,
    *,
    response_id: str | None = None,
    retry_count: int = 0,
    error: str | None = None,
    write_receipt: bool = True,
) -> bool:
    """Record the end of a dispatch; with `write_receipt`, its terminal comms_log row too (same
    transaction). Returns whether a terminal row was written now."""
    now = utcnow()
    binds = {"b_mid": message_id, "b_state": STATE_FOR[outcome], "b_response_id": response_id,
             "b_error": error, "b_now": now, "l_outcome": outcome, "l_dispatched_at": now,
             "l_response_id": response_id, "l_retry_count": retry_count, "l_error": error}
    if write_receipt and group_commit.enabled():
        return _finish_group(binds)
    return _finish_one(binds, write_receipt=write_receipt)


def _finish_one(binds: dict[str, Any], *, write_receipt: bool = True) -> bool:
    with transaction() as conn:
        st = _stmts(conn)
        if write_receipt and st.finish_and_log is not None:
            if conn.execute(st.finish_and_log, binds).first() is not None:
                return True
            # Nothing written: the state is terminal now (the UPDATE below could not match), and
            # the insert from the stored row only fills a missing terminal row.
            row = None
        else:
            row = conn.execute(st.finish, binds).first()
            if not write_receipt:
                return False
        if row is None:  # already terminal: the insert below is a no-op unless its row is missing
            row = _dispatch_row(conn, binds["b_mid"])
        return _write_terminal(
            conn, row, binds["l_outcome"], response_id=binds["l_response_id"],
            retry_count=binds["l_retry_count"], error=binds["l_error"],
        )


def _finish_many(batch: Sequence[dict[str, Any]]) -> list[bool | Exception]:
    """`_finish_one` for many messages (one each): the state changes and the terminal rows in one
    statement. A message it did not settle (already terminal) goes the one-row way afterwards,
    which fills a missing terminal row exactly as a lone call would; what that raises goes to its
    caller alone (the batch is committed: run again, its callers would be told that their rows
    were not written now, and a failure's fallback would not start)."""
    with transaction() as conn:
        written = {uuid.UUID(str(m)) for m in conn.exec_driver_sql(_FINISH_MANY, {
            "mid": [str(b["b_mid"]) for b in batch],
            "state": [b["b_state"] for b in batch],
            "outcome": [b["l_outcome"] for b in batch],
            "response_id": [b["b_response_id"] for b in batch],
            "error": [b["b_error"] for b in batch],
            "retry_count": [b["l_retry_count"] for b in batch],
            "now": [b["b_now"] for b in batch],
        }).scalars()}
    return [True if b["b_mid"] in written else group_commit.alone(_finish_one, b)
            for b in batch]


def message_key(binds: dict[str, Any]) -> uuid.UUID:
    """The row a dispatch write takes: its message."""
    return cast(uuid.UUID, binds["b_mid"])


_accept_group = GroupCommit(_accept_many, _accept_one, key=message_key,
                            delay=group_commit.configured_delay)
_finish_group = GroupCommit(_finish_many, _finish_one, key=message_key,
                            delay=group_commit.configured_delay)


def write_terminal_receipt(
    message_id: uuid.UUID,
    outcome: str,
    *,
    response_id: str | None,
    retry_count: int,
    error: str | None,
) -> bool:
    """The terminal comms_log row, unless one exists. Also settles the dispatch state."""
    return finish(
        message_id,
        outcome,
        response_id=response_id,
        retry_count=retry_count,
        error=error,
        write_receipt=True,
    )


def fail_unless_terminal(message_id: uuid.UUID, error: str) -> bool:
    """Close a dispatch that died without a verdict (worker lost, a bug) as FAILED."""
    with transaction() as conn:
        row = _dispatch_row(conn, message_id)
        if row is None:
            return False
        if row.state in TERMINAL_STATES:
            outcome = row.state.upper()
            return _write_terminal(
                conn,
                row,
                outcome,
                response_id=row.response_id,
                retry_count=max(row.attempts - 1, 0),
                error=row.error,
            )
    return finish(message_id, "FAILED", retry_count=max(row.attempts - 1, 0), error=error)


def reject(raw: Any, *, message_id: uuid.UUID, problems: str) -> None:
    """A request that failed validation: recorded as failed with one FAILED row, never sent."""
    fields = raw if isinstance(raw, dict) else {}

    def text(key: str, limit: int) -> str | None:
        value = fields.get(key)
        return None if value is None else without_nul(str(value))[:limit]

    problems = without_nul(problems)  # an invalid request may carry a NUL anywhere

    accepted = accept(
        {"invalid_request": True, "problems": problems},
        message_id=message_id,
        channel=text("channel", 16) or "unknown",
        recipient=text("recipient", 320) or "",
        priority=text("priority", 8) or "",
        signal_type=text("signal_type", 100),
        severity=text("severity", 40),
        parent_message_id=None,
        state="failed",
    )
    with transaction() as conn:
        row = _dispatch_row(conn, message_id)
        if accepted.new or row.state == "failed":
            _write_terminal(conn, row, "FAILED", response_id=None, retry_count=0, error=problems)


# -- reading ------------------------------------------------------------------------------------


def log_rows(message_id: uuid.UUID) -> list[dict[str, Any]]:
    with transaction() as conn:
        rows = (
            conn.execute(
                select(comms_log)
                .where(comms_log.c.message_id == message_id)
                .order_by(comms_log.c.id)
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


def terminal_row(message_id: uuid.UUID) -> dict[str, Any] | None:
    with transaction() as conn:
        row = (
            conn.execute(
                select(comms_log).where(
                    comms_log.c.message_id == message_id,
                    comms_log.c.outcome.in_(TERMINAL_OUTCOMES),
                )
            )
            .mappings()
            .first()
        )
    return None if row is None else dict(row)


def accepted_ids(message_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these messages a `comms.dispatch` has accepted (a `dispatches` row exists)."""
    found: set[uuid.UUID] = set()
    ids = list(message_ids)
    with transaction() as conn:
        for start in range(0, len(ids), 1000):  # bounded IN lists
            found.update(conn.execute(
                select(dispatches.c.message_id)
                .where(dispatches.c.message_id.in_(ids[start:start + 1000]))
            ).scalars())
    return found


def get_dispatch(message_id: uuid.UUID) -> dict[str, Any] | None:
    with transaction() as conn:
        row = (
            conn.execute(select(dispatches).where(dispatches.c.message_id == message_id))
            .mappings()
            .first()
        )
    return None if row is None else dict(row)
