"""E-mail, SMS and push end to end: vendor-spec-valid requests, consent and address checks against
the contacts store, quiet hours in the customer's zone, recipient refusals recorded in the store,
and SMS's fallback to e-mail as a linked dispatch."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from channels.contacts import Contact
from tasks.dispatch import derived_id
from tests.conftest import log_outcomes, make_request, terminal
from tests.specs import validate_recorded
from worker.sandbox import Reply
from worker.store import contacts, deferral
from worker.store import dispatches as store

pytestmark = pytest.mark.usefixtures("worker", "clean")

JANE = "jane@example.com"


def _contact(email: str) -> Contact:
    found = contacts.get(email)
    assert found is not None
    return found


def _request(channel: str, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return make_request(channel, payload, **{"priority": "CRITICAL",
                                             "signal_type": "data_outage", **extra})


def email(**extra: Any) -> dict[str, Any]:
    return _request("email", {"subject": "Your data service is degraded",
                              "plain_text_body": "We are on it.\nSorry <3 & thanks",
                              "customer_name": "Jane Doe"}, **extra)


def sms(**extra: Any) -> dict[str, Any]:
    extra.setdefault("customer", {"phone": "+14155550123", "timezone": "America/Los_Angeles"})
    return _request("sms", {"sms_body": "Meow Mobile: data is degraded in your area."}, **extra)


def push(**extra: Any) -> dict[str, Any]:
    extra.setdefault("customer", {"fcm_token": "tok-jane-1", "timezone": "Europe/London"})
    return _request("push", {"push_title": "Service degraded", "push_body": "We are on it",
                             "deep_link_url": "meow://status"}, **extra)


@pytest.fixture
def clock_at() -> Iterator[Callable[[datetime], None]]:
    """Stand the product's scheduling clock at a given UTC instant (COMMS_CLOCK_OFFSET)."""
    from config.settings import get_settings

    settings = get_settings()
    saved = settings.comms_clock_offset

    def at(instant: datetime) -> None:
        settings.comms_clock_offset = (instant - datetime.now(UTC)).total_seconds()

    yield at
    settings.comms_clock_offset = saved


def _fallback(parent: dict[str, Any]) -> dict[str, Any]:
    return terminal(derived_id(parent["message_id"], "fallback"))


# -- e-mail ---------------------------------------------------------------------------------------


def test_email_is_spec_valid_with_both_parts_and_unsubscribe_link_when_sent(producer, sandbox):
    request = email()
    producer(request)

    row = terminal(request["message_id"])

    [call] = sandbox.requests("sendgrid")
    validate_recorded(call)
    body = call.json()
    assert call.headers["authorization"] == "Bearer SG.sandbox-key.sandbox-secret"
    assert body["personalizations"][0]["to"] == [{"email": JANE, "name": "Jane Doe"}]
    assert body["personalizations"][0]["subject"] == "Your data service is degraded"
    assert body["personalizations"][0]["custom_args"] == {"message_id": request["message_id"]}
    assert body["from"] == {"email": "support@meowmobile.com", "name": "Meow Mobile Support"}
    assert body["reply_to"] == {"email": "support@meowmobile.com"}
    assert body["categories"] == ["proactive_alert", "data_outage"]
    assert body["tracking_settings"]["open_tracking"] == {"enable": True}
    assert body["tracking_settings"]["click_tracking"]["enable"] is True
    text, html = body["content"]
    assert text["type"] == "text/plain" and text["value"].startswith(
        "We are on it.\nSorry <3 & thanks")
    assert html["type"] == "text/html"
    assert "Sorry &lt;3 &amp; thanks" in html["value"]
    link = html["value"].split('href="')[-1].split('"')[0].replace("&amp;", "&")
    assert link.startswith("https://hooks.example.test/email/unsubscribe?")
    assert parse_qs(urlsplit(link).query)["email"] == [JANE]
    assert row["outcome"] == "SENT"
    assert row["response_id"] == call_message_id(sandbox)


def call_message_id(sandbox) -> str:
    [sent] = sandbox.state["sendgrid_sent"]
    return str(sent)


def test_suppressed_and_no_call_when_recipient_unsubscribed(producer, sandbox):
    contacts.set_flags(JANE, email_unsubscribed=True)
    request = email()
    producer(request)

    row = terminal(request["message_id"])

    assert row["outcome"] == "SUPPRESSED"
    assert row["error"] == "email: recipient unsubscribed"
    assert sandbox.requests("sendgrid") == []


def test_email_waits_rate_limit_reset_when_sendgrid_throttles(producer, sandbox):
    request = email()
    reset = int(time.time()) + 2
    sandbox.script("sendgrid", Reply(429, {"errors": [{"field": None,
                                                       "message": "too many requests"}]},
                                     {"X-RateLimit-Reset": str(reset)}))
    producer(request)

    terminal(request["message_id"])

    _first, second = sandbox.requests("sendgrid")
    assert second.at >= reset - 1.0  # epoch seconds have a 1 s resolution
    assert log_outcomes(request["message_id"]) == ["RETRYING", "SENT"]


