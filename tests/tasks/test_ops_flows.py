"""Zendesk, Jira and PagerDuty end to end: vendor-spec-valid requests, each retry policy observed
at the sandbox, permanent errors not retried, and the fallbacks (PagerDuty -> Slack @oncall,
Zendesk -> Slack #comms-review) as linked dispatches."""

from __future__ import annotations

import base64
import itertools
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tasks.dispatch import derived_id
from tests.conftest import log_outcomes, make_request, terminal
from tests.specs import validate_recorded
from worker.sandbox import Reply
from worker.store import dispatches as store

pytestmark = pytest.mark.usefixtures("worker", "clean")


def zendesk(**extra: Any) -> dict[str, Any]:
    return make_request("zendesk", {"subject": "Data outage for Jane", "body": "Line 1\n\nLine 2",
                                "tags": ["outage", "leeds"], "group_id": 42}, **extra)


def jira(**extra: Any) -> dict[str, Any]:
    return make_request("jira", {"project_key": "OPS", "issue_type": "Incident",
                             "summary": "Leeds data outage",
                             "description": "First paragraph\nsecond line\n\nSecond <b>&</b>",
                             "labels": ["outage"]}, **extra)


def pagerduty(**extra: Any) -> dict[str, Any]:
    return make_request("pagerduty", {"summary": "Leeds core down", "custom_details": {"cells": 12},
                                  "zendesk_ticket_url": "https://acme.zendesk.com/agent/tickets/7"},
                    **extra)


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def _503(vendor: str) -> Reply:
    from worker.sandbox.vendors import transient_error

    return transient_error(vendor)


# -- Zendesk ------------------------------------------------------------------------------------


def test_zendesk_ticket_is_spec_valid_and_sent_when_vendor_accepts(producer, sandbox):
    request = zendesk()
    producer(request)

    row = terminal(request["message_id"])

    [call] = sandbox.requests("zendesk")
    validate_recorded(call)
    assert call.path == "/zendesk/api/v2/tickets.json"
    assert call.headers["authorization"] == _basic(
        "agent@sandbox.example/token", "sandbox-zendesk-token")
    assert call.headers["idempotency-key"] == request["message_id"]
    assert call.json() == {"ticket": {
        "subject": "Data outage for Jane",
        "comment": {"body": "Line 1\n\nLine 2", "public": False},
        "priority": "high",
        "tags": ["outage", "leeds"],
        "group_id": 42,
        "type": "incident",
        "requester": {"email": "jane@example.com"},
    }}
    assert row["outcome"] == "SENT"
    [ticket_id] = sandbox.state["zendesk.tickets"]
    assert row["response_id"] == str(ticket_id)


def test_same_idempotency_key_on_every_attempt_when_zendesk_create_is_retried(producer, sandbox):
    request = zendesk()
    sandbox.script("zendesk", _503("zendesk"), _503("zendesk"))
    producer(request)

    row = terminal(request["message_id"])

    calls = sandbox.requests("zendesk")
    assert len(calls) == 3
    assert {c.headers["idempotency-key"] for c in calls} == {request["message_id"]}
    assert log_outcomes(request["message_id"]) == ["RETRYING", "RETRYING", "SENT"]
    assert row["retry_count"] == 2


def test_one_ticket_when_same_message_id_dispatched_twice(producer, sandbox):
    request = zendesk()
    producer(request)
    terminal(request["message_id"])
    producer(request)
    time.sleep(1.0)

    assert len(sandbox.requests("zendesk")) == 1
    assert log_outcomes(request["message_id"]) == ["SENT"]


def test_waits_exactly_retry_after_when_zendesk_rate_limits(producer, sandbox):
    request = zendesk()
    sandbox.script("zendesk", Reply(429, "Rate limited", {"Retry-After": "2"}))
    producer(request)

    terminal(request["message_id"])

    first, second = sandbox.requests("zendesk")
    assert 2.0 <= second.at - first.at < 3.5
    assert log_outcomes(request["message_id"]) == ["RETRYING", "SENT"]


def _review_alert(parent_id: str) -> dict[str, Any]:
    return terminal(derived_id(parent_id, "fallback"))


