"""The Python helper for applications that import this package (others use `send_task` by name).

from worker.producer import send, wait
request = {"recipient": ..., "channel": "slack", "priority": "HIGH", "message_payload": {...}}
receipt = send(request)
final = wait(receipt["dispatch_receipt"]["message_id"], resend=request)

Why re-send: Redis cannot promise that an enqueued message reaches a worker. kombu's Redis
transport pops a message (BRPOP) before it records it as unacked, so a worker killed in between
loses it (celery/celery#7950), and a killed worker's reserved messages only come back after the
visibility timeout (an hour by default). A producer that must not lose a message sends it again,
same message_id, until a `dispatches` row shows it was accepted. `comms.dispatch` is idempotent on
message_id, so a copy that was only slow changes nothing (one row, one vendor call).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery

from channels.envelope import parse_request
from config.settings import get_settings
from tasks.outcomes import dispatch_receipt
from worker.store import dispatches as store

log = logging.getLogger(__name__)

#: The longest pause between two re-sends of a message nobody has accepted.
MAX_RESEND_INTERVAL = 300.0


def send(request: dict[str, Any], *, app: Celery | None = None) -> dict[str, Any]:
    """Validate here (InvalidRequest says what is wrong), then enqueue `comms.dispatch` by name.

    A message_id is added when absent, so the caller can follow the message; the receipt is
    the seed's `dispatch_receipt` with status `queued`.
    """
    parse_request(request, max_bytes=get_settings().comms_max_request_bytes)
    request = dict(request)
    request.setdefault("message_id", str(uuid.uuid4()))
    _enqueue(request, app)
    return dispatch_receipt(request["message_id"], request["channel"], "queued")


def _enqueue(request: dict[str, Any], app: Celery | None) -> None:
    if app is None:
        from worker.celery_app import app as default_app

        app = default_app
    app.send_task("comms.dispatch", kwargs={"request": request})


def _message_id(request: dict[str, Any]) -> uuid.UUID:
    if "message_id" not in request:
        raise ValueError("only a request with a message_id can be sent again (send() adds one)")
    return uuid.UUID(str(request["message_id"]))


def resend_unaccepted(requests: Sequence[dict[str, Any]], *,
                      app: Celery | None = None) -> list[str]:
    """Enqueue again, unchanged, each request that no `comms.dispatch` has accepted yet; returns
    their message_ids. Call it for a batch (an incident fan-out) once it had time to be taken:
    longer than the queue's wait, at most the visibility timeout (module docstring)."""
    by_id = {_message_id(r): r for r in requests}
    accepted = store.accepted_ids(by_id)
    missing = [mid for mid in by_id if mid not in accepted]
    for mid in missing:
        _enqueue(by_id[mid], app)
    if missing:
        log.warning("re-sent %d of %d messages that no worker had accepted",
                    len(missing), len(by_id))
    return [str(mid) for mid in missing]


def current_receipt(message_id: str | uuid.UUID) -> dict[str, Any] | None:
    """The message's latest receipt from comms_log (terminal if there is one), or None."""
    mid = uuid.UUID(str(message_id))
    rows = store.log_rows(mid)
    if not rows:
        dispatch = store.get_dispatch(mid)
        if dispatch is None:
            return None
        return dispatch_receipt(
            mid, dispatch["channel"], dispatch["state"], timestamp=dispatch["updated_at"]
        )
    terminal = [r for r in rows if r["outcome"] in ("SENT", "FAILED", "SUPPRESSED")]
    row = terminal[0] if terminal else rows[-1]
    return dispatch_receipt(
        mid,
        row["channel"],
        row["outcome"],
        response_id=row["response_id"],
        retry_count=row["retry_count"],
        error=row["error"],
        timestamp=row["dispatched_at"],
    )


def wait(
    message_id: str | uuid.UUID,
    *,
    timeout: float = 120.0,
    interval: float = 0.2,
    resend: dict[str, Any] | None = None,
    resend_after: float = 30.0,
    app: Celery | None = None,
) -> dict[str, Any]:
    """Block until the message has its terminal receipt; TimeoutError after `timeout` seconds.

    With `resend` (the request as sent), a message still not accepted `resend_after` seconds
    after it was sent is enqueued again, and again at doubling intervals (module docstring)."""
    mid = uuid.UUID(str(message_id))
    if resend is not None and _message_id(resend) != mid:
        raise ValueError("resend must be the request whose message_id is waited for")
    if resend_after <= 0:
        raise ValueError("resend_after must be more than 0 seconds")
    now = time.monotonic()
    deadline = now + timeout
    pause = resend_after
    next_resend = now + pause
    while time.monotonic() < deadline:
        if store.terminal_row(mid) is not None:
            receipt = current_receipt(mid)
            assert receipt is not None
            return receipt
        if resend is not None and time.monotonic() >= next_resend:
            if mid not in store.accepted_ids([mid]):
                log.warning("message %s not accepted after %.0f s: sending it again", mid, pause)
                _enqueue(resend, app)
            pause = min(pause * 2, MAX_RESEND_INTERVAL)
            next_resend = time.monotonic() + pause
        time.sleep(interval)
    raise TimeoutError(f"no terminal receipt for {mid} within {timeout:.0f}s")