def test_email_parked_for_a_new_round_when_every_attempt_fails(producer, sandbox):
    request = email()
    sandbox.script("sendgrid", Reply(503, {"errors": [{"message": "unavailable"}]}), repeat=True)
    producer(request)

    from tests.conftest import wait_for

    wait_for(lambda: "DEFERRED" in log_outcomes(request["message_id"]))

    assert len(sandbox.requests("sendgrid")) == 4
    assert log_outcomes(request["message_id"]) == ["RETRYING"] * 3 + ["DEFERRED"]
    [parked] = deferral.pending(uuid.UUID(request["message_id"]))
    assert parked["status"] == "pending" and parked["round_no"] == 1
    # 15 minutes at the test's delay scale of 0.01 is 9 s.
    waited = (parked["due_at"] - parked["created_at"]).total_seconds()
    assert 8.5 <= waited <= 9.5
    assert store.terminal_row(uuid.UUID(request["message_id"])) is None


# -- SMS ------------------------------------------------------------------------------------------


def test_sms_is_spec_valid_form_with_status_callback_when_sent(producer, sandbox):
    request = sms(customer={"phone": "(415) 555-0123", "timezone": "America/Los_Angeles"})
    producer(request)

    row = terminal(request["message_id"])

    [call] = sandbox.requests("twilio")
    validate_recorded(call)
    assert call.path == f"/twilio/2010-04-01/Accounts/AC{'5a' * 16}/Messages.json"
    assert call.headers["content-type"] == "application/x-www-form-urlencoded"
    assert call.form() == {
        "To": "+14155550123",
        "From": "+15005550006",
        "Body": "Meow Mobile: data is degraded in your area.",
        "StatusCallback": "https://hooks.example.test/sms/status",
    }
    assert row["outcome"] == "SENT"
    assert row["response_id"].startswith("SM")
    assert _contact(JANE).phone == "+14155550123"  # stored in E.164


def test_suppressed_then_email_fallback_when_store_says_opted_out(producer, sandbox):
    contacts.set_flags(JANE, sms_opt_out=True)
    request = sms()
    producer(request)

    row = terminal(request["message_id"])
    fallback = _fallback(request)

    assert row["outcome"] == "SUPPRESSED"
    assert row["error"] == "sms: recipient opted out of SMS"
    assert sandbox.requests("twilio") == []
    assert fallback["channel"] == "email" and fallback["outcome"] == "SENT"
    assert str(fallback["parent_message_id"]) == request["message_id"]
    [mail] = sandbox.requests("sendgrid")
    assert mail.json()["content"][0]["value"].startswith(
        "Meow Mobile: data is degraded in your area.")


def test_suppressed_then_email_fallback_when_number_is_invalid(producer, sandbox):
    request = sms(customer={"phone": "12", "timezone": "Europe/London"})
    producer(request)

    row = terminal(request["message_id"])
    _fallback(request)

    assert row["outcome"] == "SUPPRESSED"
    assert row["error"].startswith("sms: invalid phone number")
    assert sandbox.requests("twilio") == []


def test_opt_out_recorded_and_email_fallback_when_twilio_says_21610(producer, sandbox):
    sandbox.state["twilio_opted_out"] = {"+14155550123"}
    request = sms()
    producer(request)

    row = terminal(request["message_id"])
    fallback = _fallback(request)

    assert len(sandbox.requests("twilio")) == 1
    assert row["outcome"] == "FAILED"
    assert "21610" in row["error"]
    assert _contact(JANE).sms_opt_out is True
    assert fallback["channel"] == "email"


def test_three_calls_failed_then_linked_email_when_twilio_always_fails(producer, sandbox):
    from worker.sandbox.vendors import transient_error

    sandbox.script("twilio", transient_error("twilio"), repeat=True)
    request = sms()
    producer(request)

    terminal(request["message_id"])
    fallback = _fallback(request)

    assert len(sandbox.requests("twilio")) == 3
    assert log_outcomes(request["message_id"]) == ["RETRYING", "RETRYING", "FAILED"]
    assert fallback["outcome"] == "SENT"
    assert str(fallback["parent_message_id"]) == request["message_id"]
    assert len(sandbox.requests("sendgrid")) == 1


# -- quiet hours ----------------------------------------------------------------------------------

QUIET_CASES = {
    # Tokyo is UTC+9: 18:00 UTC on 4 Dec is 03:00 on 5 Dec there; the window opens 08:00 on 5 Dec.
    "east_of_utc_next_local_day": ("Asia/Tokyo", datetime(2026, 12, 4, 18, 0, tzinfo=UTC),
                                   datetime(2026, 12, 4, 23, 0, tzinfo=UTC)),
    # New York springs forward at 07:00 UTC on 8 Mar 2026: 08:00 local is then 12:00 UTC, not 13:00.
    "dst_change_day": ("America/New_York", datetime(2026, 3, 8, 7, 30, tzinfo=UTC),
                       datetime(2026, 3, 8, 12, 0, tzinfo=UTC)),
    "evening_after_window": ("Europe/London", datetime(2026, 12, 4, 21, 0, tzinfo=UTC),
                             datetime(2026, 12, 5, 8, 0, tzinfo=UTC)),
}