def test_review_alert_posted_and_logged_when_zendesk_fails_for_good(producer, sandbox):
    request = zendesk()
    sandbox.script("zendesk", _503("zendesk"), repeat=True)
    producer(request)

    row = terminal(request["message_id"])
    alert = _review_alert(request["message_id"])

    assert len(sandbox.requests("zendesk")) == 4
    assert log_outcomes(request["message_id"]) == ["RETRYING"] * 3 + ["FAILED"]
    assert row["outcome"] == "FAILED"
    [post] = sandbox.requests("slack")
    assert post.json()["channel"] == "#comms-review"
    assert request["message_id"] in post.json()["text"]
    assert alert["outcome"] == "SENT"
    assert alert["channel"] == "slack"
    assert str(alert["parent_message_id"]) == request["message_id"]


def test_one_call_then_failed_and_alert_when_zendesk_rejects_record(producer, sandbox):
    request = zendesk()
    sandbox.script("zendesk", Reply(422, {
        "error": "RecordInvalid", "description": "Record validation errors",
        "details": {"group_id": [{"description": "Group: is invalid", "error": "InvalidValue"}]}}))
    producer(request)

    row = terminal(request["message_id"])
    _review_alert(request["message_id"])

    assert len(sandbox.requests("zendesk")) == 1
    assert row["outcome"] == "FAILED"
    assert "RecordInvalid" in row["error"]


@pytest.mark.parametrize("hostile", ["evil.example.com/x", "acme@evil", "a b", "acme.evil"])
def test_refused_and_nothing_sent_when_zendesk_subdomain_is_hostile(hostile, producer, sandbox):
    from config.settings import get_settings

    settings = get_settings()
    saved = settings.zendesk_base_url, settings.zendesk_subdomain
    settings.zendesk_base_url, settings.zendesk_subdomain = None, hostile
    try:
        request = zendesk()
        producer(request)
        row = terminal(request["message_id"])
    finally:
        settings.zendesk_base_url, settings.zendesk_subdomain = saved

    assert row["outcome"] == "FAILED"
    assert "ZENDESK_SUBDOMAIN" in row["error"]
    assert sandbox.requests("zendesk") == []


# -- Jira -----------------------------------------------------------------------------------------


def test_jira_issue_is_spec_valid_with_adf_description_when_sent(producer, sandbox):
    from tests.adf import assert_valid_adf

    request = jira()
    producer(request)

    row = terminal(request["message_id"])

    [call] = sandbox.requests("jira")
    validate_recorded(call)
    assert call.path == "/jira/rest/api/3/issue"
    assert call.headers["authorization"] == _basic("bot@sandbox.example", "sandbox-jira-token")
    fields = call.json()["fields"]
    assert fields["project"] == {"key": "OPS"}
    assert fields["issuetype"] == {"name": "Incident"}
    assert fields["priority"] == {"name": "High"}
    assert fields["labels"] == ["outage"]
    assert fields["description"] == {"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [
            {"type": "text", "text": "First paragraph"}, {"type": "hardBreak"},
            {"type": "text", "text": "second line"}]},
        {"type": "paragraph", "content": [{"type": "text", "text": "Second <b>&</b>"}]},
    ]}
    assert_valid_adf(fields["description"])
    assert row["outcome"] == "SENT"
    assert row["response_id"] == "OPS-1"


def test_one_call_then_failed_when_jira_rejects_fields(producer, sandbox):
    request = jira()
    sandbox.script("jira", Reply(400, {"errorMessages": [], "errors": {
        "issuetype": "Specify a valid issue type"}}))
    producer(request)

    row = terminal(request["message_id"])

    assert len(sandbox.requests("jira")) == 1
    assert row["outcome"] == "FAILED"
    assert "Specify a valid issue type" in row["error"]


def test_four_calls_then_failed_when_jira_always_unavailable(producer, sandbox):
    request = jira()
    sandbox.script("jira", _503("jira"), repeat=True)
    producer(request)

    row = terminal(request["message_id"])

    assert len(sandbox.requests("jira")) == 4
    assert row["retry_count"] == 3
    assert sandbox.requests("slack") == []  # Jira's policy is "log": no fallback


@pytest.mark.slow
def test_jira_backoff_is_one_then_three_seconds_when_delays_are_real(producer, sandbox,
                                                                    real_delays):
    request = jira()
    sandbox.script("jira", _503("jira"), _503("jira"))
    producer(request)

    terminal(request["message_id"], timeout=30)

    first, second, third = sandbox.requests("jira")
    assert 1.0 <= second.at - first.at < 2.5
    assert 3.0 <= third.at - second.at < 4.5


