"""Twilio Messages: `POST {TWILIO_API_URL}/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages.json`.

API reference: https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource
HTTP Basic `AccountSid:AuthToken`, form-encoded body (a JSON body gets 415). Success is 201 with the
Message resource; the receipt is its `sid` (`SM…`), and delivery arrives later on StatusCallback.
Errors (https://www.twilio.com/docs/api/errors):
    {"code": 21211, "message": "The 'To' number +1555 is not a valid phone number.",
     "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}
"""

from __future__ import annotations

import base64
from typing import cast

from channels.base import (
    HttpRequest,
    HttpResponse,
    InvalidRecipient,
    Notification,
    Outcome,
    PayloadError,
    Permanent,
    Retryable,
    Sent,
    require,
)
from channels.checks import InvalidPhoneNumber, normalize_phone
from channels.envelope import SmsPayload
from channels.http import parse_retry_after
from config.settings import Settings

#: The customer replied STOP: suppress, and mark the contact opted out.
OPTED_OUT_CODES = frozenset({21610})
#: 21211 invalid `To`, 21614 `To` not SMS-capable (landline), 21612 unroutable from our number.
#: The number will not start working on a retry.
INVALID_RECIPIENT_CODES = frozenset({21211, 21612, 21614})
#: 20429 "Too many requests": "never processed and always safe to retry" (docs/api/errors/20429).
RATE_LIMIT_CODES = frozenset({20429})
#: 20003 "Authenticate": wrong SID/token.
AUTH_CODES = frozenset({20003})


class TwilioChannel:
    name = "sms"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def target_for(self, n: Notification) -> str:
        """The E.164 number this notification is sent to."""
        payload = cast(SmsPayload, n.request.payload)
        raw = payload.customer_phone
        if not raw and n.contact is not None:
            raw = n.contact.phone
        if not raw and n.request.customer is not None:
            raw = n.request.customer.phone
        if not raw:
            raise PayloadError("no phone number for this customer")
        try:
            return normalize_phone(raw, self.settings.comms_default_phone_region)
        except InvalidPhoneNumber as exc:
            raise PayloadError(str(exc)) from None

    def build_request(self, n: Notification) -> HttpRequest:
        sid = require(self.settings.twilio_account_sid, "TWILIO_ACCOUNT_SID")
        token = require(self.settings.twilio_auth_token, "TWILIO_AUTH_TOKEN")
        sender = require(self.settings.twilio_from_number, "TWILIO_FROM_NUMBER")
        payload = cast(SmsPayload, n.request.payload)
        form = {"To": self.target_for(n), "From": sender, "Body": payload.sms_body}
        webhooks = self.settings.comms_webhook_base_url
        if webhooks:
            form["StatusCallback"] = f"{webhooks.rstrip('/')}/sms/status"
        basic = base64.b64encode(f"{sid}:{token}".encode()).decode()
        return HttpRequest(
            "POST",
            f"{self.settings.twilio_api_url.rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json",
            headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
            form=form,
        )

    def classify(self, response: HttpResponse) -> Outcome:
        status = response.status
        data = response.json()
        if 200 <= status < 300:
            sid = data.get("sid") if isinstance(data, dict) else None
            return Sent(str(sid) if sid is not None else None)
        code, message = _error(data)
        label = f"twilio:{code}" if code is not None else f"twilio:http_{status}"
        reason = f"{label} {message}".strip()[:500]
        if code in OPTED_OUT_CODES:
            return InvalidRecipient(reason, action="opt_out_sms")
        if code in INVALID_RECIPIENT_CODES:
            return InvalidRecipient(reason)
        if code in RATE_LIMIT_CODES or status == 429:
            return Retryable(reason, parse_retry_after(response.header("retry-after")))
        if status >= 500:
            # SMS sends are not idempotent (docs/errors/20500); the retry table caps this at 2.
            return Retryable(reason, parse_retry_after(response.header("retry-after")))
        if code in AUTH_CODES or status in (401, 403):
            return Permanent(f"twilio:auth {reason}")
        return Permanent(reason)


def _error(data: object) -> tuple[int | None, str]:
    if not isinstance(data, dict):
        return None, ""
    code = data.get("code")
    try:
        number = int(code) if code is not None else None
    except (TypeError, ValueError):
        number = None
    return number, str(data.get("message") or "")
