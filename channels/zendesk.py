"""Zendesk Support tickets: create (`POST /api/v2/tickets.json`) and internal note
(`PUT /api/v2/tickets/{ticket_id}.json`) on `https://{ZENDESK_SUBDOMAIN}.zendesk.com`.

API reference: https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/

Basic auth `{ZENDESK_EMAIL}/token:{ZENDESK_API_TOKEN}`. Creates carry `Idempotency-Key` (kept 2 h;
a replay returns the stored response), so a create is safe to retry; the note PUT has no key.
Validation errors come back as 422:
    {"error": "RecordInvalid", "description": "Record validation errors",
     "details": {"priority": [{"description": "Priority: is not valid", "error": "InvalidValue"}]}}
"""

from __future__ import annotations

import base64
from typing import Any

from channels.base import (
    HttpRequest,
    HttpResponse,
    Notification,
    Outcome,
    PayloadError,
    Permanent,
    Retryable,
    Sent,
    require,
)
from channels.envelope import ZendeskCreatePayload, ZendeskNotePayload
from channels.http import classify_status, parse_retry_after
from channels.tenant import tenant_base_url
from config.settings import Settings
from config.tables import Priorities, priorities

#: Longest error detail kept in a Permanent reason (the receipt's `error` column).
MAX_REASON_DETAIL = 300


class ZendeskChannel:
    name = "zendesk"

    def __init__(self, settings: Settings, table: Priorities | None = None) -> None:
        self.settings = settings
        self.priorities = table or priorities()

    def base_url(self) -> str:
        return tenant_base_url(
            self.settings.zendesk_base_url,
            "ZENDESK_BASE_URL",
            self.settings.zendesk_subdomain,
            "ZENDESK_SUBDOMAIN",
            "https://{}.zendesk.com",
        )

    def _auth(self) -> str:
        email = require(self.settings.zendesk_email, "ZENDESK_EMAIL")
        token = require(self.settings.zendesk_api_token, "ZENDESK_API_TOKEN")
        return "Basic " + base64.b64encode(f"{email}/token:{token}".encode()).decode("ascii")

    def build_request(self, n: Notification) -> HttpRequest:
        base = self.base_url()
        headers = {"Authorization": self._auth(), "Content-Type": "application/json"}
        payload = n.request.payload
        if isinstance(payload, ZendeskNotePayload):
            note = {
                "ticket": {
                    "comment": {"body": payload.note_body, "public": False},
                    "additional_tags": list(payload.new_tags),
                }
            }
            return HttpRequest(
                "PUT", f"{base}/api/v2/tickets/{payload.ticket_id}.json", headers=headers, json=note
            )
        if not isinstance(payload, ZendeskCreatePayload):
            raise PayloadError(f"zendesk cannot send a {type(payload).__name__}")
        if n.request.message_id is None:
            raise PayloadError(
                "zendesk ticket create needs the request's message_id (idempotency key)"
            )
        ticket: dict[str, Any] = {
            "subject": payload.subject,
            "comment": {"body": payload.body, "public": False},
            "priority": self.priorities.zendesk[n.request.priority],
            "tags": list(payload.tags),
            "type": "incident",
            "requester": {"email": n.request.recipient},
        }
        if payload.group_id is not None:
            ticket["group_id"] = payload.group_id
        # The same message_id always gives the same key, so a retried create (after a timeout or
        # a worker crash) is answered from Zendesk's idempotency store instead of a 2nd ticket.
        headers["Idempotency-Key"] = str(n.request.message_id)
        return HttpRequest(
            "POST", f"{base}/api/v2/tickets.json", headers=headers, json={"ticket": ticket}
        )

    def classify(self, response: HttpResponse) -> Outcome:
        status = response.status
        data = response.json()
        body = data if isinstance(data, dict) else {}
        if status in (200, 201):
            # 201 = ticket created (receipt: ticket.id); 200 = note added (receipt: audit.id).
            audit = body.get("audit")
            ticket = body.get("ticket")
            if status == 200 and isinstance(audit, dict) and audit.get("id") is not None:
                return Sent(str(audit["id"]))
            if isinstance(ticket, dict) and ticket.get("id") is not None:
                return Sent(str(ticket["id"]))
            return Sent(None)
        if status == 422:
            return Permanent(f"zendesk:{body.get('error') or 'http_422'} {_details(body)}".rstrip())
        if status == 400:
            # e.g. {"error": "IdempotentRequestError", "description": "..."}: same key, new body.
            code = body.get("error")
            if isinstance(code, str) and code:
                return Permanent(f"zendesk:{code} {_details(body)}".rstrip())
        if status >= 500:
            return Retryable(
                f"zendesk:http_{status}", parse_retry_after(response.header("retry-after"))
            )
        generic = classify_status(response, self.name)
        return generic if generic is not None else Sent(None)


def _details(body: dict[str, Any]) -> str:
    """'field: message; ...' from Zendesk's `details` (or its `description`), clipped."""
    parts: list[str] = []
    details = body.get("details")
    if isinstance(details, dict):
        for field, problems in details.items():
            for problem in problems if isinstance(problems, list) else [problems]:
                text = problem.get("description") if isinstance(problem, dict) else problem
                parts.append(f"{field}: {text}")
    if not parts and isinstance(body.get("description"), str):
        parts.append(body["description"])
    return "; ".join(parts)[:MAX_REASON_DETAIL]