def test_refused_and_nothing_sent_when_jira_domain_is_hostile(producer, sandbox):
    from config.settings import get_settings

    settings = get_settings()
    saved = settings.jira_base_url, settings.jira_domain
    settings.jira_base_url, settings.jira_domain = None, "evil.example.com/"
    try:
        request = jira()
        producer(request)
        row = terminal(request["message_id"])
    finally:
        settings.jira_base_url, settings.jira_domain = saved

    assert "JIRA_DOMAIN" in row["error"]
    assert sandbox.requests("jira") == []


# -- PagerDuty ------------------------------------------------------------------------------------


def test_pagerduty_event_is_spec_valid_and_sent_when_accepted(producer, sandbox):
    request = pagerduty()
    producer(request)

    row = terminal(request["message_id"])

    [call] = sandbox.requests("pagerduty")
    validate_recorded(call)
    event = call.json()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert event["routing_key"] == "sandbox0000000000000000000000000"
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == f"jane@example.com-network_outage-{today}"
    assert event["payload"]["summary"] == "Leeds core down"
    assert event["payload"]["source"] == "meow-comms"
    assert event["payload"]["severity"] == "error"
    assert event["payload"]["custom_details"] == {"cells": 12}
    assert event["links"] == [{"href": "https://acme.zendesk.com/agent/tickets/7",
                               "text": "Zendesk Ticket"}]
    assert row["response_id"] == event["dedup_key"]


def test_six_calls_failed_then_oncall_post_when_pagerduty_always_fails(producer, sandbox):
    request = pagerduty()
    sandbox.script("pagerduty", _503("pagerduty"), repeat=True)
    producer(request)

    row = terminal(request["message_id"], timeout=30)
    fallback = terminal(derived_id(request["message_id"], "fallback"))
    time.sleep(0.5)

    assert len(sandbox.requests("pagerduty")) == 6
    assert log_outcomes(request["message_id"]) == ["RETRYING"] * 5 + ["FAILED"]
    assert row["retry_count"] == 5
    [post] = sandbox.requests("slack")
    assert post.json()["channel"] == "#oncall"
    assert post.json()["text"].startswith("@oncall PagerDuty page failed")
    assert "Leeds core down" in post.json()["text"]
    assert fallback["outcome"] == "SENT"
    assert str(fallback["parent_message_id"]) == request["message_id"]
    assert log_outcomes(fallback["message_id"]) == ["SENT"]


def test_no_fallback_when_pagerduty_recovers_after_retries(producer, sandbox):
    request = pagerduty()
    sandbox.script("pagerduty", _503("pagerduty"), Reply(429, {"status": "throttled"}))
    producer(request)

    row = terminal(request["message_id"])
    time.sleep(0.5)

    assert row["outcome"] == "SENT"
    assert len(sandbox.requests("pagerduty")) == 3
    assert sandbox.requests("slack") == []
    assert store.get_dispatch(uuid.UUID(derived_id(request["message_id"], "fallback"))) is None


def test_one_call_failed_and_fallback_when_pagerduty_rejects_event(producer, sandbox):
    request = pagerduty()
    sandbox.script("pagerduty", Reply(400, {"status": "invalid event",
                                            "message": "Event object is invalid",
                                            "errors": ["Length of 'summary' is too long"]}))
    producer(request)

    row = terminal(request["message_id"])
    terminal(derived_id(request["message_id"], "fallback"))

    assert len(sandbox.requests("pagerduty")) == 1
    assert "Event object is invalid" in row["error"]


@pytest.mark.slow
def test_pagerduty_backoff_is_one_two_four_seconds_when_delays_are_real(producer, sandbox,
                                                                        real_delays):
    request = pagerduty()
    sandbox.script("pagerduty", _503("pagerduty"), _503("pagerduty"), _503("pagerduty"))
    producer(request)

    terminal(request["message_id"], timeout=30)

    calls = sandbox.requests("pagerduty")
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert len(calls) == 4
    for gap, expected in zip(gaps, (1, 2, 4), strict=True):
        assert expected <= gap < expected + 1.5