@pytest.mark.parametrize("case", QUIET_CASES, ids=list(QUIET_CASES))
def test_sms_deferred_to_local_eight_when_outside_window(case, producer, sandbox, clock_at):
    zone, now, opens = QUIET_CASES[case]
    clock_at(now)
    request = sms(priority="HIGH", customer={"phone": "+14155550123", "timezone": zone})
    producer(request)

    from tests.conftest import wait_for

    wait_for(lambda: log_outcomes(request["message_id"]) == ["DEFERRED"])

    [parked] = deferral.pending(uuid.UUID(request["message_id"]))
    assert parked["due_at"] == opens
    assert sandbox.requests("twilio") == []


def test_critical_sms_sent_at_once_when_outside_window(producer, sandbox, clock_at):
    clock_at(datetime(2026, 12, 4, 18, 0, tzinfo=UTC))
    request = sms(priority="CRITICAL", customer={"phone": "+14155550123",
                                                 "timezone": "Asia/Tokyo"})
    producer(request)

    assert terminal(request["message_id"])["outcome"] == "SENT"


@pytest.mark.parametrize(("utc", "deferred"), [
    (datetime(2026, 12, 4, 21, 59, tzinfo=UTC), False),  # 21:59 in London: inside 08:00-22:00
    (datetime(2026, 12, 4, 22, 0, tzinfo=UTC), True),
    (datetime(2026, 12, 5, 7, 59, tzinfo=UTC), True),
])
def test_push_window_is_eight_to_twenty_two_local(utc, deferred, producer, sandbox, clock_at):
    clock_at(utc)
    request = push(priority="MEDIUM")
    producer(request)

    from tests.conftest import wait_for

    outcomes = wait_for(lambda: log_outcomes(request["message_id"]))
    assert outcomes == (["DEFERRED"] if deferred else ["SENT"])


# -- push -----------------------------------------------------------------------------------------


def test_push_is_spec_valid_with_string_data_when_sent(producer, sandbox):
    request = push()
    producer(request)

    row = terminal(request["message_id"])

    [call] = sandbox.requests("fcm")
    validate_recorded(call)
    assert call.path == "/fcm/v1/projects/meow-sandbox/messages:send"
    assert call.headers["authorization"].startswith("Bearer ya29.sandbox-")
    message = call.json()["message"]
    assert message["token"] == "tok-jane-1"
    assert message["notification"] == {"title": "Service degraded", "body": "We are on it"}
    assert message["data"] == {"deep_link": "meow://status", "signal_type": "data_outage"}
    assert all(isinstance(v, str) for v in message["data"].values())
    assert message["apns"] == {"payload": {"aps": {"sound": "default"}}}
    assert message["android"]["priority"] in ("HIGH", "high")
    assert row["response_id"].startswith("projects/meow-sandbox/messages/")


def test_suppressed_when_push_disabled(producer, sandbox):
    contacts.set_flags(JANE, push_enabled=False)
    request = push()
    producer(request)

    row = terminal(request["message_id"])
    assert row["outcome"] == "SUPPRESSED"
    assert row["error"] == "push: recipient disabled push notifications"
    assert sandbox.requests("fcm") == []


def test_suppressed_when_no_token_known(producer, sandbox):
    request = push(customer={"timezone": "Europe/London"})
    producer(request)

    row = terminal(request["message_id"])
    assert row["outcome"] == "SUPPRESSED"
    assert row["error"] == "push: no FCM token for this customer"


def test_token_removed_and_not_retried_when_fcm_says_unregistered(producer, sandbox):
    sandbox.state["fcm_unregistered"] = {"tok-jane-1"}
    request = push()
    producer(request)

    row = terminal(request["message_id"])
    time.sleep(0.3)

    assert len(sandbox.requests("fcm")) == 1
    assert row["outcome"] == "FAILED"
    assert "UNREGISTERED" in row["error"]
    assert _contact(JANE).fcm_tokens == ()
    assert store.get_dispatch(uuid.UUID(derived_id(request["message_id"], "fallback"))) is None


def test_three_calls_then_failed_without_fallback_when_fcm_unavailable(producer, sandbox):
    from worker.sandbox.vendors import transient_error

    sandbox.script("fcm", transient_error("fcm"), repeat=True)
    request = push()
    producer(request)

    row = terminal(request["message_id"])
    time.sleep(0.3)

    assert len(sandbox.requests("fcm")) == 3
    assert row["retry_count"] == 2
    assert sandbox.requests("sendgrid") == [] and sandbox.requests("slack") == []


def test_access_token_fetched_once_when_many_pushes_are_sent(producer, sandbox):
    from channels.fcm.oauth import TOKENS

    TOKENS.clear()
    requests = [push(customer={"fcm_token": f"tok-{i}", "timezone": "Europe/London"})
                for i in range(12)]
    for request in requests:
        producer(request)

    for request in requests:
        assert terminal(request["message_id"])["outcome"] == "SENT"

    assert sandbox.state["oauth2_token_requests"] == 1
    assert len(sandbox.requests("fcm")) == 12
