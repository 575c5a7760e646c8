"""SendGrid v3 Mail Send: `POST {SENDGRID_API_URL}/v3/mail/send`.

API reference: https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send
Bearer `SENDGRID_API_KEY`, JSON body. Success is `202 Accepted` with an empty body; the receipt is
the `X-Message-Id` response header, and our message id rides in `personalizations[].custom_args`
(echoed by every Event Webhook event). Errors:
    400 {"errors": [{"message": "The from email does not contain a valid address.",
                     "field": "from.email", "help": "http://sendgrid.com/docs/..."}]}
    429 {"errors": [{"field": null, "message": "too many requests"}]}
        + X-RateLimit-Limit / X-RateLimit-Remaining / X-RateLimit-Reset (Unix epoch seconds)
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any, cast
from urllib.parse import urlencode

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
from channels.envelope import EmailPayload
from channels.http import MAX_RETRY_AFTER, classify_status, parse_retry_after
from config.settings import Settings

#: SendGrid refuses a category longer than this (spec: categories[].maxLength).
MAX_CATEGORY_LENGTH = 255
#: Statuses SendGrid documents as "fix the request": never retried.
PERMANENT_STATUSES = frozenset({400, 404, 405, 413})


# -- unsubscribe links ---------------------------------------------------------------------------

def sign_unsubscribe(email: str, secret: str) -> str:
    """HMAC-SHA256 (hex) of `email` under `secret`: the `sig` of an unsubscribe link."""
    return hmac.new(secret.encode(), email.encode(), hashlib.sha256).hexdigest()


def verify_unsubscribe(email: str, sig: str, secret: str) -> bool:
    """Whether `sig` was issued for `email`; constant-time, for the unsubscribe webhook."""
    return hmac.compare_digest(sign_unsubscribe(email, secret), sig or "")


def unsubscribe_url(settings: Settings, email: str) -> str:
    """The signed one-address unsubscribe link for an e-mail footer (CAN-SPAM)."""
    base = settings.comms_unsubscribe_url
    if not base:
        if not settings.comms_webhook_base_url:
            raise ChannelConfigError(
                "COMMS_WEBHOOK_BASE_URL (or COMMS_UNSUBSCRIBE_URL) is not set: every e-mail needs"
                " an unsubscribe link"
            )
        base = f"{settings.comms_webhook_base_url.rstrip('/')}/email/unsubscribe"
    secret = require(settings.comms_unsubscribe_secret, "COMMS_UNSUBSCRIBE_SECRET")
    query = urlencode({"email": email, "sig": sign_unsubscribe(email, secret)})
    return f"{base}{'&' if '?' in base else '?'}{query}"


# -- the two bodies ------------------------------------------------------------------------------

def text_to_html(text: str) -> str:
    """Plain text as safe HTML: escaped, blank lines -> paragraphs, line breaks -> <br>."""
    paragraphs = [p for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    return "".join(
        "<p>" + "<br>\n".join(html.escape(line) for line in p.strip("\n").split("\n")) + "</p>\n"
        for p in paragraphs
    )


class _TextExtractor(HTMLParser):
    """Readable text from HTML: entities unescaped, script/style/head dropped, blocks on lines."""

    SKIP = frozenset({"script", "style", "head", "title", "template", "noscript"})
    BLOCK = frozenset({"p", "div", "br", "li", "tr", "table", "ul", "ol", "h1", "h2", "h3", "h4",
                       "h5", "h6", "blockquote", "pre", "hr", "section", "article", "footer"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self._hrefs: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")
        elif tag == "a":
            self._hrefs.append(dict(attrs).get("href"))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")
        elif tag == "a" and self._hrefs:
            href = self._hrefs.pop()
            # Keep the link usable in the text part; skip javascript: and in-page anchors.
            if href and href.startswith(("http://", "https://", "mailto:")):
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)

    def text(self) -> str:
        lines = [" ".join(line.split()) for line in "".join(self.parts).split("\n")]
        out: list[str] = []
        for line in lines:
            if line or (out and out[-1]):
                out.append(line)
        return "\n".join(out).strip()


def html_to_text(markup: str) -> str:
    """The text of an HTML body, via the stdlib parser (never a regex)."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return parser.text()


def _html_footer(url: str) -> str:
    # clicktracking=off: SendGrid would otherwise wrap the signed link in its redirect.
    return (
        '<p style="font-size:12px;color:#666666">You are receiving this because you are a Meow'
        f' Mobile customer. <a clicktracking=off href="{html.escape(url)}">Unsubscribe</a></p>'
    )


