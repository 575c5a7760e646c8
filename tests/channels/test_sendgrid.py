"""SendGrid adapter: the exact Mail Send body, both MIME parts, the signed unsubscribe link, and the
classification table; plus a round trip through the sandbox validated against SendGrid's spec."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import pytest

from channels import get_channel
from channels.base import (
    ChannelConfigError,
    HttpResponse,
    Notification,
    Permanent,
    Retryable,
    Sent,
    deliver,
)
from channels.contacts import Contact
from channels.envelope import DispatchRequest
from channels.http import HttpTransport
from channels.sendgrid import (
    SendGridChannel,
    html_to_text,
    sign_unsubscribe,
    text_to_html,
    verify_unsubscribe,
)
from config.settings import Settings
from tests.specs import validate_http_request, validate_recorded
from worker.sandbox import Sandbox

MESSAGE_ID = UUID("6f1c2b4e-3d5a-4e8f-9b7c-1a2b3c4d5e6f")
SECRET = "unsubscribe-test-secret"


def settings(**overrides) -> Settings:
    values: dict[str, Any] = {
        "sendgrid_api_key": "SG.test-key",
        "sendgrid_api_url": "https://api.sendgrid.com",
        "comms_webhook_base_url": "https://hooks.meowmobile.example",
        "comms_unsubscribe_url": "",
        "comms_unsubscribe_secret": SECRET,
        "comms_support_email": "support@meowmobile.com",
        "comms_support_name": "Meow Mobile Support",
    }
    values.update(overrides)
    return Settings(**values)


def notification(payload: dict[str, Any] | None = None, *, contact: Contact | None = None,
                 customer: dict[str, Any] | None = None, signal_type: str | None = "payment_failed",
                 message_id: UUID | None = MESSAGE_ID) -> Notification:
    request = DispatchRequest.model_validate({
        "recipient": "jane@example.com",
        "channel": "email",
        "message_payload": payload or {"subject": "Your payment failed",
                                        "plain_text_body": "Hi Jane,\nplease update your card."},
        "priority": "HIGH",
        "message_id": message_id,
        "signal_type": signal_type,
        "customer": customer,
    })
    return Notification(request, contact)


def build(n: Notification | None = None, **overrides):
    return SendGridChannel(settings(**overrides)).build_request(n or notification())


def parts(req) -> tuple[str, str]:
    content = req.json["content"]
    assert [c["type"] for c in content] == ["text/plain", "text/html"]
    return content[0]["value"], content[1]["value"]


def unsubscribe_link(text: str) -> str:
    return next(w for w in text.split() if "/email/unsubscribe?" in w or "unsub.example" in w)


# -- the request ---------------------------------------------------------------------------------

def test_build_request_posts_seed_body_when_given_text_body():
    req = build(notification(payload={"subject": "Your payment failed",
                                      "plain_text_body": "Hi Jane",
                                      "customer_name": "Jane Doe"}))
    assert req.method == "POST"
    assert req.url == "https://api.sendgrid.com/v3/mail/send"
    assert req.headers["Authorization"] == "Bearer SG.test-key"
    assert req.headers["Content-Type"] == "application/json"
    text, markup = parts(req)
    assert req.json == {
        "personalizations": [{
            "to": [{"email": "jane@example.com", "name": "Jane Doe"}],
            "subject": "Your payment failed",
            "custom_args": {"message_id": str(MESSAGE_ID)},
        }],
        "from": {"email": "support@meowmobile.com", "name": "Meow Mobile Support"},
        "reply_to": {"email": "support@meowmobile.com"},
        "content": [{"type": "text/plain", "value": text}, {"type": "text/html", "value": markup}],
        "tracking_settings": {"open_tracking": {"enable": True},
                              "click_tracking": {"enable": True}},
        "categories": ["proactive_alert", "payment_failed"],
    }
    validate_http_request("sendgrid", req)


def test_build_request_uses_api_url_setting_when_overridden():
    req = build(sendgrid_api_url="http://127.0.0.1:9/sendgrid/")
    assert req.url == "http://127.0.0.1:9/sendgrid/v3/mail/send"


def test_reply_to_is_support_inbox_when_configured():
    req = build(comms_support_email="help@meow.example", comms_support_name="Meow Help")
    assert req.json["reply_to"] == {"email": "help@meow.example"}
    assert req.json["from"] == {"email": "help@meow.example", "name": "Meow Help"}


@pytest.mark.parametrize(
    ("payload_name", "contact", "customer", "expected"),
    [
        pytest.param("Payload Name", Contact("jane@example.com", name="Contact Name"),
                     {"name": "Customer Name"}, "Payload Name", id="payload-first"),
        pytest.param(None, Contact("jane@example.com", name="Contact Name"),
                     {"name": "Customer Name"}, "Contact Name", id="contact-second"),
        pytest.param(None, None, {"name": "Customer Name"}, "Customer Name", id="envelope-third"),
        pytest.param(None, Contact("jane@example.com"), None, None, id="unknown-omitted"),
    ],
)
def test_recipient_name_follows_precedence_when_sources_differ(payload_name, contact, customer,
                                                               expected):
    payload = {"subject": "s", "plain_text_body": "b"}
    if payload_name:
        payload["customer_name"] = payload_name
    req = build(notification(payload, contact=contact, customer=customer))
    to = req.json["personalizations"][0]["to"][0]
    assert to == ({"email": "jane@example.com", "name": expected} if expected
                  else {"email": "jane@example.com"})


def test_categories_hold_only_proactive_alert_when_signal_type_is_none():
    req = build(notification(signal_type=None))
    assert req.json["categories"] == ["proactive_alert"]


def test_categories_are_unique_when_signal_type_is_proactive_alert():
    req = build(notification(signal_type="proactive_alert"))
    assert req.json["categories"] == ["proactive_alert"]


def test_custom_args_are_omitted_when_message_id_is_absent():
    req = build(notification(message_id=None))
    assert "custom_args" not in req.json["personalizations"][0]
    assert "custom_args" not in req.json  # top-level custom_args is a string in the spec


# -- the two parts -------------------------------------------------------------------------------

def test_html_part_escapes_text_when_only_text_is_given():
    req = build(notification({"subject": "s",
                              "plain_text_body": "Total <b>due</b> & \"late\"\nline two\n\nnext"}))
    text, markup = parts(req)
    assert text.startswith("Total <b>due</b> & \"late\"\nline two\n\nnext")
    assert "<p>Total &lt;b&gt;due&lt;/b&gt; &amp; &quot;late&quot;<br>\nline two</p>" in markup
    assert "<p>next</p>" in markup
    assert "<b>due</b>" not in markup


def test_text_part_strips_tags_and_scripts_when_only_html_is_given():
    html_body = (
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        "<script>alert('x')</script><p>Hello&nbsp;Jane &amp; co &lt;3</p>"
        "<p>Visit <a href=\"https://meow.example/account\">your account</a></p>"
        "</body></html>"
    )
    text, markup = parts(build(notification({"subject": "s", "html_body": html_body})))
    # Entities unescaped (&nbsp; read as a space), paragraphs kept, link targets kept.
    assert text.startswith(
        "Hello Jane & co <3\n\nVisit your account (https://meow.example/account)\n\n--\n")
    for leaked in ("alert", "color: red", "<p>", "&amp;", "T\n"):
        assert leaked not in text
    assert markup.startswith(html_body[: html_body.index("</body>")])


def test_both_parts_are_sent_as_given_when_both_are_given():
    text, markup = parts(build(notification({"subject": "s", "plain_text_body": "plain",
                                             "html_body": "<p>rich</p>"})))
    assert text.startswith("plain\n\n--\n")
    assert markup.startswith("<p>rich</p><p ")


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        pytest.param("<p>unclosed <b>bold <i>text", "unclosed bold text", id="unclosed-tags"),
        pytest.param("<SCRIPT>bad()</SCRIPT>ok", "ok", id="uppercase-script"),
        pytest.param("<script>if (a<b) {x()}</script>ok", "ok", id="lt-inside-script"),
        pytest.param("<style>x{}</style><p>a</p><!-- c --><p>b</p>", "a\n\nb", id="style-comment"),
        pytest.param("a<br>b<br/>c", "a\nb\nc", id="line-breaks"),
        pytest.param('<a href="javascript:alert(1)">x</a>', "x", id="javascript-href-dropped"),
    ],
)
def test_html_to_text_returns_readable_text_when_markup_is_tricky(markup, expected):
    assert html_to_text(markup) == expected


def test_text_to_html_drops_empty_paragraphs_when_text_has_blank_runs():
    assert text_to_html("a\n\n\n\nb") == "<p>a</p>\n<p>b</p>\n"


# -- unsubscribe ---------------------------------------------------------------------------------

def test_unsubscribe_link_is_signed_and_verifiable_when_webhook_base_is_set():
    text, markup = parts(build())
    link = unsubscribe_link(text)
    parsed = urlsplit(link)
    assert f"{parsed.scheme}://{parsed.netloc}{parsed.path}" == (
        "https://hooks.meowmobile.example/email/unsubscribe")
    query = parse_qs(parsed.query)
    assert query["email"] == ["jane@example.com"]
    assert verify_unsubscribe(query["email"][0], query["sig"][0], SECRET)
    assert not verify_unsubscribe("john@example.com", query["sig"][0], SECRET)
    assert not verify_unsubscribe("jane@example.com", query["sig"][0], "other-secret")
    # The HTML footer links the same URL (attribute-escaped), outside click tracking.
    assert link.replace("&", "&amp;") in markup
    assert "clicktracking=off" in markup and ">Unsubscribe</a>" in markup


def test_unsubscribe_link_uses_explicit_url_when_configured():
    text, _ = parts(build(comms_unsubscribe_url="https://unsub.example/u?list=alerts",
                          comms_webhook_base_url=None))
    link = unsubscribe_link(text)
    assert link.startswith("https://unsub.example/u?list=alerts&email=jane%40example.com&sig=")


def test_unsubscribe_signature_is_hmac_sha256_hex_when_signed():
    sig = sign_unsubscribe("jane@example.com", SECRET)
    assert len(sig) == 64 and int(sig, 16) >= 0
    assert verify_unsubscribe("jane@example.com", sig, SECRET)
    assert not verify_unsubscribe("jane@example.com", "", SECRET)


def test_unsubscribe_footer_is_inside_body_when_html_has_body_tag():
    _, markup = parts(build(notification({"subject": "s",
                                          "html_body": "<html><BODY><p>x</p></BODY></html>"})))
    assert markup.endswith("Unsubscribe</a></p></BODY></html>")


def test_build_request_raises_config_error_when_no_unsubscribe_url_can_be_made():
    with pytest.raises(ChannelConfigError, match="COMMS_WEBHOOK_BASE_URL"):
        build(comms_webhook_base_url=None, comms_unsubscribe_url="")


def test_build_request_raises_config_error_when_api_key_is_missing():
    with pytest.raises(ChannelConfigError, match="SENDGRID_API_KEY"):
        build(sendgrid_api_key=None)


# -- classification ------------------------------------------------------------------------------

NOW = 1_780_000_000.0


def response(status: int, body: object = None, **headers: str) -> HttpResponse:
    raw = b"" if body is None else json.dumps(body).encode()
    return HttpResponse(status, {k.lower().replace("_", "-"): v for k, v in headers.items()}, raw)


def errors(message: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "field": None, "help": None}]}


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        pytest.param(response(202, x_message_id="W86EgYT6SQKk0lRflfLRsA"),
                     Sent("W86EgYT6SQKk0lRflfLRsA"), id="202-receipt-header"),
        pytest.param(response(202), Sent(None), id="202-without-header"),
        pytest.param(response(429, errors("too many requests"), retry_after="7"),
                     Retryable("sendgrid:rate_limited", 7.0), id="429-retry-after"),
        pytest.param(response(429, errors("too many requests"),
                              x_ratelimit_reset=str(int(NOW) + 42)),
                     Retryable("sendgrid:rate_limited", 42.0), id="429-ratelimit-reset"),
        pytest.param(response(429, errors("too many requests"),
                              x_ratelimit_reset=str(int(NOW) - 5)),
                     Retryable("sendgrid:rate_limited", 0.0), id="429-reset-in-past-clamped"),
        pytest.param(response(429, errors("too many requests")),
                     Retryable("sendgrid:rate_limited", None), id="429-no-hint"),
        pytest.param(response(500), Retryable("sendgrid:http_500"), id="500"),
        pytest.param(response(502), Retryable("sendgrid:http_502"), id="502"),
        pytest.param(response(503, errors("v3 Web API is not available")),
                     Retryable("sendgrid:http_503"), id="503"),
        pytest.param(response(400, errors("The from email does not contain a valid address.")),
                     Permanent("sendgrid:http_400: The from email does not contain a valid"
                               " address."), id="400-message"),
        pytest.param(response(413, errors("Payload Too Large")),
                     Permanent("sendgrid:http_413: Payload Too Large"), id="413"),
        pytest.param(response(404), Permanent("sendgrid:http_404"), id="404"),
        pytest.param(response(401, errors("The provided authorization grant is invalid, expired,"
                                          " or revoked")),
                     Permanent("sendgrid:auth_http_401: The provided authorization grant is"
                               " invalid, expired, or revoked"), id="401-auth"),
        pytest.param(response(403, errors("access forbidden")),
                     Permanent("sendgrid:auth_http_403: access forbidden"), id="403-auth"),
    ],
)
def test_classify_maps_response_when_sendgrid_answers(resp, expected):
    assert SendGridChannel(settings(), now=lambda: NOW).classify(resp) == expected


# -- registry and sandbox round trip -------------------------------------------------------------

def test_registry_returns_sendgrid_when_channel_is_email():
    assert isinstance(get_channel("email", settings()), SendGridChannel)


@pytest.fixture
def sandbox():
    with Sandbox() as sb:
        yield sb


def sandbox_settings(sb: Sandbox, **overrides) -> Settings:
    env = sb.env()
    return settings(sendgrid_api_url=env["SENDGRID_API_URL"],
                    sendgrid_api_key=env["SENDGRID_API_KEY"], **overrides)


def test_round_trip_sends_spec_valid_request_when_sandbox_answers(sandbox):
    outcome = deliver(SendGridChannel(sandbox_settings(sandbox)), notification(), HttpTransport())
    assert isinstance(outcome, Sent)
    assert outcome.response_id == sandbox.state["sendgrid_sent"][0]
    (recorded,) = sandbox.requests("sendgrid")
    assert recorded.headers["authorization"] == "Bearer SG.sandbox-key.sandbox-secret"
    assert recorded.json()["personalizations"][0]["custom_args"] == {"message_id": str(MESSAGE_ID)}
    validate_recorded(recorded)


def test_round_trip_is_permanent_auth_when_key_is_not_bearer(sandbox):
    channel = SendGridChannel(sandbox_settings(sandbox))
    req = channel.build_request(notification())
    bad = type(req)(req.method, req.url, {"Authorization": "Basic nope"}, req.json)
    outcome = channel.classify(HttpTransport().send(bad))  # type: ignore[arg-type]
    assert isinstance(outcome, Permanent) and outcome.reason.startswith("sendgrid:auth_http_401")


def test_round_trip_is_retryable_when_sandbox_injects_fault(sandbox):
    sandbox.error_rate = 1.0
    outcome = deliver(SendGridChannel(sandbox_settings(sandbox)), notification(), HttpTransport())
    assert outcome == Retryable("sendgrid:http_503")
