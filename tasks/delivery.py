"""The one helper every channel task runs: claim, send through the channel, map the outcome to
Celery (retry with the table's or the vendor's delay, or finish), write receipts."""

from __future__ import annotations

import logging
import uuid
from functools import cache
from typing import Any

from celery import Task

from channels import get_channel
from channels.base import (
    DispatchError,
    InvalidRecipient,
    Notification,
    Outcome,
    Permanent,
    Retryable,
    Sent,
    deliver,
)
from channels.envelope import DispatchRequest
from channels.http import HttpTransport
from config.settings import get_settings
from config.tables import RetryPolicy, policies
from tasks.outcomes import Result, result
from worker.store import dispatches as store
from worker.store.db import with_db_retry

log = logging.getLogger(__name__)


class DeliveryFailed(Exception):
    """Raised at a message's final failure so Celery marks the task FAILURE and runs link_error
    (the fallback). Its FAILED receipt is already written when this is raised."""


class RetryableFailure(Exception):
    """The reason a retry was scheduled (shows in Flower and the task_retry signal)."""


def retry_options(channel: str) -> dict[str, Any]:
    """The channel's retry policy as Celery task options, from the one table in config/."""
    policy = policies()[channel]
    return {
        "max_retries": policy.max_retries,
        "default_retry_delay": policy.delays[0],
        "retry_jitter": False,
        "retry_delays": policy.delays,
        "acks_late": True,
    }


@cache
def transport() -> HttpTransport:
    settings = get_settings()
    return HttpTransport(settings.comms_http_connect_timeout, settings.comms_http_read_timeout)


def policy_delay(policy: RetryPolicy, retries_done: int, retry_after: float | None) -> float:
    """Seconds before the next try: the vendor's Retry-After wins; else the table, scaled."""
    if retry_after is not None:
        return retry_after
    return get_settings().scaled(policy.delay(retries_done))


def deliver_message(task: Task, channel: str, message_id: str) -> Result:
    settings = get_settings()
    mid = uuid.UUID(message_id)
    retries = int(task.request.retries or 0)
    claimed = store.claim(
        mid,
        holder=f"{task.request.id}:{retries}",
        retries=retries,
        lease_seconds=settings.comms_claim_lease,
    )
    if claimed is None:
        # Terminal already, or a live attempt holds it: sending now would be a duplicate.
        return result(mid, channel, "SKIPPED")
    request = DispatchRequest.model_validate(claimed.request)
    try:
        outcome: Outcome = deliver(
            get_channel(channel, settings), Notification(request), transport()
        )
    except DispatchError as exc:
        outcome = Permanent(f"{type(exc).__name__}: {exc}")
    return settle(task, channel, mid, outcome, retries)


def settle(task: Task, channel: str, mid: uuid.UUID, outcome: Outcome, retries: int) -> Result:
    """Record `outcome` and tell Celery what comes next."""
    chord_mode = get_settings().comms_receipt_mode == "chord"
    if isinstance(outcome, Sent):
        with_db_retry(
            lambda: store.finish(
                mid,
                "SENT",
                response_id=outcome.response_id,
                retry_count=retries,
                write_receipt=not chord_mode,
            )
        )
        return result(mid, channel, "SENT", response_id=outcome.response_id, retry_count=retries)
    policy = policies()[channel]
    if isinstance(outcome, Retryable) and retries < policy.max_retries:
        countdown = policy_delay(policy, retries, outcome.retry_after)
        with_db_retry(lambda: store.record_retrying(mid, retry_count=retries, error=outcome.reason))
        raise task.retry(countdown=countdown, exc=RetryableFailure(outcome.reason))
    error = (
        outcome.reason
        if not isinstance(outcome, Retryable)
        else f"retries exhausted: {outcome.reason}"
    )
    if isinstance(outcome, InvalidRecipient) and outcome.action is None:
        error = f"invalid recipient: {error}"
    with_db_retry(lambda: store.finish(mid, "FAILED", retry_count=retries, error=error))
    raise DeliveryFailed(error)
