"""Pre-dispatch checks for the customer channels (design.md §4): consent, a reachable address,
and quiet hours in the customer's own zone. They read the contacts store; the rules themselves
are pure functions in channels.checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from typing import cast

from channels.base import Notification
from channels.checks import (
    PUSH_WINDOW,
    SMS_WINDOW,
    InvalidPhoneNumber,
    next_window_open,
    normalize_phone,
    window_applies,
)
from channels.envelope import DispatchRequest, PushPayload, SmsPayload
from config.settings import get_settings
from worker import clock
from worker.store import contacts


@dataclass(frozen=True, slots=True)
class Suppress:
    """Do not send, for good (terminal SUPPRESSED)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Defer:
    """Not now: park until `until` (DEFERRED), then check again."""

    until: datetime
    reason: str


Verdict = Notification | Suppress | Defer

CUSTOMER_CHANNELS = ("email", "sms", "push")


def prepare(channel: str, request: DispatchRequest) -> Verdict:
    """What to do with a claimed request before any vendor is called."""
    if channel not in CUSTOMER_CHANNELS:
        return Notification(request)
    profile = request.customer.model_dump() if request.customer else None
    contact = contacts.merge_profile(str(request.recipient), profile)
    n = Notification(request, contact)
    if channel == "email":
        return Suppress("email: recipient unsubscribed") if contact.email_unsubscribed else n
    if channel == "sms":
        if contact.sms_opt_out:
            return Suppress("sms: recipient opted out of SMS")
        raw = cast(SmsPayload, request.payload).customer_phone or contact.phone
        if not raw:
            return Suppress("sms: no phone number for this customer")
        try:
            normalize_phone(raw, get_settings().comms_default_phone_region)
        except InvalidPhoneNumber as exc:
            return Suppress(f"sms: invalid phone number: {exc}")
        return _quiet_hours(n, "sms", SMS_WINDOW, contact.timezone)
    if not contact.push_enabled:
        return Suppress("push: recipient disabled push notifications")
    if not (cast(PushPayload, request.payload).device_fcm_token or contact.fcm_tokens):
        return Suppress("push: no FCM token for this customer")
    return _quiet_hours(n, "push", PUSH_WINDOW, contact.timezone)


def _quiet_hours(n: Notification, channel: str, window: tuple[time, time],
                 zone: str | None) -> Verdict:
    if not window_applies(n.request.priority):
        return n
    opens = next_window_open(clock.now(), zone, *window)
    if opens is None:
        return n
    start, end = (t.strftime("%H:%M") for t in window)
    return Defer(opens, f"{channel}: outside {start}-{end} in {zone or 'UTC'}")
