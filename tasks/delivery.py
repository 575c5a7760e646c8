"""The one helper every channel task runs: claim, check, send through the channel, map the outcome
to Celery (retry with the table's or the vendor's delay, park, or finish), write receipts."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from functools import cache
from typing import Any

from celery import Task

from channels import get_channel
from channels.base import (
    DispatchError,
    InvalidRecipient,
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
from tasks.checks import Defer, Suppress, prepare
from tasks.outcomes import Result, result
from worker import clock
from worker.store import contacts, deferral
from worker.store import dispatches as store
from worker.store.db import is_connection_problem, with_db_retry
from worker.store.models import utcnow

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


def park_delay(policy: RetryPolicy) -> float:
    """Seconds from a parking for exhausted retries to the next round (e-mail: 15 min), scaled."""
    assert policy.park_after_minutes is not None
    return get_settings().scaled(policy.park_after_minutes * 60)


def policy_delay(policy: RetryPolicy, retries_done: int, retry_after: float | None) -> float:
    """Seconds before the next try: the vendor's Retry-After wins; else the table, scaled."""
    if retry_after is not None:
        return retry_after
    return get_settings().scaled(policy.delay(retries_done))


class _Attempt:
    """One run of a channel task for one message."""

    def __init__(self, task: Task, channel: str, message_id: str) -> None:
        self.task = task
        self.channel = channel
        self.mid = uuid.UUID(message_id)
        self.retries = int(task.request.retries or 0)
        self.chord_mode = get_settings().comms_receipt_mode == "chord"

    def result(self, outcome: str, **extra: Any) -> Result:
        return result(self.mid, self.task.request.id or "", self.channel, outcome,
                      retry_count=self.retries, **extra)

    def run(self) -> Result:
        # PostgreSQL unreachable before the send: wait for it (nothing sent yet). Still down after
        # that, the task fails and the outbox sweep replays the message later (never FAILED for it).
        claimed = with_db_retry(lambda: store.claim(
            self.mid, holder=f"{self.task.request.id}:{self.retries}",
            lease_seconds=get_settings().comms_claim_lease))
        if claimed is None:
            # Terminal already, or a live attempt holds it: sending now would be a duplicate.
            return self.result("SKIPPED")
        return self.attempt(DispatchRequest.model_validate(claimed.request))

    def attempt(self, request: DispatchRequest) -> Result:
        """Check, send and settle a claimed message."""
        verdict = with_db_retry(lambda: prepare(self.channel, request))
        if isinstance(verdict, Suppress):
            return self.suppress(verdict.reason)
        if isinstance(verdict, Defer):
            return self.park(verdict.until, verdict.reason)
        try:
            outcome: Outcome = deliver(get_channel(self.channel, get_settings()), verdict,
                                       transport())
        except DispatchError as exc:
            outcome = Permanent(f"{type(exc).__name__}: {exc}")
        return self.settle(outcome)

    def settle(self, outcome: Outcome) -> Result:
        if isinstance(outcome, Sent):
            # The vendor acted: the record must be written, or a replay would send again. Keep
            # trying for COMMS_REPLAY_AFTER, the silence after which the sweep could replay it.
            with_db_retry(lambda: store.finish(
                self.mid, "SENT", response_id=outcome.response_id, retry_count=self.retries,
                write_receipt=not self.chord_mode), patience=get_settings().comms_replay_after)
            return self.result("SENT", response_id=outcome.response_id)
        policy = policies()[self.channel]
        if isinstance(outcome, Retryable) and self.retries < policy.max_retries:
            return self.retry(policy, outcome)
        if isinstance(outcome, InvalidRecipient):
            self.apply(outcome)
            return self.fail(f"{outcome.reason} (recipient refused; not retried)")
        if isinstance(outcome, Retryable):
            if policy.on_final_failure == "park":
                parked = self.park_for_later(policy, outcome.reason)
                if parked is not None:
                    return parked
            return self.fail(f"retries exhausted: {outcome.reason}")
        return self.fail(outcome.reason)

    def retry(self, policy: RetryPolicy, outcome: Retryable) -> Result:
        settings = get_settings()
        countdown = policy_delay(policy, self.retries, outcome.retry_after)
        if countdown > settings.countdown_bound:
            # Longer than a broker ETA may safely wait (visibility timeout): park in the database.
            return self.park(clock.now() + timedelta(seconds=countdown),
                             f"{outcome.reason}: vendor asked to wait {countdown:.0f}s")
        # The retry should have started by then; until that time the outbox sweep leaves it be.
        expect_by = utcnow() + timedelta(seconds=countdown + settings.comms_claim_lease)
        with_db_retry(lambda: store.record_retrying(
            self.mid, retry_count=self.retries, error=outcome.reason, expect_by=expect_by))
        return self.reschedule(countdown, outcome.reason)

    def reschedule(self, countdown: float, reason: str) -> Result:
        raise self.task.retry(countdown=countdown, exc=RetryableFailure(reason))

    def park_for_later(self, policy: RetryPolicy, reason: str) -> Result | None:
        """E-mail's final failure: a new round later, `max_parkings` times at most."""
        dispatch = store.get_dispatch(self.mid)
        assert policy.max_parkings is not None
        if dispatch is None or dispatch["parkings"] >= policy.max_parkings:
            return None
        return self.park(clock.now() + timedelta(seconds=park_delay(policy)),
                         f"retries exhausted: {reason}", dispatch)

    def park(self, until: Any, reason: str, dispatch: dict[str, Any] | None = None) -> Result:
        """Park until `until` (DEFERRED), unless the message was parked too often already: then
        FAILED, so no path (quiet hours, a vendor's long Retry-After) parks a message for ever."""
        limit = get_settings().comms_max_parkings
        dispatch = dispatch or store.get_dispatch(self.mid)
        if dispatch is not None and dispatch["parkings"] >= limit:
            return self.fail(f"parked {dispatch['parkings']} times without being sent "
                             f"(COMMS_MAX_PARKINGS={limit}): {reason}")
        with_db_retry(lambda: deferral.park(self.mid, due_at=until, reason=reason,
                                            retry_count=self.retries))
        return self.result("DEFERRED", error=reason)

    def apply(self, outcome: InvalidRecipient) -> None:
        """Record in the contacts store what the vendor told us about the recipient."""
        if outcome.action == "opt_out_sms":
            row = store.get_dispatch(self.mid)
            if row is not None:
                contacts.set_flags(row["recipient"], sms_opt_out=True)
        elif outcome.action == "remove_fcm_token" and outcome.target:
            contacts.remove_token(outcome.target)
        elif outcome.action == "unsubscribe_email":
            row = store.get_dispatch(self.mid)
            if row is not None:
                contacts.set_flags(row["recipient"], email_unsubscribed=True)

    def suppress(self, reason: str) -> Result:
        with_db_retry(lambda: store.finish(self.mid, "SUPPRESSED", retry_count=self.retries,
                                           error=reason, write_receipt=not self.chord_mode))
        self.fall_back(f"suppressed: {reason}")
        return self.result("SUPPRESSED", error=reason)

    def fall_back(self, reason: str) -> None:
        """Start the fallback of a message that ended here, if its channel has one."""
        if policies()[self.channel].on_final_failure == "fallback":
            from tasks.fallbacks import start_fallback

            start_fallback(self.mid, reason)

    def record_failed(self, error: str) -> None:
        with_db_retry(lambda: store.finish(self.mid, "FAILED", retry_count=self.retries,
                                           error=error))

    def fail(self, error: str) -> Result:
        self.record_failed(error)
        raise DeliveryFailed(error)


