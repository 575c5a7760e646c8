"""PagerDuty Events API v2: `POST https://events.pagerduty.com/v2/enqueue` (PAGERDUTY_EVENTS_URL).

API reference: https://developer.pagerduty.com/docs/events-api-v2/trigger-events/

No auth header: the 32-character integration key travels in the body as `routing_key`, chosen by
the payload's `service` (config/routing.toml names the variable holding each service's key), else
PAGERDUTY_ROUTING_KEY. Success is 202 {"status": "success", "message": "Event processed",
"dedup_key": "<key>"}; a bad event is 400 {"status": "invalid event", "message": "Event object is
invalid", "errors": ["'payload.severity' is missing or blank"]}. 429 carries no Retry-After.
`dedup_key` makes a retried trigger land on the same alert, so retries are safe.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

from channels.base import (
    ChannelConfigError,
    HttpRequest,
    HttpResponse,
    Notification,
    Outcome,
    Permanent,
    Retryable,
    Sent,
    require,
)
from channels.envelope import PagerDutyPayload
from channels.http import classify_status, parse_retry_after
from config.settings import Settings
from config.tables import Priorities, Routing, priorities, routing

#: PagerDuty refuses a dedup_key longer than this (400).
MAX_DEDUP_KEY = 255
#: Longest error detail kept in a Permanent reason (the receipt's `error` column).
MAX_REASON_DETAIL = 300

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def dedup_key(recipient: str, signal_type: str | None, now: datetime) -> str:
    """`{customer_email}-{signal_type}-{YYYY-MM-DD}` (UTC date): one incident per customer, signal
    and day. Over 255 characters the head is clipped and a hash of it keeps keys distinct."""
    day = now.astimezone(UTC).strftime("%Y-%m-%d")
    head = f"{recipient}-{signal_type or 'unspecified'}"
    key = f"{head}-{day}"
    if len(key) <= MAX_DEDUP_KEY:
        return key
    digest = hashlib.sha256(head.encode()).hexdigest()[:16]
    keep = MAX_DEDUP_KEY - len(day) - len(digest) - 2
    return f"{head[:keep]}-{digest}-{day}"


class PagerDutyChannel:
    name = "pagerduty"

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = _utc_now,
        rules: Routing | None = None,
        table: Priorities | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.rules = rules or routing()
        self.priorities = table or priorities()
        #: Where per-service routing keys are read; None = os.environ at build time.
        self.environ = environ

    def events_url(self) -> str:
        url = self.settings.pagerduty_events_url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ChannelConfigError(
                f"PAGERDUTY_EVENTS_URL must be a full http(s) URL, got {url!r}"
            )
        return url

    def routing_key(self, service: str | None) -> str:
        variable = self.rules.pagerduty.services.get(service) if service else None
        if variable is None:
            return require(self.settings.pagerduty_routing_key, "PAGERDUTY_ROUTING_KEY")
        # A service that has its own key must not be paged on the default one by accident.
        env = os.environ if self.environ is None else self.environ
        return require(env.get(variable), variable)

    def build_request(self, n: Notification) -> HttpRequest:
        url = self.events_url()
        payload = cast(PagerDutyPayload, n.request.payload)
        now = self.clock()
        event: dict[str, Any] = {
            "routing_key": self.routing_key(payload.service),
            "event_action": "trigger",
            "dedup_key": dedup_key(n.request.recipient, n.request.signal_type, now),
            "payload": {
                "summary": payload.summary,
                "source": "meow-comms",
                "severity": payload.severity or self.priorities.pagerduty[n.request.priority],
                "timestamp": now.astimezone(UTC)
                .isoformat(timespec="seconds")
                .replace("+00:00", "Z"),
                "custom_details": dict(payload.custom_details),
            },
        }
        if payload.zendesk_ticket_url is not None:
            event["links"] = [{"href": str(payload.zendesk_ticket_url), "text": "Zendesk Ticket"}]
        return HttpRequest("POST", url, headers={"Content-Type": "application/json"}, json=event)

    def classify(self, response: HttpResponse) -> Outcome:
        status = response.status
        data = response.json()
        body = data if isinstance(data, dict) else {}
        if 200 <= status < 300:
            key = body.get("dedup_key")
            return Sent(str(key) if key is not None else None)
        if status == 400:
            return Permanent(f"pagerduty:invalid_event {_errors(body)}".rstrip())
        if status == 429 or status >= 500:
            # PagerDuty documents no Retry-After; None lets the retry table's backoff decide.
            return Retryable(
                f"pagerduty:http_{status}", parse_retry_after(response.header("retry-after"))
            )
        generic = classify_status(response, self.name)
        return generic if generic is not None else Permanent(f"pagerduty:http_{status}")


def _errors(body: dict[str, Any]) -> str:
    parts = [str(body["message"])] if body.get("message") else []
    errors = body.get("errors")
    if isinstance(errors, list):
        parts += [str(e) for e in errors]
    return "; ".join(parts)[:MAX_REASON_DETAIL]
