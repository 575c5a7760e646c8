"""Slack end to end: a producer enqueues by name; a real worker on real Redis sends to the sandbox
over HTTP and writes receipts to real PostgreSQL."""

from __future__ import annotations

import pytest

from tests.conftest import log_outcomes, slack_request, terminal
from worker.sandbox import Reply

pytestmark = pytest.mark.usefixtures("worker", "clean")


def test_sends_seed_payload_and_one_sent_row_when_enqueued_by_name(producer, sandbox):
    request = slack_request()
    producer(request)

    row = terminal(request["message_id"])

    [call] = sandbox.requests("slack")
    assert call.method == "POST"
    assert call.path == "/slack/api/chat.postMessage"
    assert call.headers["authorization"] == "Bearer xoxb-sandbox-token"
    assert call.headers["content-type"] == "application/json; charset=utf-8"
    assert call.json() == {
        "channel": "#noc-critical",
        "text": "Outage in Leeds: data service degraded",
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*Outage* in Leeds: data service degraded"},
            }
        ],
        "unfurl_links": False,
    }
    assert row["outcome"] == "SENT"
    assert row["response_id"] and row["response_id"].endswith(".000001") is not None
    assert log_outcomes(request["message_id"]) == ["SENT"]


def _unavailable() -> Reply:
    return Reply(503, {"ok": False, "error": "service_unavailable"})


def test_retries_then_sent_with_retry_count_when_vendor_recovers(producer, sandbox):
    request = slack_request()
    sandbox.script("slack", _unavailable(), _unavailable())
    producer(request)

    row = terminal(request["message_id"])

    assert len(sandbox.requests("slack")) == 3
    assert log_outcomes(request["message_id"]) == ["RETRYING", "RETRYING", "SENT"]
    assert row["retry_count"] == 2
    import uuid

    from worker.store import dispatches as store

    retrying = [
        r for r in store.log_rows(uuid.UUID(request["message_id"])) if r["outcome"] == "RETRYING"
    ]
    assert [r["retry_count"] for r in retrying] == [0, 1]
    assert all(r["error"] == "slack:http_503" for r in retrying)


def test_four_calls_then_failed_when_vendor_always_fails(producer, sandbox):
    request = slack_request()
    sandbox.script("slack", _unavailable(), repeat=True)
    producer(request)

    row = terminal(request["message_id"])

    assert len(sandbox.requests("slack")) == 4
    assert log_outcomes(request["message_id"]) == ["RETRYING"] * 3 + ["FAILED"]
    assert row["retry_count"] == 3
    assert row["error"] == "retries exhausted: slack:http_503"


def test_waits_retry_after_when_rate_limited(producer, sandbox):
    request = slack_request()
    sandbox.script("slack", Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "2"}))
    producer(request)

    terminal(request["message_id"])

    first, second = sandbox.requests("slack")
    assert second.at - first.at >= 2.0
    assert log_outcomes(request["message_id"]) == ["RETRYING", "SENT"]


def test_one_call_then_failed_when_channel_not_found(producer, sandbox):
    request = slack_request()
    sandbox.script("slack", Reply(200, {"ok": False, "error": "channel_not_found"}))
    producer(request)

    row = terminal(request["message_id"])

    assert len(sandbox.requests("slack")) == 1
    assert log_outcomes(request["message_id"]) == ["FAILED"]
    assert row["error"] == "slack:channel_not_found"


def test_ok_false_retryable_error_is_retried_when_slack_says_internal_error(producer, sandbox):
    request = slack_request()
    sandbox.script("slack", Reply(200, {"ok": False, "error": "internal_error"}))
    producer(request)

    row = terminal(request["message_id"])

    assert log_outcomes(request["message_id"]) == ["RETRYING", "SENT"]
    assert row["retry_count"] == 1


@pytest.mark.slow
def test_backoff_is_one_then_three_seconds_when_delays_are_real(producer, sandbox, real_delays):
    request = slack_request()
    sandbox.script("slack", _unavailable(), _unavailable())
    producer(request)

    terminal(request["message_id"], timeout=30)

    first, second, third = sandbox.requests("slack")
    assert 1.0 <= second.at - first.at < 2.5
    assert 3.0 <= third.at - second.at < 4.5


def test_one_retry_then_sent_and_one_failed_when_two_messages_meet_faults(producer, sandbox):
    flaky, broken = slack_request(), slack_request()
    sandbox.script("slack", _unavailable(), contains=flaky["message_id"][:8])
    sandbox.script("slack", Reply(200, {"ok": False, "error": "is_archived"}),
                   contains=broken["message_id"][:8])
    flaky["message_payload"]["fallback_text"] += f" {flaky['message_id'][:8]}"
    broken["message_payload"]["fallback_text"] += f" {broken['message_id'][:8]}"
    producer(flaky)
    producer(broken)

    assert terminal(flaky["message_id"])["outcome"] == "SENT"
    assert terminal(broken["message_id"])["outcome"] == "FAILED"
    assert log_outcomes(flaky["message_id"]) == ["RETRYING", "SENT"]
    assert log_outcomes(broken["message_id"]) == ["FAILED"]
    assert len(sandbox.requests("slack")) == 3


def test_receipt_keeps_a_cut_id_when_slack_answers_an_overlong_one(producer, sandbox):
    request = slack_request()
    sandbox.script("slack", Reply(200, {"ok": True, "ts": "1" * 300}))
    producer(request)

    row = terminal(request["message_id"])

    assert row["outcome"] == "SENT"
    assert row["response_id"] == "1" * 255
    assert log_outcomes(request["message_id"]) == ["SENT"]
    assert len(sandbox.requests("slack")) == 1


def test_receipt_is_written_when_slack_error_carries_a_nul(producer, sandbox):
    request = slack_request()
    sandbox.script("slack", Reply(200, {"ok": False, "error": "channel\u0000gone"}))
    producer(request)

    row = terminal(request["message_id"])

    assert row["outcome"] == "FAILED"
    assert row["error"] == "slack:channel\ufffdgone"
    assert log_outcomes(request["message_id"]) == ["FAILED"]
    assert len(sandbox.requests("slack")) == 1
