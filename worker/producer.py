"""The Python helper for applications that import this package (others use `send_task` by name).

from worker.producer import send, wait
receipt = send({"recipient": ..., "channel": "slack", "priority": "HIGH", "message_payload": {...}})
final = wait(receipt["dispatch_receipt"]["message_id"])
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery import Celery

from channels.envelope import parse_request
from config.settings import get_settings
from tasks.outcomes import dispatch_receipt
from worker.store import dispatches as store


def send(request: dict[str, Any], *, app: Celery | None = None) -> dict[str, Any]:
    """Validate here (InvalidRequest says what is wrong), then enqueue `comms.dispatch` by name.

    A message_id is added when absent, so the caller can follow the message; the receipt is
    the seed's `dispatch_receipt` with status `queued`.
    """
    parse_request(request, max_bytes=get_settings().comms_max_request_bytes)
    request = dict(request)
    request.setdefault("message_id", str(uuid.uuid4()))
    if app is None:
        from worker.celery_app import app as default_app

        app = default_app
    app.send_task("comms.dispatch", kwargs={"request": request})
    return dispatch_receipt(request["message_id"], request["channel"], "queued")


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
    message_id: str | uuid.UUID, *, timeout: float = 120.0, interval: float = 0.2
) -> dict[str, Any]:
    """Block until the message has its terminal receipt; TimeoutError after `timeout` seconds."""
    mid = uuid.UUID(str(message_id))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.terminal_row(mid) is not None:
            receipt = current_receipt(mid)
            assert receipt is not None
            return receipt
        time.sleep(interval)
    raise TimeoutError(f"no terminal receipt for {mid} within {timeout:.0f}s")
