"""Twilio adapter: the exact form body, phone precedence and normalization, StatusCallback, the
classification table, and round trips through the sandbox validated against Twilio's spec."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from channels import get_channel
from channels.base import (
    ChannelConfigError,
    HttpResponse,
    InvalidRecipient,
    Notification,
    PayloadError,
    Permanent,
    Retryable,
    Sent,
    deliver,
)
from channels.contacts import Contact
from channels.envelope import DispatchRequest
from channels.http import HttpTransport
from channels.twilio import TwilioChannel
from config.settings import Settings
from tests.specs import validate_http_request, validate_recorded
from worker.sandbox import Sandbox

SID = "AC" + "0123456789abcdef" * 2


def settings(**overrides) -> Settings:
    values: dict[str, Any] = {
        "twilio_account_sid": SID,
        "twilio_auth_token": "auth-token",
        "twilio_from_number": "+15005550006",
        "twilio_api_url": "https://api.twilio.com",
        "comms_webhook_base_url": "https://hooks.meowmobile.example/",
        "comms_default_phone_region": "US",
    }
    values.update(overrides)
    return Settings(**values)


def notification(phone: str | None = "+14155552671", *, contact: Contact | None = None,
                 customer: dict[str, Any] | None = None, body: str = "Your bill is due"
                 ) -> Notification:
    payload: dict[str, Any] = {"sms_body": body}
    if phone is not None:
        payload["customer_phone"] = phone
    request = DispatchRequest.model_validate({
        "recipient": "jane@example.com", "channel": "sms", "message_payload": payload,
        "priority": "HIGH", "customer": customer,
    })
    return Notification(request, contact)


def test_build_request_posts_form_with_basic_auth_when_configured():
    req = TwilioChannel(settings()).build_request(notification())
    assert req.method == "POST"
    assert req.url == f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
    expected_auth = base64.b64encode(f"{SID}:auth-token".encode()).decode()
    assert req.headers["Authorization"] == f"Basic {expected_auth}"
    assert req.json is None
    assert req.form == {
        "To": "+14155552671",
        "From": "+15005550006",
        "Body": "Your bill is due",
        "StatusCallback": "https://hooks.meowmobile.example/sms/status",
    }
    validate_http_request("twilio", req)


def test_status_callback_is_omitted_when_webhook_base_is_unset():
    req = TwilioChannel(settings(comms_webhook_base_url=None)).build_request(notification())
    assert req.form is not None and "StatusCallback" not in req.form


@pytest.mark.parametrize(
    ("phone", "contact", "customer", "expected"),
    [
        pytest.param("(415) 555-2671", Contact("j@x.com", phone="+442079460018"),
                     {"phone": "+819012345678"}, "+14155552671", id="payload-first-national"),
        pytest.param(None, Contact("j@x.com", phone="+442079460018"),
                     {"phone": "+819012345678"}, "+442079460018", id="contact-second"),
        pytest.param(None, Contact("j@x.com"), {"phone": "+81 90-1234-5678"}, "+819012345678",
                     id="envelope-third"),
    ],
)
def test_phone_follows_precedence_when_sources_differ(phone, contact, customer, expected):
    channel = TwilioChannel(settings())
    n = notification(phone, contact=contact, customer=customer)
    assert channel.build_request(n).form["To"] == expected  # type: ignore[index]
    assert channel.target_for(n) == expected


def test_national_number_uses_default_region_when_configured():
    req = TwilioChannel(settings(comms_default_phone_region="GB")).build_request(
        notification("020 7946 0018"))
    assert req.form["To"] == "+442079460018"  # type: ignore[index]


@pytest.mark.parametrize(
    ("phone", "contact"),
    [
        pytest.param(None, None, id="no-phone-anywhere"),
        pytest.param("not-a-number", None, id="garbage"),
        pytest.param("+1 415 555 267", None, id="too-short"),
    ],
)
def test_build_request_raises_payload_error_when_phone_is_missing_or_invalid(phone, contact):
    with pytest.raises(PayloadError):
        TwilioChannel(settings()).build_request(notification(phone, contact=contact))


@pytest.mark.parametrize("missing", ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN",
                                     "TWILIO_FROM_NUMBER"])
def test_build_request_raises_config_error_when_credential_is_missing(missing):
    channel = TwilioChannel(settings(**{missing.lower(): None}))
    with pytest.raises(ChannelConfigError, match=missing):
        channel.build_request(notification())


# -- classification ------------------------------------------------------------------------------

def twilio_error(status: int, code: int, message: str, **headers: str) -> HttpResponse:
    body = {"code": code, "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}
    return HttpResponse(status, {k.replace("_", "-"): v for k, v in headers.items()},
                        json.dumps(body).encode())


MESSAGE = {"sid": "SM" + "a" * 32, "status": "queued", "to": "+14155552671"}


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        pytest.param(HttpResponse(201, {}, json.dumps(MESSAGE).encode()), Sent("SM" + "a" * 32),
                     id="201-sid"),
        pytest.param(twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"),
                     InvalidRecipient("twilio:21610 Attempt to send to unsubscribed recipient",
                                      action="opt_out_sms"), id="21610-opted-out"),
        pytest.param(twilio_error(400, 21211, "Invalid 'To' Phone Number: +1555"),
                     InvalidRecipient("twilio:21211 Invalid 'To' Phone Number: +1555"),
                     id="21211-invalid-to"),
        pytest.param(twilio_error(400, 21614, "'To' number is not a valid mobile number"),
                     InvalidRecipient("twilio:21614 'To' number is not a valid mobile number"),
                     id="21614-landline"),
        pytest.param(twilio_error(400, 21612, "The 'To' phone number is not currently reachable"),
                     InvalidRecipient("twilio:21612 The 'To' phone number is not currently"
                                      " reachable"), id="21612-unroutable"),
        pytest.param(twilio_error(429, 20429, "Too Many Requests", retry_after="3"),
                     Retryable("twilio:20429 Too Many Requests", 3.0), id="20429-retry-after"),
        pytest.param(twilio_error(429, 20429, "Too Many Requests"),
                     Retryable("twilio:20429 Too Many Requests", None), id="20429-no-hint"),
        pytest.param(HttpResponse(429, {}, b""), Retryable("twilio:http_429"), id="429-bare"),
        pytest.param(twilio_error(500, 20500, "Internal Server Error"),
                     Retryable("twilio:20500 Internal Server Error"), id="500"),
        pytest.param(twilio_error(503, 20503, "Service Unavailable"),
                     Retryable("twilio:20503 Service Unavailable"), id="503"),
        pytest.param(HttpResponse(502, {}, b"<html>Bad Gateway</html>"),
                     Retryable("twilio:http_502"), id="502-html"),
        pytest.param(twilio_error(401, 20003, "Authenticate"),
                     Permanent("twilio:auth twilio:20003 Authenticate"), id="401-20003-auth"),
        pytest.param(twilio_error(403, 20008, "Resource not accessible with Test Account"),
                     Permanent("twilio:auth twilio:20008 Resource not accessible with Test"
                               " Account"), id="403-auth"),
        pytest.param(twilio_error(400, 21408, "Permission to send an SMS has not been enabled"),
                     Permanent("twilio:21408 Permission to send an SMS has not been enabled"),
                     id="21408-other-4xx"),
        pytest.param(twilio_error(400, 21606, "The 'From' phone number is not a valid"),
                     Permanent("twilio:21606 The 'From' phone number is not a valid"),
                     id="21606-from"),
    ],
)
def test_classify_maps_response_when_twilio_answers(resp, expected):
    assert TwilioChannel(settings()).classify(resp) == expected


def test_registry_returns_twilio_when_channel_is_sms():
    assert isinstance(get_channel("sms", settings()), TwilioChannel)


# -- sandbox round trips -------------------------------------------------------------------------

@pytest.fixture
def sandbox():
    with Sandbox() as sb:
        yield sb


def sandbox_channel(sb: Sandbox, **overrides) -> TwilioChannel:
    env = sb.env()
    return TwilioChannel(settings(
        twilio_api_url=env["TWILIO_API_URL"], twilio_account_sid=env["TWILIO_ACCOUNT_SID"],
        twilio_auth_token=env["TWILIO_AUTH_TOKEN"], twilio_from_number=env["TWILIO_FROM_NUMBER"],
        **overrides))


def test_round_trip_sends_spec_valid_form_when_sandbox_answers(sandbox):
    outcome = deliver(sandbox_channel(sandbox), notification("415 555 2671"), HttpTransport())
    assert isinstance(outcome, Sent)
    assert outcome.response_id is not None and outcome.response_id.startswith("SM")
    assert len(outcome.response_id) == 34
    (recorded,) = sandbox.requests("twilio")
    assert recorded.headers["content-type"] == "application/x-www-form-urlencoded"
    assert recorded.form() == {"To": "+14155552671", "From": "+15005550006",
                               "Body": "Your bill is due",
                               "StatusCallback": "https://hooks.meowmobile.example/sms/status"}
    validate_recorded(recorded)


def test_round_trip_opts_out_number_when_sandbox_says_21610(sandbox):
    sandbox.state.setdefault("twilio_opted_out", set()).add("+14155552671")
    outcome = deliver(sandbox_channel(sandbox), notification(), HttpTransport())
    assert isinstance(outcome, InvalidRecipient)
    assert outcome.action == "opt_out_sms"
    assert outcome.reason.startswith("twilio:21610")
    assert outcome.target == "+14155552671"


def test_round_trip_is_permanent_auth_when_token_is_wrong(sandbox):
    channel = sandbox_channel(sandbox)
    req = channel.build_request(notification())
    bad = type(req)(req.method, req.url, {"Authorization": "Basic " + base64.b64encode(
        b"ACwrong:nope").decode()}, form=req.form)
    outcome = channel.classify(HttpTransport().send(bad))  # type: ignore[arg-type]
    assert outcome == Permanent("twilio:auth twilio:20003 Authenticate")


def test_round_trip_is_retryable_when_sandbox_injects_fault(sandbox):
    sandbox.error_rate = 1.0
    outcome = deliver(sandbox_channel(sandbox), notification(), HttpTransport())
    assert outcome == Retryable("twilio:20503 Service Unavailable")


def test_round_trip_is_invalid_recipient_when_to_is_not_e164(sandbox):
    channel = sandbox_channel(sandbox)
    req = channel.build_request(notification())
    raw = type(req)(req.method, req.url, req.headers, form={**(req.form or {}), "To": "4155552671"})
    outcome = channel.classify(HttpTransport().send(raw))  # type: ignore[arg-type]
    assert isinstance(outcome, InvalidRecipient) and outcome.action is None
    assert outcome.reason.startswith("twilio:21211")
