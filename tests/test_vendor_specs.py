"""tests/specs.py itself: every vendor's spec loads, conforming requests pass, broken ones fail,
and sandbox/real URLs are mapped onto the spec's server. Also the Slack adapter against its spec."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

import pytest
from openapi_core.exceptions import OpenAPIError

from channels.base import HttpRequest, Notification, deliver
from channels.envelope import DispatchRequest
from channels.http import HttpTransport
from channels.slack import SlackChannel
from config.settings import Settings
from tests.specs import VENDORS, api, validate_http_request, validate_recorded, validate_request
from worker.sandbox import Sandbox

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
SID = "AC" + "0123456789abcdef" * 2


def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def dumps(data: Any) -> bytes:
    return json.dumps(data).encode()


PD_EVENT = {
    "routing_key": "r" * 32,
    "event_action": "trigger",
    "dedup_key": "k",
    "payload": {"summary": "s", "source": "meow-comms", "severity": "critical"},
}
ZD_TICKET = {
    "ticket": {
        "subject": "s",
        "comment": {"body": "b", "public": False},
        "priority": "urgent",
        "type": "incident",
    }
}
SG_MAIL = {
    "personalizations": [{"to": [{"email": "jane@example.com"}]}],
    "from": {"email": "support@meowmobile.com"},
    "subject": "s",
    "content": [{"type": "text/plain", "value": "hi"}],
}
FCM_MESSAGE = {
    "message": {
        "token": "t",
        "notification": {"title": "a", "body": "b"},
        "android": {"priority": "HIGH"},
    }
}

#: (vendor, method, url, headers, body, content type) that each spec accepts.
VALID: dict[str, tuple[str, str, str, dict[str, str], bytes, str]] = {
    "slack": (
        "slack",
        "POST",
        "https://slack.com/api/chat.postMessage",
        {"Authorization": "Bearer xoxb-1"},
        dumps({"channel": "C1", "text": "hi", "unfurl_links": False}),
        JSON,
    ),
    "zendesk": (
        "zendesk",
        "POST",
        "http://127.0.0.1:5000/zendesk/api/v2/tickets.json",
        basic("a@b.example/token", "t"),
        dumps(ZD_TICKET),
        JSON,
    ),
    "jira": (
        "jira",
        "POST",
        "https://acme.atlassian.net/rest/api/3/issue",
        basic("a@b.example", "t"),
        dumps({"fields": {"summary": "s"}}),
        JSON,
    ),
    "pagerduty": (
        "pagerduty",
        "POST",
        "https://events.pagerduty.com/v2/enqueue",
        {},
        dumps(PD_EVENT),
        JSON,
    ),
    "sendgrid": (
        "sendgrid",
        "POST",
        "http://127.0.0.1:1/sendgrid/v3/mail/send",
        {"Authorization": "Bearer SG.x"},
        dumps(SG_MAIL),
        JSON,
    ),
    "twilio": (
        "twilio",
        "POST",
        f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json",
        basic(SID, "t"),
        urlencode({"To": "+15005550006", "From": "+15005550001", "Body": "hi"}).encode(),
        FORM,
    ),
    "fcm": (
        "fcm",
        "POST",
        "http://127.0.0.1:2/fcm/v1/projects/p/messages:send",
        {"Authorization": "Bearer ya29.x"},
        dumps(FCM_MESSAGE),
        JSON,
    ),
}

INVALID = [
    (
        "slack-no-channel",
        "slack",
        "POST",
        "https://slack.com/api/chat.postMessage",
        {"Authorization": "Bearer xoxb-1"},
        dumps({"text": "hi"}),
        JSON,
        "'channel' is a required property",
    ),
    (
        "slack-no-token",
        "slack",
        "POST",
        "https://slack.com/api/chat.postMessage",
        {},
        dumps({"channel": "C1"}),
        JSON,
        "token",
    ),
    (
        "zendesk-bad-priority",
        "zendesk",
        "POST",
        "https://acme.zendesk.com/api/v2/tickets.json",
        basic("a@b.example/token", "t"),
        dumps({"ticket": {**ZD_TICKET["ticket"], "priority": "omg"}}),
        JSON,
        "'omg' is not one of",
    ),
    (
        "zendesk-no-comment",
        "zendesk",
        "POST",
        "https://acme.zendesk.com/api/v2/tickets.json",
        basic("a@b.example/token", "t"),
        dumps({"ticket": {"subject": "s"}}),
        JSON,
        "'comment' is a required property",
    ),
    (
        "zendesk-no-auth",
        "zendesk",
        "POST",
        "https://acme.zendesk.com/api/v2/tickets.json",
        {},
        dumps(ZD_TICKET),
        JSON,
        "basicAuth",
    ),
    (
        "jira-fields-not-object",
        "jira",
        "POST",
        "https://acme.atlassian.net/rest/api/3/issue",
        basic("a@b.example", "t"),
        dumps({"fields": "oops"}),
        JSON,
        "'oops' is not of type 'object'",
    ),
    (
        "pagerduty-no-severity",
        "pagerduty",
        "POST",
        "https://events.pagerduty.com/v2/enqueue",
        {},
        dumps({**PD_EVENT, "payload": {"summary": "s", "source": "x"}}),
        JSON,
        "'severity' is a required property",
    ),
    (
        "pagerduty-bad-action",
        "pagerduty",
        "POST",
        "https://events.pagerduty.com/v2/enqueue",
        {},
        dumps({**PD_EVENT, "event_action": "explode"}),
        JSON,
        "'explode' is not one of",
    ),
    (
        "pagerduty-wrong-path",
        "pagerduty",
        "POST",
        "https://events.pagerduty.com/v2/nope",
        {},
        dumps(PD_EVENT),
        JSON,
        "Path not found",
    ),
    (
        "sendgrid-no-personalizations",
        "sendgrid",
        "POST",
        "https://api.sendgrid.com/v3/mail/send",
        {"Authorization": "Bearer SG.x"},
        dumps({k: v for k, v in SG_MAIL.items() if k != "personalizations"}),
        JSON,
        "'personalizations' is a required property",
    ),
    (
        "sendgrid-no-auth",
        "sendgrid",
        "POST",
        "https://api.sendgrid.com/v3/mail/send",
        {},
        dumps(SG_MAIL),
        JSON,
        "BearerAuth",
    ),
    (
        "twilio-no-to",
        "twilio",
        "POST",
        f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json",
        basic(SID, "t"),
        urlencode({"From": "+15005550001", "Body": "hi"}).encode(),
        FORM,
        "'To' is a required property",
    ),
    (
        "twilio-bad-sid",
        "twilio",
        "POST",
        "https://api.twilio.com/2010-04-01/Accounts/XX1/Messages.json",
        basic(SID, "t"),
        urlencode({"To": "+15005550006", "Body": "hi"}).encode(),
        FORM,
        "does not match",
    ),
    (
        "fcm-bad-android-priority",
        "fcm",
        "POST",
        "https://fcm.googleapis.com/v1/projects/p/messages:send",
        {"Authorization": "Bearer ya29.x"},
        dumps({"message": {"token": "t", "android": {"priority": "URGENT"}}}),
        JSON,
        "'URGENT' is not one of",
    ),
]


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_spec_loads_when_specs_folder_is_present(vendor):
    assert api(vendor) is api(vendor)


@pytest.mark.parametrize("case", sorted(VALID), ids=sorted(VALID))
def test_request_passes_when_it_conforms_to_vendor_spec(case):
    vendor, method, url, headers, body, ctype = VALID[case]
    validate_request(vendor, method, url, {**headers, "Content-Type": ctype}, body, ctype)


@pytest.mark.parametrize(
    ("vendor", "method", "url", "headers", "body", "ctype", "problem"),
    [c[1:] for c in INVALID],
    ids=[c[0] for c in INVALID],
)
def test_request_fails_when_it_breaks_vendor_spec(
    vendor, method, url, headers, body, ctype, problem
):
    with pytest.raises(OpenAPIError) as raised:
        validate_request(vendor, method, url, {**headers, "Content-Type": ctype}, body, ctype)
    # openapi-core puts the schema errors on the cause; the top-level message is generic.
    detail = repr(raised.value.__cause__) + str(raised.value)
    assert problem in detail


def test_channel_names_map_to_vendors_when_validating():
    _, method, url, headers, body, ctype = VALID["sendgrid"]
    validate_request("email", method, url, headers, body, ctype)


def test_error_is_raised_when_loopback_url_lacks_vendor_prefix():
    with pytest.raises(AssertionError, match="/pagerduty/v2"):
        validate_request(
            "pagerduty", "POST", "http://127.0.0.1:9/v2/enqueue", {}, dumps(PD_EVENT), JSON
        )


def test_unknown_vendor_is_refused_when_validating():
    with pytest.raises(ValueError, match="no vendor spec"):
        validate_request("carrier-pigeon", "POST", "https://x/", {}, None, None)


def test_test_is_skipped_when_specs_folder_is_absent(monkeypatch, tmp_path):
    monkeypatch.setenv("COMMS_VENDOR_SPECS_DIR", str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match="COMMS_VENDOR_SPECS_DIR"):
        api("pagerduty")


# -- the Slack adapter against the Slack spec ------------------------------------------------------


def slack_notification(**payload: Any) -> Notification:
    return Notification(
        DispatchRequest.model_validate(
            {
                "recipient": "jane@example.com",
                "channel": "slack",
                "priority": "HIGH",
                "signal_type": "network_outage",
                "severity": "critical",
                "message_payload": {
                    "formatted_message": '*Tower 12* down <!here> & "more"',
                    "fallback_text": "Tower 12 down",
                    **payload,
                },
            }
        )
    )


def slack_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "slack_bot_token": "xoxb-test",
        "slack_api_url": "https://slack.com/api",
    }
    values.update(overrides)
    return Settings(**values)


def test_slack_request_conforms_to_spec_when_routed_by_rules():
    req = SlackChannel(slack_settings()).build_request(slack_notification())
    assert req.json["channel"] == "#noc-critical"
    validate_http_request("slack", req)


def test_slack_request_conforms_to_spec_when_target_channel_is_given():
    req = SlackChannel(slack_settings()).build_request(
        slack_notification(target_channel_id="C0123")
    )
    validate_http_request("slack", req)


def test_slack_request_fails_spec_when_bearer_token_is_missing():
    req = SlackChannel(slack_settings()).build_request(slack_notification())
    bare = HttpRequest(
        req.method, req.url, headers={"Content-Type": "application/json"}, json=req.json
    )
    with pytest.raises(OpenAPIError):
        validate_http_request("slack", bare)


def test_slack_request_fails_spec_when_boolean_is_not_a_boolean():
    req = SlackChannel(slack_settings()).build_request(slack_notification())
    broken = HttpRequest(
        req.method, req.url, headers=req.headers, json={**req.json, "unfurl_links": "maybe"}
    )
    with pytest.raises(OpenAPIError):
        validate_http_request("slack", broken)


def test_slack_post_conforms_to_spec_when_sandbox_records_it():
    with Sandbox() as sb:
        s = Settings.model_validate({k.lower(): v for k, v in sb.env().items()})
        outcome = deliver(SlackChannel(s), slack_notification(), HttpTransport())
        (recorded,) = sb.requests("slack")
    assert outcome.__class__.__name__ == "Sent"
    validate_recorded(recorded)
