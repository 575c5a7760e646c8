"""Zendesk adapter: exact requests, classification, tenant-URL safety, spec, sandbox round trips."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from channels import get_channel
from channels.base import (
    ChannelConfigError,
    HttpRequest,
    HttpResponse,
    Notification,
    PayloadError,
    Permanent,
    Retryable,
    Sent,
    deliver,
)
from channels.envelope import DispatchRequest
from channels.http import HttpTransport
from channels.zendesk import ZendeskChannel
from config.settings import Settings
from tests.channels.hostile import HOSTILE_LABELS
from tests.specs import validate_http_request, validate_recorded
from worker.sandbox import Reply, Sandbox

MESSAGE_ID = uuid.UUID("6f1d3c2e-8a7b-4c5d-9e0f-112233445566")


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "zendesk_subdomain": "acme",
        "zendesk_email": "agent@acme.example",
        "zendesk_api_token": "zd-token",
        "zendesk_base_url": None,
    }
    values.update(overrides)
    return Settings(**values)


def notification(payload: dict[str, Any] | None = None, **fields: Any) -> Notification:
    data: dict[str, Any] = {
        "recipient": "jane@example.com",
        "channel": "zendesk",
        "priority": "CRITICAL",
        "message_id": str(MESSAGE_ID),
        "message_payload": payload
        or {
            "subject": "Outage in your area",
            "body": "We are on it.",
            "tags": ["outage", "proactive"],
            "group_id": 42,
        },
    }
    data.update(fields)
    return Notification(DispatchRequest.model_validate(data))


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    return HttpResponse(status, {k.lower(): v for k, v in (headers or {}).items()}, raw)


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


# -- building ------------------------------------------------------------------------------------


def test_create_request_matches_seed_when_payload_is_complete():
    req = ZendeskChannel(settings()).build_request(notification())
    assert req.method == "POST"
    assert req.url == "https://acme.zendesk.com/api/v2/tickets.json"
    assert req.headers == {
        "Authorization": basic("agent@acme.example/token", "zd-token"),
        "Content-Type": "application/json",
        "Idempotency-Key": str(MESSAGE_ID),
    }
    assert req.json == {
        "ticket": {
            "subject": "Outage in your area",
            "comment": {"body": "We are on it.", "public": False},
            "priority": "urgent",
            "tags": ["outage", "proactive"],
            "group_id": 42,
            "type": "incident",
            "requester": {"email": "jane@example.com"},
        }
    }


@pytest.mark.parametrize(
    ("priority", "expected"),
    [("CRITICAL", "urgent"), ("HIGH", "high"), ("MEDIUM", "normal"), ("LOW", "low")],
    ids=["critical", "high", "medium", "low"],
)
def test_priority_is_mapped_when_building_create(priority, expected):
    req = ZendeskChannel(settings()).build_request(notification(priority=priority))
    assert req.json["ticket"]["priority"] == expected


def test_group_id_is_omitted_when_payload_has_none():
    req = ZendeskChannel(settings()).build_request(notification({"subject": "S", "body": "B"}))
    assert "group_id" not in req.json["ticket"]
    assert req.json["ticket"]["tags"] == []


def test_idempotency_key_is_stable_when_same_message_is_built_twice():
    channel = ZendeskChannel(settings())
    first = channel.build_request(notification())
    again = channel.build_request(notification())
    other = channel.build_request(notification(message_id=str(uuid.uuid4())))
    assert first.headers["Idempotency-Key"] == again.headers["Idempotency-Key"]
    assert first.headers["Idempotency-Key"] != other.headers["Idempotency-Key"]


def test_create_is_refused_when_message_id_is_missing():
    with pytest.raises(PayloadError, match="message_id"):
        ZendeskChannel(settings()).build_request(notification(message_id=None))


def test_note_request_is_a_put_without_idempotency_key_when_payload_is_a_note():
    n = notification(
        {
            "ticket_id": 35436,
            "note_body": "Customer called back.\nStill down.",
            "new_tags": ["escalated"],
        },
        message_id=None,
    )
    req = ZendeskChannel(settings()).build_request(n)
    assert req.method == "PUT"
    assert req.url == "https://acme.zendesk.com/api/v2/tickets/35436.json"
    assert "Idempotency-Key" not in req.headers
    assert req.headers["Authorization"] == basic("agent@acme.example/token", "zd-token")
    assert req.json == {
        "ticket": {
            "comment": {"body": "Customer called back.\nStill down.", "public": False},
            "additional_tags": ["escalated"],
        }
    }


def test_base_url_override_is_used_when_zendesk_base_url_is_set():
    channel = ZendeskChannel(
        settings(zendesk_base_url="http://127.0.0.1:9/zendesk/", zendesk_subdomain="evil.com/x")
    )
    assert (
        channel.build_request(notification()).url
        == "http://127.0.0.1:9/zendesk/api/v2/tickets.json"
    )


@pytest.mark.parametrize("subdomain", list(HOSTILE_LABELS.values()), ids=list(HOSTILE_LABELS))
def test_config_error_is_raised_when_subdomain_is_not_a_hostname_label(subdomain):
    channel = ZendeskChannel(settings(zendesk_subdomain=subdomain))
    with pytest.raises(ChannelConfigError, match="ZENDESK_SUBDOMAIN"):
        channel.build_request(notification())


@pytest.mark.parametrize(
    "subdomain",
    ["acme", "Acme-Support", "a", "a1-b2", "x" * 63],
    ids=["plain", "mixed-case", "one-char", "digits", "63-chars"],
)
def test_subdomain_is_accepted_when_it_is_a_hostname_label(subdomain):
    req = ZendeskChannel(settings(zendesk_subdomain=subdomain)).build_request(notification())
    assert req.url == f"https://{subdomain.lower()}.zendesk.com/api/v2/tickets.json"


@pytest.mark.parametrize(
    "base",
    ["ftp://x/zendesk", "acme.zendesk.com", "https://", "https://x/?a=1"],
    ids=["ftp", "no-scheme", "no-host", "query"],
)
def test_config_error_is_raised_when_base_url_is_not_http(base):
    with pytest.raises(ChannelConfigError, match="ZENDESK_BASE_URL"):
        ZendeskChannel(settings(zendesk_base_url=base)).build_request(notification())


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        ("zendesk_email", "ZENDESK_EMAIL"),
        ("zendesk_api_token", "ZENDESK_API_TOKEN"),
        ("zendesk_subdomain", "ZENDESK_SUBDOMAIN"),
    ],
    ids=["email", "token", "subdomain"],
)
def test_config_error_names_variable_when_credential_is_missing(field, variable):
    with pytest.raises(ChannelConfigError, match=variable):
        ZendeskChannel(settings(**{field: None})).build_request(notification())


def test_registry_builds_zendesk_when_asked_by_name():
    assert isinstance(get_channel("zendesk", settings()), ZendeskChannel)


# -- classifying ---------------------------------------------------------------------------------

RECORD_INVALID = {
    "error": "RecordInvalid",
    "description": "Record validation errors",
    "details": {"priority": [{"description": "Priority: is not valid", "error": "InvalidValue"}]},
}

CLASSIFY = [
    (
        "created",
        response(
            201,
            {"ticket": {"id": 35436, "subject": "S"}},
            {"Location": "https://acme.zendesk.com/api/v2/tickets/35436.json"},
        ),
        Sent("35436"),
    ),
    (
        "note-added",
        response(200, {"ticket": {"id": 35436}, "audit": {"id": 9001, "events": []}}),
        Sent("9001"),
    ),
    ("created-with-audit", response(201, {"ticket": {"id": 7}, "audit": {"id": 8}}), Sent("7")),
    (
        "rate-limited",
        response(429, b"Rate limit exceeded", {"Retry-After": "93", "Content-Type": "text/plain"}),
        Retryable("zendesk:http_429", 93.0),
    ),
    (
        "rate-limited-no-hint",
        response(429, b"Too Many Requests"),
        Retryable("zendesk:http_429", None),
    ),
    ("conflict", response(409, {"error": "UpdateConflict"}), Retryable("zendesk:http_409", None)),
    ("server-error", response(500, b"oops"), Retryable("zendesk:http_500", None)),
    (
        "maintenance",
        response(503, b"Maintenance", {"Retry-After": "60"}),
        Retryable("zendesk:http_503", 60.0),
    ),
    ("gateway-timeout", response(504), Retryable("zendesk:http_504", None)),
    ("insufficient-storage", response(507), Retryable("zendesk:http_507", None)),
    (
        "record-invalid",
        response(422, RECORD_INVALID),
        Permanent("zendesk:RecordInvalid priority: Priority: is not valid"),
    ),
    (
        "idempotent-mismatch",
        response(
            400,
            {"error": "IdempotentRequestError", "description": "Request parameters do not match"},
        ),
        Permanent("zendesk:IdempotentRequestError Request parameters do not match"),
    ),
    ("bad-request", response(400, b"garbage"), Permanent("zendesk:http_400")),
    (
        "unauthenticated",
        response(401, {"error": "Couldn't authenticate you"}),
        Permanent("zendesk:auth_http_401"),
    ),
    ("forbidden", response(403, {"error": "Forbidden"}), Permanent("zendesk:auth_http_403")),
    (
        "not-found",
        response(404, {"error": "RecordNotFound", "description": "Not found"}),
        Permanent("zendesk:http_404"),
    ),
]


@pytest.mark.parametrize(
    ("resp", "expected"), [c[1:] for c in CLASSIFY], ids=[c[0] for c in CLASSIFY]
)
def test_outcome_matches_table_when_zendesk_answers(resp, expected):
    assert ZendeskChannel(settings()).classify(resp) == expected


def test_retry_after_http_date_is_honoured_when_rate_limited():
    when = datetime.now(UTC) + timedelta(seconds=120)
    outcome = ZendeskChannel(settings()).classify(
        response(429, b"Rate limit exceeded", {"Retry-After": format_datetime(when, usegmt=True)})
    )
    assert isinstance(outcome, Retryable)
    assert outcome.retry_after is not None
    assert 100 <= outcome.retry_after <= 120


# -- vendor spec ---------------------------------------------------------------------------------


def test_create_request_conforms_to_spec_when_validated():
    validate_http_request("zendesk", ZendeskChannel(settings()).build_request(notification()))


def test_note_request_conforms_to_spec_when_validated():
    n = notification({"ticket_id": 5, "note_body": "note", "new_tags": ["a"]})
    validate_http_request("zendesk", ZendeskChannel(settings()).build_request(n))


# -- sandbox round trips -------------------------------------------------------------------------


def sandbox_settings(sb: Sandbox) -> Settings:
    return Settings.model_validate({k.lower(): v for k, v in sb.env().items()})


def test_ticket_is_created_and_request_conforms_to_spec_when_sent_to_sandbox():
    with Sandbox() as sb:
        outcome = deliver(ZendeskChannel(sandbox_settings(sb)), notification(), HttpTransport())
        (recorded,) = sb.requests("zendesk")
    assert isinstance(outcome, Sent)
    assert outcome.response_id is not None and int(outcome.response_id) > 0
    assert recorded.path == "/zendesk/api/v2/tickets.json"
    assert recorded.headers["idempotency-key"] == str(MESSAGE_ID)
    assert recorded.json()["ticket"]["requester"] == {"email": "jane@example.com"}
    validate_recorded(recorded)


def test_sandbox_replays_stored_ticket_when_idempotency_key_repeats():
    transport = HttpTransport()
    with Sandbox() as sb:
        channel = ZendeskChannel(sandbox_settings(sb))
        request = channel.build_request(notification())
        first = transport.send(request)
        again = transport.send(request)
        tickets = sb.state["zendesk.tickets"]
    assert isinstance(first, HttpResponse) and isinstance(again, HttpResponse)
    assert (first.status, again.status) == (201, 201)
    assert first.header("x-idempotency-lookup") == "miss"
    assert again.header("x-idempotency-lookup") == "hit"
    assert channel.classify(first) == channel.classify(again)
    assert len(tickets) == 1


def test_sandbox_refuses_reused_key_when_body_differs():
    with Sandbox() as sb:
        channel = ZendeskChannel(sandbox_settings(sb))
        transport = HttpTransport()
        first = deliver(channel, notification(), transport)
        changed = deliver(channel, notification(priority="LOW"), transport)
        tickets = sb.state["zendesk.tickets"]
    assert isinstance(first, Sent)
    assert changed == Permanent(
        "zendesk:IdempotentRequestError Request parameters do not match the original request"
        " for this idempotency key"
    )
    assert len(tickets) == 1


def test_note_is_added_and_conforms_to_spec_when_ticket_exists_in_sandbox():
    with Sandbox() as sb:
        channel = ZendeskChannel(sandbox_settings(sb))
        created = deliver(channel, notification(), HttpTransport())
        assert isinstance(created, Sent) and created.response_id is not None
        note = notification(
            {"ticket_id": int(created.response_id), "note_body": "Update", "new_tags": ["followup"]}
        )
        outcome = deliver(channel, note, HttpTransport())
        recorded = sb.requests("zendesk")[-1]
        tags = sb.state["zendesk.tickets"][int(created.response_id)]["tags"]
    assert isinstance(outcome, Sent) and outcome.response_id != created.response_id
    assert recorded.method == "PUT"
    assert "followup" in tags
    validate_recorded(recorded)


def test_sandbox_answers_401_when_credentials_are_missing():
    with Sandbox() as sb:
        url = f"{sb.url}/zendesk/api/v2/tickets.json"
        reply = HttpTransport().send(
            HttpRequest(
                "POST",
                url,
                headers={"Content-Type": "application/json"},
                json={"ticket": {"comment": {"body": "x"}}},
            )
        )
    assert isinstance(reply, HttpResponse)
    assert reply.status == 401
    assert reply.json() == {"error": "Couldn't authenticate you"}


def test_scripted_record_invalid_is_permanent_when_sandbox_plays_it():
    with Sandbox() as sb:
        sb.script("zendesk", Reply(422, RECORD_INVALID))
        outcome = deliver(ZendeskChannel(sandbox_settings(sb)), notification(), HttpTransport())
    assert outcome == Permanent("zendesk:RecordInvalid priority: Priority: is not valid")


def test_scripted_rate_limit_is_retryable_when_sandbox_plays_it():
    with Sandbox() as sb:
        sb.script("zendesk", Reply(429, "Rate limit exceeded", headers={"Retry-After": "7"}))
        outcome = deliver(ZendeskChannel(sandbox_settings(sb)), notification(), HttpTransport())
    assert outcome == Retryable("zendesk:http_429", 7.0)


def test_injected_fault_is_retryable_when_sandbox_error_rate_is_one():
    with Sandbox(error_rate=1.0) as sb:
        outcome = deliver(ZendeskChannel(sandbox_settings(sb)), notification(), HttpTransport())
    assert outcome == Retryable("zendesk:http_503", None)