def _with_footer(markup: str, footer: str) -> str:
    at = markup.lower().rfind("</body>")
    return markup[:at] + footer + markup[at:] if at >= 0 else markup + footer


def email_bodies(payload: EmailPayload, unsubscribe: str) -> tuple[str, str]:
    """(text/plain, text/html), each derived from the other when missing, each with the footer."""
    text = payload.plain_text_body
    markup = payload.html_body
    if text is None:
        text = html_to_text(cast(str, markup))
    if markup is None:
        markup = text_to_html(text)
    text_footer = f"\n\n--\nTo stop receiving these emails, unsubscribe: {unsubscribe}"
    return text + text_footer, _with_footer(markup, _html_footer(unsubscribe))


# -- the channel ---------------------------------------------------------------------------------

class SendGridChannel:
    name = "email"

    def __init__(self, settings: Settings, now: Callable[[], float] = time.time) -> None:
        self.settings = settings
        #: Unix time; injectable so X-RateLimit-Reset arithmetic is testable.
        self.now = now

    def build_request(self, n: Notification) -> HttpRequest:
        key = require(self.settings.sendgrid_api_key, "SENDGRID_API_KEY")
        payload = cast(EmailPayload, n.request.payload)
        email = str(n.request.recipient)
        text, markup = email_bodies(payload, unsubscribe_url(self.settings, email))

        to: dict[str, str] = {"email": email}
        name = self._customer_name(n, payload)
        if name:
            to["name"] = name
        personalization: dict[str, Any] = {"to": [to], "subject": payload.subject}
        if n.request.message_id is not None:
            personalization["custom_args"] = {"message_id": str(n.request.message_id)}

        categories = ["proactive_alert"]
        signal = n.request.signal_type
        if signal and signal[:MAX_CATEGORY_LENGTH] not in categories:
            categories.append(signal[:MAX_CATEGORY_LENGTH])

        body = {
            "personalizations": [personalization],
            "from": {
                "email": self.settings.comms_support_email,
                "name": self.settings.comms_support_name,
            },
            "reply_to": {"email": self.settings.comms_support_email},
            "content": [
                {"type": "text/plain", "value": text},
                {"type": "text/html", "value": markup},
            ],
            "tracking_settings": {
                "open_tracking": {"enable": True},
                "click_tracking": {"enable": True},
            },
            "categories": categories,
        }
        return HttpRequest(
            "POST",
            f"{self.settings.sendgrid_api_url.rstrip('/')}/v3/mail/send",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            json=body,
        )

    @staticmethod
    def _customer_name(n: Notification, payload: EmailPayload) -> str | None:
        if payload.customer_name:
            return payload.customer_name
        if n.contact is not None and n.contact.name:
            return n.contact.name
        customer = n.request.customer
        return customer.name if customer is not None and customer.name else None

    def classify(self, response: HttpResponse) -> Outcome:
        status = response.status
        if 200 <= status < 300:
            return Sent(response.header("x-message-id"))
        if status == 429:
            return Retryable("sendgrid:rate_limited", self._rate_limit_wait(response))
        if status >= 500:
            return Retryable(f"sendgrid:http_{status}",
                             parse_retry_after(response.header("retry-after")))
        if status in (401, 403):
            return Permanent(f"sendgrid:auth_http_{status}{_messages(response)}")
        if status in PERMANENT_STATUSES:
            return Permanent(f"sendgrid:http_{status}{_messages(response)}")
        generic = classify_status(response, "sendgrid")
        return generic if generic is not None else Permanent(f"sendgrid:http_{status}")

    def _rate_limit_wait(self, response: HttpResponse) -> float | None:
        wait = parse_retry_after(response.header("retry-after"))
        if wait is not None:
            return wait
        reset = response.header("x-ratelimit-reset")
        if reset is None:
            return None
        try:
            seconds = float(reset) - self.now()
        except ValueError:
            return None
        if seconds != seconds:  # NaN
            return None
        return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _messages(response: HttpResponse) -> str:
    """": msg; msg" from SendGrid's {"errors": [{"message": ...}]}, or "" when there is none."""
    data = response.json()
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return ""
    texts = [str(e["message"]) for e in errors if isinstance(e, dict) and e.get("message")]
    return (": " + "; ".join(texts))[:500] if texts else ""
