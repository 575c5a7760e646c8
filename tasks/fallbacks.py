"""Fallback chains (design.md §4): PagerDuty -> Slack @oncall, SMS -> e-mail, Zendesk -> Slack
#comms-review alert. A fallback is a new dispatch with its own message_id (derived from the
parent's, so a fallback started twice is still one dispatch) and a link to its parent."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from config.tables import routing
from worker.celery_app import app
from worker.store import dispatches as store
from worker.store.db import is_connection_problem

log = logging.getLogger(__name__)


def _slack_post(base: dict[str, Any], message_id: str, text: str, target: str) -> dict[str, Any]:
    return {
        **base,
        "channel": "slack",
        "message_id": message_id,
        "message_payload": {
            # Slack's limits: 3,000 characters for a section's text, 4,000 for the fallback.
            "formatted_message": text[:3000],
            "fallback_text": text[:4000],
            "target_channel_id": target,
        },
    }


def fallback_request(parent: dict[str, Any], reason: str) -> dict[str, Any] | None:
    """The request a failed `parent` falls back to, or None when its channel has no fallback."""
    from tasks.dispatch import derived_id

    channel = parent["channel"]
    payload = parent["message_payload"]
    slack = routing().slack
    base = {
        "recipient": parent["recipient"],
        "priority": parent["priority"],
        "signal_type": parent.get("signal_type"),
        "severity": parent.get("severity"),
        "parent_message_id": parent["message_id"],
    }
    fallback_id = derived_id(parent["message_id"], "fallback")
    if channel == "pagerduty":
        mention = f"{slack.oncall.mention} " if slack.oncall.mention else ""
        text = f"{mention}PagerDuty page failed ({reason}): {payload['summary']}"
        return _slack_post(base, fallback_id, text, slack.oncall.channel)
    if channel == "zendesk":
        what = payload.get("subject") or f"note on ticket {payload.get('ticket_id')}"
        text = f"Zendesk dispatch {parent['message_id']} failed ({reason}): {what}"
        return _slack_post(base, fallback_id, text, slack.review.channel)
    if channel == "sms":
        body = payload["sms_body"]
        return {
            **base,
            "channel": "email",
            "message_id": fallback_id,
            "message_payload": {"subject": body[:78], "plain_text_body": body},
        }
    return None


def start_fallback(parent_message_id: uuid.UUID, reason: str) -> str | None:
    """Dispatch the fallback of a failed message; returns its message_id (None: no fallback)."""
    row = store.get_dispatch(parent_message_id)
    if row is None or row["request"].get("invalid_request") or row["parent_message_id"] is not None:
        return None
    fallback = fallback_request(row["request"], reason)
    if fallback is None:
        return None
    app.send_task("comms.dispatch", kwargs={"request": fallback}, task_id=fallback["message_id"])
    return str(fallback["message_id"])


# Not bound, three arguments: Celery then calls it directly in the failing worker (a bound or
# one-argument errback would be sent as a task with only the failed task's id).
@app.task(name="comms.fallback")
def fallback_on_failure(request: Any, exc: BaseException, traceback: Any) -> None:
    """link_error errback of channels whose policy falls back. Celery calls it in the failing
    worker at final failure only (never on retries), also after the pool child was lost."""
    message_id = (request.kwargs or {}).get("message_id")
    if message_id is None or is_connection_problem(exc):
        # A database outage is no verdict on the message: the outbox sweep replays it instead.
        return
    start_fallback(uuid.UUID(message_id), f"{type(exc).__name__}: {exc}")
