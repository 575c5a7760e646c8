"""Terminal receipts: the chord callback, and the safety nets for when it cannot run.

Why the nets (design.md §6): Celery never calls a chord's body when a header task fails, and a
worker killed mid-task never returns at all. So:
- SENT / SUPPRESSED: written by `comms.receipt`, the chord body (the design card's mechanism);
- FAILED: written by the channel task itself before it raises (the chord body will not run);
- a task that died without a verdict (WorkerLostError, a bug): the `task_failure` handler below,
  which runs in the worker's main process even when the pool child is gone;
- a callback lost with the broker: the outbox sweep reconciles it from `dispatches`
  (tasks/maintenance.py);
- a pool child lost mid-send and retried by Celery: `_release_lost_claim` frees its lease.
All of them insert against the partial unique index, so the log keeps exactly one terminal row.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task
from celery.exceptions import WorkerLostError
from celery.signals import task_failure, task_retry
from sqlalchemy.exc import OperationalError

from tasks.outcomes import Result
from worker.celery_app import app
from worker.store import dispatches as store
from worker.store.db import is_connection_problem

log = logging.getLogger(__name__)

TERMINAL = ("SENT", "FAILED", "SUPPRESSED")


# PostgreSQL unreachable (or out of connections): try again, 1 s doubling to 30 s, instead of
# leaving the row to the outbox sweep's reconciliation minutes later.
@app.task(name="comms.receipt", bind=True, acks_late=True, max_retries=10, default_retry_delay=1,
          autoretry_for=(OperationalError,), retry_backoff=True, retry_backoff_max=30,
          retry_jitter=False)
def record_receipt(self: Task, results: list[Result]) -> int:
    """Chord body: write the terminal row of each header result; returns how many were new."""
    written = 0
    for res in results:
        if res["outcome"] in TERMINAL:
            written += store.write_terminal_receipt(
                uuid.UUID(res["message_id"]),
                res["outcome"],
                response_id=res["response_id"],
                retry_count=res["retry_count"],
                error=res["error"],
            )
    # The header results are only needed until now; free them so Redis returns to its baseline.
    for res in results:
        self.app.AsyncResult(res["task_id"]).forget()
    return written


@task_failure.connect
def _close_failed_dispatch(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    """Any channel task that ends in FAILURE leaves a terminal row, whatever killed it."""
    name = getattr(sender, "name", "") or ""
    message_id = (kwargs or {}).get("message_id") if isinstance(kwargs, dict) else None
    if not name.startswith("comms.") or message_id is None:
        return
    if exception is not None and is_connection_problem(exception):
        # PostgreSQL was unreachable: not the message's fault, and its state could not be
        # recorded. Left unfinished, the outbox sweep replays it once the database is back.
        log.warning("dispatch %s left for the outbox sweep: database unreachable", message_id)
        return
    try:
        store.fail_unless_terminal(
            uuid.UUID(message_id), f"{type(exception).__name__}: {exception}"
        )
    except Exception:
        log.exception("could not close dispatch %s after failure", message_id)


@task_retry.connect
def _release_lost_claim(sender: Any = None, request: Any = None, reason: Any = None,
                        **_: Any) -> None:
    """A pool child died mid-task and Celery retries it (`task_retry_on_worker_lost`): release the
    dead try's lease, so the retry can claim the send. Runs in the worker's main process. Without
    this the retry would find the lease live and skip, and the outbox sweep would replay the
    message once the lease and COMMS_REPLAY_AFTER have passed: later, but never lost."""
    name = getattr(sender, "name", "") or ""
    if not name.startswith("comms.") or not isinstance(getattr(reason, "exc", None),
                                                        WorkerLostError):
        return
    kwargs = getattr(request, "kwargs", None) or {}
    if not isinstance(kwargs, dict):
        return
    if name == "comms.dispatch":
        # Its first attempt (tasks.delivery.FirstAttempt) held the claim as "<task id>:0"; back
        # to `queued`, the retried dispatch routes the message.
        from tasks.dispatch import usable_message_id

        message_id: str | None = str(usable_message_id(kwargs.get("request"), request.id))
        holder, state = f"{request.id}:0", "queued"
    else:
        message_id = kwargs.get("message_id")
        holder, state = f"{request.id}:{int(request.retries or 0)}", "retrying"
    if message_id is None:
        return
    try:
        if store.release_lost_claim(uuid.UUID(message_id), holder=holder, state=state):
            log.warning("released the claim of lost try %s of %s", holder, message_id)
    except Exception:
        log.exception("could not release the claim of lost try %s of %s", holder, message_id)
