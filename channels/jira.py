"""Jira Cloud issue create: `POST https://{JIRA_DOMAIN}.atlassian.net/rest/api/3/issue`.

API reference: https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-post
ADF: https://developer.atlassian.com/cloud/jira/platform/apis/document/structure/

Basic auth `{JIRA_EMAIL}:{JIRA_API_TOKEN}`. v3 wants `description` as an Atlassian Document Format
document, built by `to_adf()`. Success is 201 {"id": "10000", "key": "ED-24", "self": "..."};
field errors are 400 {"errorMessages": [], "errors": {"priority": "Specify a valid priority"}}.
Jira has no idempotency key, so only definite failures (429, 5xx) are retried.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any, cast

from channels.base import (
    HttpRequest,
    HttpResponse,
    Notification,
    Outcome,
    Permanent,
    Retryable,
    Sent,
    require,
)
from channels.envelope import JiraPayload
from channels.http import MAX_RETRY_AFTER, classify_status, parse_retry_after
from channels.tenant import tenant_base_url
from config.settings import Settings
from config.tables import Priorities, priorities

#: Longest error detail kept in a Permanent reason (the receipt's `error` column).
MAX_REASON_DETAIL = 300

#: A blank line (possibly holding spaces or tabs) separates paragraphs.
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*(?:\n[ \t]*)*\n")


def to_adf(text: str) -> dict[str, Any]:
    """`text` as an ADF document: one paragraph per blank-line-separated block, single newlines
    as `hardBreak` nodes. Text is kept verbatim (ADF is JSON, so nothing needs escaping); empty
    text nodes are left out because ADF forbids them (`text` has minLength 1)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs: list[dict[str, Any]] = []
    for block in _PARAGRAPH_BREAK.split(text):
        block = block.strip("\n")
        if not block:
            continue
        inline: list[dict[str, Any]] = []
        for i, line in enumerate(block.split("\n")):
            if i:
                inline.append({"type": "hardBreak"})
            if line:
                inline.append({"type": "text", "text": line})
        paragraphs.append({"type": "paragraph", "content": inline})
    return {"type": "doc", "version": 1, "content": paragraphs}


class JiraChannel:
    name = "jira"

    def __init__(self, settings: Settings, table: Priorities | None = None) -> None:
        self.settings = settings
        self.priorities = table or priorities()

    def base_url(self) -> str:
        return tenant_base_url(
            self.settings.jira_base_url,
            "JIRA_BASE_URL",
            self.settings.jira_domain,
            "JIRA_DOMAIN",
            "https://{}.atlassian.net",
        )

    def build_request(self, n: Notification) -> HttpRequest:
        base = self.base_url()
        email = require(self.settings.jira_email, "JIRA_EMAIL")
        token = require(self.settings.jira_api_token, "JIRA_API_TOKEN")
        payload = cast(JiraPayload, n.request.payload)
        fields = {
            "project": {"key": payload.project_key},
            "issuetype": {"name": payload.issue_type},
            "summary": payload.summary,
            "description": to_adf(payload.description),
            "priority": {"name": self.priorities.jira[n.request.priority]},
            "labels": list(payload.labels),
        }
        auth = base64.b64encode(f"{email}:{token}".encode()).decode("ascii")
        return HttpRequest(
            "POST",
            f"{base}/rest/api/3/issue",
            headers={
                "Authorization": f"Basic {auth}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            json={"fields": fields},
        )

    def classify(self, response: HttpResponse) -> Outcome:
        status = response.status
        data = response.json()
        body = data if isinstance(data, dict) else {}
        if 200 <= status < 300:
            key = body.get("key")
            return Sent(str(key) if key is not None else None)
        if status == 429 or status >= 500:
            wait = parse_retry_after(response.header("retry-after"))
            if wait is None:
                wait = _rate_limit_reset(response.header("x-ratelimit-reset"))
            return Retryable(f"jira:http_{status}", wait)
        if status in (400, 422):
            return Permanent(f"jira:http_{status} {_errors(body)}".rstrip())
        generic = classify_status(response, self.name)
        return generic if generic is not None else Permanent(f"jira:http_{status}")


def _errors(body: dict[str, Any]) -> str:
    """'message; field: message' from Jira's error collection, clipped."""
    parts = [str(m) for m in body.get("errorMessages") or [] if m]
    errors = body.get("errors")
    if isinstance(errors, dict):
        parts += [f"{field}: {message}" for field, message in errors.items()]
    return "; ".join(parts)[:MAX_REASON_DETAIL]


def _rate_limit_reset(value: str | None) -> float | None:
    """Seconds until Jira's `X-RateLimit-Reset` (ISO-8601, e.g. 2026-02-07T14:33:00.000Z)."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), MAX_RETRY_AFTER)
