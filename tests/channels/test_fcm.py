"""FCM adapter: the exact messages:send body (string data values), token precedence, the
classification table (which errors prune tokens), and OAuth through the sandbox's token endpoint:
one fetch for many messages, a refresh when the token expires, spec-valid recorded requests."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from channels import get_channel
from channels.base import (
    ChannelConfigError,
    HttpResponse,
    InvalidRecipient,
    Notification,
    Outcome,
    PayloadError,
    Permanent,
    Retryable,
    Sent,
    TransientError,
    deliver,
)
from channels.contacts import Contact
from channels.envelope import DispatchRequest
from channels.fcm import FcmChannel
from channels.fcm.oauth import SCOPES, TokenCache
from channels.http import HttpTransport
from config.settings import Settings
from tests.specs import validate_http_request, validate_recorded
from tests.together import all_at_once
from worker.sandbox import Reply, Sandbox
from worker.sandbox.vendors.fcm import write_service_account

DEVICE = "fcm-device-token-1"


def settings(**overrides) -> Settings:
    values: dict[str, Any] = {
        "fcm_project_id": "meow-test",
        "fcm_service_account_file": Path("/nonexistent/sa.json"),
        "fcm_api_url": "https://fcm.googleapis.com",
    }
    values.update(overrides)
    return Settings(**values)


def fixed_token(path: Path | None) -> str:
    return "ya29.test-token"


def notification(token: str | None = DEVICE, *, deep_link: str | None = "meow://bill/42",
                 signal_type: str | None = "payment_failed", contact: Contact | None = None,
                 customer: dict[str, Any] | None = None) -> Notification:
    payload: dict[str, Any] = {"push_title": "Payment failed",
                               "push_body": "Tap to update your card"}
    if token is not None:
        payload["device_fcm_token"] = token
    if deep_link is not None:
        payload["deep_link_url"] = deep_link
    request = DispatchRequest.model_validate({
        "recipient": "jane@example.com", "channel": "push", "message_payload": payload,
        "priority": "MEDIUM", "signal_type": signal_type, "customer": customer,
    })
    return Notification(request, contact)


def channel(**overrides) -> FcmChannel:
    return FcmChannel(settings(**overrides), token_source=fixed_token)


# -- the request ---------------------------------------------------------------------------------

def test_build_request_posts_seed_body_when_all_fields_are_known():
    req = channel().build_request(notification())
    assert req.method == "POST"
    assert req.url == "https://fcm.googleapis.com/v1/projects/meow-test/messages:send"
    assert req.headers["Authorization"] == "Bearer ya29.test-token"
    assert req.json == {"message": {
        "token": DEVICE,
        "notification": {"title": "Payment failed", "body": "Tap to update your card"},
        "data": {"deep_link": "meow://bill/42", "signal_type": "payment_failed"},
        "android": {"priority": "HIGH"},
        "apns": {"payload": {"aps": {"sound": "default"}}},
    }}
    validate_http_request("fcm", req)


@pytest.mark.parametrize(
    ("deep_link", "signal_type", "expected"),
    [
        pytest.param(None, "outage", {"signal_type": "outage"}, id="no-deep-link"),
        pytest.param("https://meow.example/x", None, {"deep_link": "https://meow.example/x"},
                     id="no-signal-type"),
        pytest.param(None, None, None, id="no-data"),
    ],
)
def test_data_omits_none_values_when_fields_are_absent(deep_link, signal_type, expected):
    message = channel().build_request(
        notification(deep_link=deep_link, signal_type=signal_type)).json["message"]
    assert message.get("data") == expected
    assert all(isinstance(v, str) for v in (message.get("data") or {}).values())


@pytest.mark.parametrize(
    ("token", "contact", "customer", "expected"),
    [
        pytest.param("payload-tok", Contact("j@x.com", fcm_tokens=("contact-tok",)),
                     {"fcm_token": "customer-tok"}, "payload-tok", id="payload-first"),
        pytest.param(None, Contact("j@x.com", fcm_tokens=("contact-tok", "older-tok")),
                     {"fcm_token": "customer-tok"}, "contact-tok", id="contact-first-token"),
        pytest.param(None, Contact("j@x.com"), {"fcm_token": "customer-tok"}, "customer-tok",
                     id="envelope-last"),
    ],
)
def test_device_token_follows_precedence_when_sources_differ(token, contact, customer, expected):
    n = notification(token, contact=contact, customer=customer)
    assert channel().build_request(n).json["message"]["token"] == expected
    assert channel().target_for(n) == expected


def test_build_request_raises_payload_error_when_no_token_is_known():
    with pytest.raises(PayloadError, match="FCM device token"):
        channel().build_request(notification(None, contact=Contact("j@x.com")))


def test_build_request_raises_config_error_when_project_is_missing():
    with pytest.raises(ChannelConfigError, match="FCM_PROJECT_ID"):
        channel(fcm_project_id=None).build_request(notification())


def test_build_request_raises_config_error_when_account_file_is_unset():
    with pytest.raises(ChannelConfigError, match="FCM_SERVICE_ACCOUNT_FILE"):
        channel(fcm_service_account_file=None).build_request(notification())


def test_token_cache_raises_config_error_when_account_file_is_missing(tmp_path):
    with pytest.raises(ChannelConfigError, match="FCM_SERVICE_ACCOUNT_FILE"):
        TokenCache().token(tmp_path / "missing.json")


def test_token_cache_raises_config_error_without_key_material_when_file_is_malformed(tmp_path):
    bad = tmp_path / "sa.json"
    bad.write_text(json.dumps({"type": "service_account", "client_email": "a@b.c",
                               "token_uri": "http://127.0.0.1:9/t",
                               "private_key": "-----BEGIN PRIVATE KEY-----\nSECRETSTUFF\n"}))
    with pytest.raises(ChannelConfigError, match="FCM_SERVICE_ACCOUNT_FILE") as err:
        TokenCache().token(bad)
    assert "SECRETSTUFF" not in str(err.value)


# -- classification ------------------------------------------------------------------------------

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def fcm_error(status: int, grpc: str, code: str | None = None, **headers: str) -> HttpResponse:
    error: dict[str, Any] = {"code": status, "message": "m", "status": grpc}
    if code:
        error["details"] = [{"@type": FCM_ERROR, "errorCode": code}]
    return HttpResponse(status, {k.replace("_", "-"): v for k, v in headers.items()},
                        json.dumps({"error": error}).encode())


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        pytest.param(HttpResponse(200, {}, b'{"name": "projects/p/messages/0:1%ab"}'),
                     Sent("projects/p/messages/0:1%ab"), id="200-name"),
        pytest.param(fcm_error(404, "NOT_FOUND", "UNREGISTERED"),
                     InvalidRecipient("fcm:UNREGISTERED", action="remove_fcm_token"),
                     id="404-unregistered"),
        pytest.param(HttpResponse(410, {}, b""),
                     InvalidRecipient("fcm:http_410", action="remove_fcm_token"), id="410-gone"),
        pytest.param(fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
                     InvalidRecipient("fcm:SENDER_ID_MISMATCH", action="remove_fcm_token"),
                     id="403-sender-id-mismatch"),
        pytest.param(fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
                     Permanent("fcm:INVALID_ARGUMENT"), id="400-invalid-argument-never-prunes"),
        pytest.param(fcm_error(400, "INVALID_ARGUMENT"), Permanent("fcm:INVALID_ARGUMENT"),
                     id="400-invalid-argument-without-detail"),
        pytest.param(fcm_error(404, "NOT_FOUND"), Permanent("fcm:NOT_FOUND"),
                     id="404-without-unregistered-does-not-prune"),
        pytest.param(fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", retry_after="60"),
                     Retryable("fcm:QUOTA_EXCEEDED", 60.0), id="429-quota-retry-after"),
        pytest.param(fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
                     Retryable("fcm:QUOTA_EXCEEDED", None), id="429-quota-no-hint"),
        pytest.param(fcm_error(503, "UNAVAILABLE", "UNAVAILABLE", retry_after="5"),
                     Retryable("fcm:UNAVAILABLE", 5.0), id="503-unavailable"),
        pytest.param(fcm_error(500, "INTERNAL", "INTERNAL"), Retryable("fcm:INTERNAL"),
                     id="500-internal"),
        pytest.param(HttpResponse(502, {}, b"<html>"), Retryable("fcm:http_502"), id="502-html"),
        pytest.param(fcm_error(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"),
                     Permanent("fcm:auth THIRD_PARTY_AUTH_ERROR"), id="401-third-party-auth"),
        pytest.param(fcm_error(401, "UNAUTHENTICATED"), Permanent("fcm:auth UNAUTHENTICATED"),
                     id="401-oauth"),
        pytest.param(fcm_error(403, "PERMISSION_DENIED"), Permanent("fcm:auth PERMISSION_DENIED"),
                     id="403-permission-denied"),
    ],
)
def test_classify_maps_response_when_fcm_answers(resp, expected):
    assert channel().classify(resp) == expected


def test_registry_returns_fcm_when_channel_is_push():
    assert isinstance(get_channel("push", settings()), FcmChannel)


# -- OAuth and round trips through the sandbox ---------------------------------------------------

@pytest.fixture
def sandbox():
    with Sandbox() as sb:
        yield sb


@pytest.fixture
def account(sandbox, tmp_path) -> Path:
    return write_service_account(tmp_path, sandbox.url)


def sandbox_channel(sb: Sandbox, account: Path, cache: TokenCache) -> FcmChannel:
    env = sb.env()
    return FcmChannel(settings(fcm_api_url=env["FCM_API_URL"], fcm_project_id=env["FCM_PROJECT_ID"],
                               fcm_service_account_file=account), token_source=cache.token)


def jwt_claims(assertion: str) -> dict[str, Any]:
    part = assertion.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


def test_service_account_file_points_token_uri_at_sandbox_when_written(sandbox, account):
    info = json.loads(account.read_text())
    assert info["type"] == "service_account"
    assert info["token_uri"] == f"{sandbox.url}/oauth2/token"
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert account.stat().st_mode & 0o777 == 0o600


def test_token_is_fetched_once_when_many_messages_are_sent(sandbox, account):
    fcm = sandbox_channel(sandbox, account, TokenCache())
    outcomes = [deliver(fcm, notification(f"tok-{i}"), HttpTransport()) for i in range(5)]
    assert all(isinstance(o, Sent) for o in outcomes)
    assert sandbox.state["oauth2_token_requests"] == 1
    (grant,) = sandbox.requests("oauth2")
    form = grant.form()
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    claims = jwt_claims(form["assertion"])
    # google-auth posts to the file's token_uri but always names Google's endpoint as audience.
    assert grant.path == "/oauth2/token"
    assert claims["aud"] == "https://oauth2.googleapis.com/token"
    assert claims["scope"] == " ".join(SCOPES)
    assert claims["iss"] == json.loads(account.read_text())["client_email"]
    sends = sandbox.requests("fcm")
    assert {r.headers["authorization"] for r in sends} == {"Bearer ya29.sandbox-1"}
    for recorded in sends:
        validate_recorded(recorded)


def test_token_is_fetched_once_when_messages_are_sent_concurrently(sandbox, account):
    fcm = sandbox_channel(sandbox, account, TokenCache())
    outcomes: list[Outcome] = []
    all_at_once(lambda i: outcomes.append(
        deliver(fcm, notification(f"tok-{i}"), HttpTransport())), [(i,) for i in range(8)])
    assert len(outcomes) == 8 and all(isinstance(o, Sent) for o in outcomes)
    assert sandbox.state["oauth2_token_requests"] == 1


def test_token_is_refreshed_when_it_expires(sandbox, account):
    fcm = sandbox_channel(sandbox, account, TokenCache())
    # 60 s is inside google-auth's refresh margin (3m45s): the token is stale on arrival.
    sandbox.state["oauth2_expires_in"] = 60
    assert isinstance(deliver(fcm, notification(), HttpTransport()), Sent)
    assert isinstance(deliver(fcm, notification(), HttpTransport()), Sent)
    assert sandbox.state["oauth2_token_requests"] == 2
    sandbox.state["oauth2_expires_in"] = 3600
    for _ in range(3):
        assert isinstance(deliver(fcm, notification(), HttpTransport()), Sent)
    assert sandbox.state["oauth2_token_requests"] == 3
    bearers = [r.headers["authorization"] for r in sandbox.requests("fcm")]
    assert len(set(bearers)) == 3 and bearers[-1] == bearers[-2] == bearers[-3]


def test_unregistered_token_is_flagged_for_removal_when_sandbox_says_so(sandbox, account):
    sandbox.state.setdefault("fcm_unregistered", set()).add("dead-token")
    fcm = sandbox_channel(sandbox, account, TokenCache())
    outcome = deliver(fcm, notification(None, contact=Contact("j@x.com",
                                                              fcm_tokens=("dead-token",))),
                      HttpTransport())
    assert outcome == InvalidRecipient("fcm:UNREGISTERED", action="remove_fcm_token",
                                       target="dead-token")


def test_send_is_permanent_auth_when_bearer_was_not_issued_by_sandbox(sandbox, account):
    env = sandbox.env()
    fcm = FcmChannel(settings(fcm_api_url=env["FCM_API_URL"], fcm_service_account_file=account),
                     token_source=fixed_token)
    assert deliver(fcm, notification(), HttpTransport()) == Permanent("fcm:auth UNAUTHENTICATED")


def test_token_error_is_config_error_when_grant_is_refused(sandbox, account):
    sandbox.script("oauth2", Reply(400, {"error": "invalid_grant",
                                         "error_description": "Invalid JWT Signature."}))
    fcm = sandbox_channel(sandbox, account, TokenCache())
    with pytest.raises(ChannelConfigError, match=r"FCM_SERVICE_ACCOUNT_FILE.*invalid_grant"):
        fcm.build_request(notification())


def test_token_outage_is_retryable_when_token_endpoint_fails(sandbox, account):
    # google-auth retries a 503 itself (3 attempts, ~3 s) before giving up.
    sandbox.script("oauth2", Reply(503, {"error": "temporarily_unavailable"}), repeat=True)
    fcm = sandbox_channel(sandbox, account, TokenCache())
    assert deliver(fcm, notification(), HttpTransport()) == Retryable("fcm:oauth_unavailable")
    assert sandbox.requests("fcm") == []


def test_build_request_raises_transient_error_when_token_is_unavailable():
    def outage(path):
        raise TransientError("fcm:oauth_unavailable")

    with pytest.raises(TransientError):
        FcmChannel(settings(), token_source=outage).build_request(notification())


def test_token_outage_is_retryable_when_token_endpoint_is_unreachable(tmp_path):
    account = write_service_account(tmp_path, "http://127.0.0.1:9")
    fcm = FcmChannel(settings(fcm_service_account_file=account), token_source=TokenCache().token)
    outcome = deliver(fcm, notification(), HttpTransport())
    assert isinstance(outcome, Retryable) and outcome.reason.startswith("fcm:oauth_unreachable")


def test_default_token_source_uses_process_cache_when_built_from_registry(sandbox, account):
    from channels.fcm import oauth

    oauth.TOKENS.invalidate(account)
    env = sandbox.env()
    fcm = get_channel("push", settings(fcm_api_url=env["FCM_API_URL"],
                                       fcm_service_account_file=account))
    for _ in range(2):
        assert isinstance(deliver(fcm, notification(), HttpTransport()), Sent)
    assert sandbox.state["oauth2_token_requests"] == 1
    oauth.TOKENS.invalidate(account)