class FirstAttempt(_Attempt):
    """The first attempt, made by `comms.dispatch` itself right after it accepted and claimed the
    message (one statement): no second Celery hop when the vendor answers at once. A retry goes
    to the channel task (its queue, its policy, `retries` = 1); a final failure starts the
    fallback here, as the channel task's link_error would."""

    def __init__(self, task: Task, request: DispatchRequest) -> None:
        super().__init__(task, request.channel, str(request.message_id))
        self.request = request
        self.retries = 0
        self.chord_mode = False

    def run_claimed(self) -> Result:
        """The attempt, for a message the dispatch already claimed. A bug in it closes the
        message FAILED (the channel task has the task_failure handler for that)."""
        try:
            return self.attempt(self.request)
        except Exception as exc:
            if is_connection_problem(exc):
                raise  # no verdict: the dispatch's autoretry, then the outbox sweep, take it
            log.exception("first attempt of %s failed", self.mid)
            error = f"{type(exc).__name__}: {exc}"
            if store.fail_unless_terminal(self.mid, error):
                self.fall_back(error)  # as the channel task's link_error would
            return self.result("FAILED", error=error)

    def reschedule(self, countdown: float, reason: str) -> Result:
        from tasks.dispatch import route

        route(self.request, retries=1, countdown=countdown)
        return self.result("RETRYING", error=reason)

    def fail(self, error: str) -> Result:
        self.record_failed(error)
        self.fall_back(f"{DeliveryFailed.__name__}: {error}")
        return self.result("FAILED", error=error)


def deliver_message(task: Task, channel: str, message_id: str) -> Result:
    return _Attempt(task, channel, message_id).run()
