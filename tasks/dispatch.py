"""`comms.dispatch`: validate the envelope, accept it once per message_id, then make the first
attempt itself (inline receipts, a free bulkhead slot) or route it to its channel's queue."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task, chord, signature
from sqlalchemy.exc import OperationalError

from channels.envelope import DispatchRequest, InvalidRequest, parse_request
from config.settings import get_settings
from config.tables import policies
from tasks.delivery import FirstAttempt
from tasks.outcomes import dispatch_receipt
from worker.celery_app import app
from worker.store import dispatches as store
from worker.store.db import is_connection_problem

log = logging.getLogger(__name__)

#: Namespace for ids derived from others (a message's channel task, its fallback...).
NAMESPACE = uuid.UUID("5b0c6d3e-6f6d-4d8e-9c0f-6d656f77636d")


#: Tries of comms.dispatch while PostgreSQL is unreachable: 31 s of doubling, then 120 tries
#: 30 s apart.
DB_OUTAGE_RETRIES = 5 + 120
#: Tries of a request that could not be recorded for another reason (a bug, a value the database
#: refuses) before it is closed FAILED: 1, 2, 4 s apart (scaled). Counted over all of the task's
#: tries, so a request that already waited out a database outage gets fewer.
UNRECORDED_RETRIES = 3


def derived_id(base: uuid.UUID | str, purpose: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{base}:{purpose}"))


def usable_message_id(raw: Any, fallback: str) -> uuid.UUID:
    """The producer's message_id if it is a UUID, else one derived from the Celery task id (stable
    across redeliveries of the same task message, so a redelivery is still one dispatch)."""
    if isinstance(raw, dict):
        try:
            return uuid.UUID(str(raw.get("message_id")))
        except ValueError:
            pass
    return uuid.UUID(derived_id(fallback, "message"))


@app.task(
    name="comms.dispatch",
    bind=True,
    acks_late=True,
    # PostgreSQL unreachable: 1, 2, 4, 8, 16 s, then every 30 s (well under the countdown bound),
    # an hour in all. Until the dispatch row exists nothing but this message knows the request,
    # so giving up drops it (only a producer that re-sends would notice).
    max_retries=DB_OUTAGE_RETRIES,
    default_retry_delay=2,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=30,
    retry_jitter=False,
)
def dispatch(self: Task, request: Any) -> dict[str, Any]:
    """Accept a request (the seed's envelope); send its first attempt here or hand it to its
    channel's queue (README, "First attempt inside comms.dispatch").

    Returns the dispatch receipt: the first attempt's outcome (`sent`, `retrying`, `failed`,
    `deferred`, `suppressed`) when it was made here, else `queued`; `failed` for a request that is
    not valid (its FAILED row is in comms_log; never retried). The same message_id twice
    dispatches once.
    """
    settings = get_settings()
    message_id = usable_message_id(request, self.request.id or str(uuid.uuid4()))
    try:
        req = parse_request(request, max_bytes=settings.comms_max_request_bytes)
    except Exception as exc:
        # InvalidRequest says what is wrong; anything else is a request the checks could not
        # cope with (a bug): refused all the same, never lost with the acked task message.
        if not isinstance(exc, InvalidRequest):
            log.exception("request %s could not be checked", message_id)
            exc = InvalidRequest([f"the request could not be checked: {type(exc).__name__}"])
        store.reject(request, message_id=message_id, problems=str(exc))
        channel = request.get("channel") if isinstance(request, dict) else None
        return dispatch_receipt(message_id, str(channel or "unknown"), "failed", error=str(exc))
    if req.message_id is None:
        req = req.model_copy(update={"message_id": message_id})
    with first_attempt_slot(req.channel) as inline:
        holder = f"{self.request.id}:0" if inline else None
        try:
            accepted = store.accept(
                req.model_dump(mode="json"),
                message_id=message_id,
                channel=req.channel,
                recipient=str(req.recipient),
                priority=req.priority,
                signal_type=req.signal_type,
                severity=req.severity,
                parent_message_id=req.parent_message_id,
                claim_for=holder,
                lease_seconds=settings.comms_claim_lease,
            )
        except Exception as exc:
            if is_connection_problem(exc):
                raise  # the autoretry above waits for the database
            return not_recorded(self, request, message_id, req.channel, exc)
        if accepted.new and inline:
            res = FirstAttempt(self, req).run_claimed()
            return dispatch_receipt(message_id, req.channel, res["outcome"],
                                    response_id=res["response_id"], error=res["error"])
    redelivered = bool(self.request.retries) or bool(
        (self.request.delivery_info or {}).get("redelivered")
    )
    if accepted.new or (accepted.state == "queued" and redelivered):
        route(req)
    return dispatch_receipt(message_id, req.channel, "queued" if accepted.new else accepted.state)


def not_recorded(task: Task, request: Any, message_id: uuid.UUID, channel: str,
                 exc: Exception) -> dict[str, Any]:
    """A request the database did not take, though it answered. Acked as it is, the task message
    would be the request's only trace and gone: try again a few times (a passing fault), then
    record it FAILED, as an invalid request is, with the error."""
    if task.request.retries < UNRECORDED_RETRIES:
        log.warning("could not record %s (try %d): %r", message_id, task.request.retries + 1, exc)
        raise task.retry(exc=exc, countdown=get_settings().scaled(2 ** task.request.retries))
    error = f"request could not be recorded: {type(exc).__name__}: {exc}"
    log.error("%s: %s", message_id, error, exc_info=exc)
    store.reject(request, message_id=message_id, problems=error)
    return dispatch_receipt(message_id, channel, "failed", error=error)


_slots: dict[str, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


@contextmanager
def first_attempt_slot(channel: str) -> Iterator[bool]:
    """Whether this dispatch makes the first attempt itself (inline receipts, and a free slot in
    the channel's bulkhead, COMMS_INLINE_SLOTS); the slot is held until the attempt ends."""
    settings = get_settings()
    if settings.comms_receipt_mode != "inline" or settings.comms_inline_slots == 0:
        yield False
        return
    slots = _slots.get(channel)
    if slots is None:  # once per channel and process, not a semaphore built per message
        with _slots_lock:
            slots = _slots.setdefault(channel,
                                      threading.BoundedSemaphore(settings.comms_inline_slots))
    if not slots.acquire(blocking=False):
        yield False
        return
    try:
        yield True
    finally:
        slots.release()


def route(req: DispatchRequest, *, round_no: int = 0, retries: int = 0,
          countdown: float | None = None) -> None:
    """Enqueue the channel task; its terminal receipt comes from a chord callback (design card) or
    inline, per COMMS_RECEIPT_MODE. A final failure starts the fallback through link_error.

    `round_no` > 0 is a new round of attempts after a parking (deferral drain): fresh task ids,
    a fresh retry budget. Task ids are derived from the message, so enqueueing the same round
    twice (a replay) is still one message at the vendor: the claim in `dispatches` decides.
    """
    assert req.message_id is not None
    mid = str(req.message_id)
    suffix = f":{round_no}" if round_no else ""
    header = signature(f"comms.{req.channel}", kwargs={"message_id": mid}, app=app).set(
        task_id=derived_id(mid, req.channel + suffix), retries=retries
    )
    if policies()[req.channel].on_final_failure == "fallback" and req.parent_message_id is None:
        # Only first-generation dispatches fall back, so chains end.
        header = header.set(link_error=signature("comms.fallback", app=app))
    if get_settings().comms_receipt_mode == "chord":
        body = signature("comms.receipt", app=app).set(task_id=derived_id(mid, "receipt" + suffix))
        chord([header.set(ignore_result=False)], body).apply_async(countdown=countdown)
    else:
        header.apply_async(countdown=countdown)
