"""PagerDuty Events API v2 `POST /v2/enqueue` as the sandbox plays it: 202 with the dedup_key.

Shapes: developer.pagerduty.com/docs/events-api-v2/trigger-events/ ("Response Codes").
"""

from __future__ import annotations

import uuid
from typing import Any

from worker.sandbox.server import Recorded, Reply, Sandbox

ACTIONS = frozenset({"trigger", "acknowledge", "resolve"})
SEVERITIES = frozenset({"critical", "error", "warning", "info"})


def _invalid(*errors: str) -> Reply:
    return Reply(
        400,
        {"status": "invalid event", "message": "Event object is invalid", "errors": list(errors)},
    )


def _errors(event: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    if not str(event.get("routing_key") or "").strip():
        errors.append("'routing_key' is missing or blank")
    action = event.get("event_action")
    if action not in ACTIONS:
        errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
    if len(str(event.get("dedup_key") or "")) > 255:
        errors.append("'dedup_key' must be 255 characters or fewer")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return [*errors, "'payload' is missing or blank"]
        if not str(payload.get("summary") or "").strip():
            errors.append("'payload.summary' is missing or blank")
        if not str(payload.get("source") or "").strip():
            errors.append("'payload.source' is missing or blank")
        if payload.get("severity") not in SEVERITIES:
            errors.append("'payload.severity' is missing or blank")
    elif not event.get("dedup_key"):
        errors.append("'dedup_key' is missing or blank")
    return errors


def handle(sandbox: Sandbox, req: Recorded) -> Reply:
    if req.path != "/pagerduty/v2/enqueue" or req.method != "POST":
        return Reply(404, {"status": "not found", "message": "Not Found"})
    try:
        event = req.json()
    except ValueError:
        return Reply(
            400,
            {
                "status": "invalid request",
                "message": "Invalid JSON",
                "errors": ["Could not parse request body as JSON"],
            },
        )
    if not isinstance(event, dict):
        return _invalid("Event object must be a JSON object")
    errors = _errors(event)
    if errors:
        return _invalid(*errors)
    key = str(event.get("dedup_key") or uuid.uuid4().hex)
    alerts: dict[str, int] = sandbox.state.setdefault("pagerduty.alerts", {})
    alerts.setdefault(key, sandbox.next_id())
    return Reply(202, {"status": "success", "message": "Event processed", "dedup_key": key})
