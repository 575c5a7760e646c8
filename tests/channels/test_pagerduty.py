"""PagerDuty adapter: exact events, dedup keys, routing keys, classification, spec and sandbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

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
from channels.envelope import DispatchRequest
from channels.http import HttpTransport
from channels.pagerduty import MAX_DEDUP_KEY, PagerDutyChannel, dedup_key
from config.settings import Settings
from tests.specs import validate_http_request, validate_recorded
from worker.sandbox import Reply, Sandbox

NOW = datetime(2026, 2, 7, 14, 32, 5, tzinfo=UTC)
DEFAULT_KEY = "d" * 32
BILLING_KEY = "b" * 32


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "pagerduty_routing_key": DEFAULT_KEY,
        "pagerduty_events_url": "https://events.pagerduty.com/v2/enqueue",
    }
    values.update(overrides)
    return Settings(**values)


def channel(
    s: Settings | None = None, now: datetime = NOW, environ: dict[str, str] | None = None
) -> PagerDutyChannel:
    return PagerDutyChannel(
        s or settings(), clock=lambda: now, environ={} if environ is None else environ
    )


def notification(payload: dict[str, Any] | None = None, **fields: Any) -> Notification:
    data: dict[str, Any] = {
        "recipient": "jane@example.com",
        "channel": "pagerduty",
        "priority": "CRITICAL",
        "signal_type": "network_outage",
        "message_id": "6f1d3c2e-8a7b-4c5d-9e0f-112233445566",
        "message_payload": payload
        or {
            "summary": "Tower 12 down for jane@example.com",
            "custom_details": {"tower": 12, "region": "north"},
            "zendesk_ticket_url": "https://acme.zendesk.com/agent/tickets/35436",
        },
    }
    data.update(fields)
    return Notification(DispatchRequest.model_validate(data))


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> HttpResponse:
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    return HttpResponse(status, {k.lower(): v for k, v in (headers or {}).items()}, raw)


# -- building ------------------------------------------------------------------------------------


def test_event_matches_seed_when_payload_is_complete():
    req = channel().build_request(notification())
    assert req.method == "POST"
    assert req.url == "https://events.pagerduty.com/v2/enqueue"
    assert req.headers == {"Content-Type": "application/json"}
    assert req.json == {
        "routing_key": DEFAULT_KEY,
        "event_action": "trigger",
        "dedup_key": "jane@example.com-network_outage-2026-02-07",
        "payload": {
            "summary": "Tower 12 down for jane@example.com",
            "source": "meow-comms",
            "severity": "critical",
            "timestamp": "2026-02-07T14:32:05Z",
            "custom_details": {"tower": 12, "region": "north"},
        },
        "links": [
            {"href": "https://acme.zendesk.com/agent/tickets/35436", "text": "Zendesk Ticket"}
        ],
    }


def test_links_are_omitted_when_ticket_url_is_unknown():
    req = channel().build_request(notification({"summary": "S"}))
    assert "links" not in req.json
    assert req.json["payload"]["custom_details"] == {}


@pytest.mark.parametrize(
    ("priority", "expected"),
    [("CRITICAL", "critical"), ("HIGH", "error"), ("MEDIUM", "warning"), ("LOW", "info")],
    ids=["critical", "high", "medium", "low"],
)
def test_severity_follows_priority_when_payload_has_none(priority, expected):
    req = channel().build_request(notification({"summary": "S"}, priority=priority))
    assert req.json["payload"]["severity"] == expected


def test_payload_severity_wins_when_given():
    req = channel().build_request(notification({"summary": "S", "severity": "info"}))
    assert req.json["payload"]["severity"] == "info"


def test_dedup_key_uses_utc_date_when_local_date_differs():
    # 23:30 at UTC-5 on the 6th is already the 7th in UTC.
    local = datetime(2026, 2, 6, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    req = channel(now=local).build_request(notification())
    assert req.json["dedup_key"] == "jane@example.com-network_outage-2026-02-07"
    assert req.json["payload"]["timestamp"] == "2026-02-07T04:30:00Z"


def test_dedup_key_says_unspecified_when_signal_type_is_missing():
    req = channel().build_request(notification(signal_type=None))
    assert req.json["dedup_key"] == "jane@example.com-unspecified-2026-02-07"


def test_dedup_key_is_stable_when_retried_the_same_day():
    later = NOW.replace(hour=23, minute=59)
    assert (
        channel().build_request(notification()).json["dedup_key"]
        == channel(now=later).build_request(notification()).json["dedup_key"]
    )


def test_dedup_key_fits_255_and_stays_distinct_when_inputs_are_long():
    long_a = dedup_key("a" * 60 + "@example.com", "s" * 200, NOW)
    long_b = dedup_key("a" * 60 + "@example.com", "s" * 199 + "t", NOW)
    assert len(long_a) == len(long_b) == MAX_DEDUP_KEY
    assert long_a != long_b
    assert long_a.endswith("-2026-02-07")


def test_service_routing_key_is_used_when_service_is_mapped():
    n = notification({"summary": "S", "service": "billing"})
    req = channel(environ={"PAGERDUTY_ROUTING_KEY_BILLING": BILLING_KEY}).build_request(n)
    assert req.json["routing_key"] == BILLING_KEY


def test_default_routing_key_is_used_when_service_is_not_mapped():
    n = notification({"summary": "S", "service": "unknown-service"})
    assert channel().build_request(n).json["routing_key"] == DEFAULT_KEY


def test_config_error_names_service_variable_when_its_key_is_unset():
    n = notification({"summary": "S", "service": "billing"})
    with pytest.raises(ChannelConfigError, match="PAGERDUTY_ROUTING_KEY_BILLING"):
        channel(environ={}).build_request(n)


def test_config_error_names_default_variable_when_routing_key_is_unset():
    with pytest.raises(ChannelConfigError, match="PAGERDUTY_ROUTING_KEY"):
        channel(settings(pagerduty_routing_key=None)).build_request(notification())


def test_service_key_is_read_from_os_environ_when_no_mapping_is_injected(monkeypatch):
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY_NETWORK", "n" * 32)
    ch = PagerDutyChannel(settings(), clock=lambda: NOW)
    req = ch.build_request(notification({"summary": "S", "service": "network"}))
    assert req.json["routing_key"] == "n" * 32


@pytest.mark.parametrize(
    "url",
    ["events.pagerduty.com/v2/enqueue", "ftp://x/enqueue", ""],
    ids=["no-scheme", "ftp", "empty"],
)
def test_config_error_is_raised_when_events_url_is_not_a_full_url(url):
    with pytest.raises(ChannelConfigError, match="PAGERDUTY_EVENTS_URL"):
        channel(settings(pagerduty_events_url=url)).build_request(notification())


def test_registry_builds_pagerduty_when_asked_by_name():
    assert isinstance(get_channel("pagerduty", settings()), PagerDutyChannel)


# -- classifying ---------------------------------------------------------------------------------

INVALID_EVENT = {
    "status": "invalid event",
    "message": "Event object is invalid",
    "errors": ["'payload.severity' is missing or blank"],
}

CLASSIFY = [
    (
        "accepted",
        response(
            202,
            {
                "status": "success",
                "message": "Event processed",
                "dedup_key": "jane@example.com-outage-2026-02-07",
            },
        ),
        Sent("jane@example.com-outage-2026-02-07"),
    ),
    ("accepted-no-key", response(202, {"status": "success"}), Sent(None)),
    (
        "invalid-event",
        response(400, INVALID_EVENT),
        Permanent(
            "pagerduty:invalid_event Event object is invalid; 'payload.severity' is missing"
            " or blank"
        ),
    ),
    ("invalid-empty", response(400), Permanent("pagerduty:invalid_event")),
    (
        "rate-limited",
        response(
            429,
            {
                "status": "throttle event",
                "message": "Requests for this service are arriving too quickly.",
            },
        ),
        Retryable("pagerduty:http_429", None),
    ),
    (
        "rate-limited-with-hint",
        response(429, None, {"Retry-After": "30"}),
        Retryable("pagerduty:http_429", 30.0),
    ),
    ("server-error", response(500), Retryable("pagerduty:http_500", None)),
    ("bad-gateway", response(502), Retryable("pagerduty:http_502", None)),
    ("unavailable", response(503), Retryable("pagerduty:http_503", None)),
    ("forbidden", response(403), Permanent("pagerduty:auth_http_403")),
    ("not-found", response(404), Permanent("pagerduty:http_404")),
]


@pytest.mark.parametrize(
    ("resp", "expected"), [c[1:] for c in CLASSIFY], ids=[c[0] for c in CLASSIFY]
)
def test_outcome_matches_table_when_pagerduty_answers(resp, expected):
    assert channel().classify(resp) == expected


# -- vendor spec and sandbox ---------------------------------------------------------------------


def test_event_conforms_to_spec_when_validated():
    validate_http_request("pagerduty", channel().build_request(notification()))


def test_event_conforms_to_spec_when_minimal():
    validate_http_request("pagerduty", channel().build_request(notification({"summary": "S"})))


def test_event_is_accepted_and_conforms_to_spec_when_sent_to_sandbox():
    with Sandbox() as sb:
        s = Settings.model_validate({k.lower(): v for k, v in sb.env().items()})
        outcome = deliver(channel(s, environ=sb.env()), notification(), HttpTransport())
        (recorded,) = sb.requests("pagerduty")
    assert outcome == Sent("jane@example.com-network_outage-2026-02-07")
    assert recorded.path == "/pagerduty/v2/enqueue"
    assert recorded.json()["routing_key"] == sb.env()["PAGERDUTY_ROUTING_KEY"]
    assert len(recorded.json()["routing_key"]) == 32
    validate_recorded(recorded)


def test_sandbox_refuses_event_when_severity_is_missing():
    with Sandbox() as sb:
        s = Settings.model_validate({k.lower(): v for k, v in sb.env().items()})
        req = channel(s).build_request(notification())
        del req.json["payload"]["severity"]
        reply = HttpTransport().send(req)
    assert isinstance(reply, HttpResponse) and reply.status == 400
    assert channel().classify(reply) == Permanent(
        "pagerduty:invalid_event Event object is invalid; 'payload.severity' is missing or blank"
    )


def test_scripted_throttle_is_retryable_when_sandbox_plays_it():
    with Sandbox() as sb:
        sb.script(
            "pagerduty",
            Reply(
                429,
                {
                    "status": "throttle event",
                    "message": "Requests for this service are arriving"
                    " too quickly.  Please retry later.",
                },
            ),
        )
        s = Settings.model_validate({k.lower(): v for k, v in sb.env().items()})
        outcome = deliver(channel(s), notification(), HttpTransport())
    assert outcome == Retryable("pagerduty:http_429", None)


def test_scripted_invalid_event_is_permanent_when_sandbox_plays_it():
    with Sandbox() as sb:
        sb.script("pagerduty", Reply(400, INVALID_EVENT))
        s = Settings.model_validate({k.lower(): v for k, v in sb.env().items()})
        outcome = deliver(channel(s), notification(), HttpTransport())
    assert outcome == Permanent(
        "pagerduty:invalid_event Event object is invalid; 'payload.severity' is missing or blank"
    )


def test_injected_fault_is_retryable_when_sandbox_error_rate_is_one():
    with Sandbox(error_rate=1.0) as sb:
        s = Settings.model_validate({k.lower(): v for k, v in sb.env().items()})
        outcome = deliver(channel(s), notification(), HttpTransport())
    assert outcome == Retryable("pagerduty:http_500", None)
