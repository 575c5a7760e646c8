"""Slack Web API `chat.postMessage`: https://api.slack.com/methods/chat.postMessage

Bearer `SLACK_BOT_TOKEN`, JSON body. Slack reports most errors as HTTP 200 with `ok: false`:
    {"ok": false, "error": "channel_not_found"}
and rate limits as 429 + `Retry-After` with {"ok": false, "error": "ratelimited"}.
"""

from __future__ import annotations

from typing import cast

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
from channels.envelope import SlackPayload
from channels.http import classify_status, parse_retry_after
from config.settings import Settings
from config.tables import Routing, routing

#: Errors that may heal by themselves (api.slack.com/methods/chat.postMessage "Errors").
RETRYABLE_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "service_unavailable",
        "request_timeout",
        "internal_error",
        "fatal_error",
    }
)
#: Errors that will not heal: the message or the configuration must change. Any error not listed
#: as retryable is treated as permanent too: Slack has no idempotency key, so a blind retry of an
#: unknown error risks a double post.
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "msg_too_long",
        "no_text",
        "too_many_attachments",
        "invalid_blocks",
        "invalid_arguments",
        "invalid_arg_name",
        "invalid_array_arg",
        "invalid_charset",
        "invalid_form_data",
        "invalid_post_type",
        "missing_post_type",
        "restricted_action",
        "not_authed",
        "invalid_auth",
        "account_inactive",
        "token_revoked",
        "missing_scope",
    }
)


class SlackChannel:
    name = "slack"

    def __init__(self, settings: Settings, rules: Routing | None = None) -> None:
        self.settings = settings
        self.rules = rules or routing()

    def build_request(self, n: Notification) -> HttpRequest:
        token = require(self.settings.slack_bot_token, "SLACK_BOT_TOKEN")
        payload = cast(SlackPayload, n.request.payload)
        target = payload.target_channel_id or self.rules.slack.channel_for(
            n.request.signal_type, n.request.severity
        )
        body = {
            "channel": target,
            "text": payload.fallback_text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": payload.formatted_message}}
            ],
            "unfurl_links": False,
        }
        return HttpRequest(
            "POST",
            f"{self.settings.slack_api_url.rstrip('/')}/chat.postMessage",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json; charset=utf-8",
            },
            json=body,
        )

    def classify(self, response: HttpResponse) -> Outcome:
        generic = classify_status(response, self.name)
        if generic is not None:
            return generic
        data = response.json()
        if not isinstance(data, dict):
            # A 2xx from Slack means it processed the call; retrying could double-post.
            return Permanent("slack:unparseable_response")
        if data.get("ok") is True:
            ts = data.get("ts")
            return Sent(str(ts) if ts is not None else None)
        error = str(data.get("error") or "unknown_error")
        if error in RETRYABLE_ERRORS:
            return Retryable(f"slack:{error}", parse_retry_after(response.header("retry-after")))
        return Permanent(f"slack:{error}")
