"""Bad input: one FAILED receipt with a clear error, no retry, no vendor call; the worker lives."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import log_outcomes, slack_request, terminal

pytestmark = pytest.mark.usefixtures("worker", "clean")


def _drop(request: dict[str, object], key: str) -> dict[str, object]:
    return {k: v for k, v in request.items() if k != key}


def _nested(levels: int) -> object:
    value: object = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


BAD_REQUESTS = {
    "missing_recipient": (lambda r: _drop(r, "recipient"), "recipient: Field required"),
    "missing_payload": (lambda r: _drop(r, "message_payload"), "message_payload: Field required"),
    "mistyped_priority": (lambda r: {**r, "priority": 3}, "priority: Input should be"),
    "unknown_priority": (lambda r: {**r, "priority": "URGENT"}, "priority: Input should be"),
    "bad_email": (
        lambda r: {**r, "recipient": "not-an-address"},
        "recipient: value is not a valid",
    ),
    "unknown_channel": (lambda r: {**r, "channel": "fax"}, "channel: Input should be 'slack'"),
    "payload_not_matching_channel": (
        lambda r: {**r, "message_payload": {"subject": "x", "body": "y"}},
        "message_payload is not a valid SlackPayload",
    ),
    "unknown_payload_field": (
        lambda r: {**r, "message_payload": {**r["message_payload"], "colour": "red"}},
        "colour: Extra inputs are not permitted",
    ),
    "oversized": (
        lambda r: {**r, "message_payload": {**r["message_payload"], "fallback_text": "x" * 70_000}},
        "bytes; the limit is 65536",
    ),
    # PostgreSQL cannot store U+0000 in text or jsonb: refused before it reaches the database.
    "nul_in_payload": (
        lambda r: {**r, "message_payload": {**r["message_payload"], "fallback_text": "a\x00b"}},
        "message_payload.fallback_text: U+0000 (NUL) is not allowed in text",
    ),
    "nul_in_signal_type": (lambda r: {**r, "signal_type": "out\x00age"}, "signal_type: U+0000"),
    "nul_in_recipient_and_channel": (
        lambda r: {**r, "recipient": "#ops\x00", "channel": "sla\x00ck"},
        "recipient: U+0000 (NUL) is not allowed in text; channel: U+0000"),
    # Deep enough, json.dumps raised RecursionError inside the task and the message was lost.
    "nested_too_deep": (
        lambda r: {**r, "message_payload": {**r["message_payload"], "x": _nested(40)}},
        "request is nested deeper than 32 levels",
    ),
    "bad_timezone": (
        lambda r: {**r, "customer": {"timezone": "Mars/Olympus"}},
        "unknown IANA time zone 'Mars/Olympus'",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_one_failed_row_and_no_vendor_call_when_request_is_invalid(case, producer, sandbox):
    make, expected_error = BAD_REQUESTS[case]
    request = make(slack_request())
    producer(request)

    row = terminal(request["message_id"])

    assert row["outcome"] == "FAILED"
    assert row["retry_count"] == 0
    assert expected_error in row["error"]
    assert row["error"].startswith("invalid request: ")
    time.sleep(0.3)
    assert log_outcomes(request["message_id"]) == ["FAILED"]
    assert sandbox.requests() == []

    # The worker is still serving.
    good = slack_request()
    producer(good)
    assert terminal(good["message_id"])["outcome"] == "SENT"


def test_failed_row_under_derived_id_when_request_is_not_an_object(producer):
    from tasks.dispatch import derived_id

    task_id = producer(["not", "an", "object"])

    row = terminal(derived_id(task_id, "message"))
    assert row["outcome"] == "FAILED"
    assert "request must be a JSON object, not list" in row["error"]


def test_failed_row_naming_variable_when_credential_missing(producer, sandbox):
    from config.settings import get_settings

    settings = get_settings()
    token = settings.slack_bot_token
    settings.slack_bot_token = None
    try:
        request = slack_request()
        producer(request)
        row = terminal(request["message_id"])
    finally:
        settings.slack_bot_token = token

    assert row["outcome"] == "FAILED"
    assert "SLACK_BOT_TOKEN is not set" in row["error"]
    assert sandbox.requests() == []
    assert log_outcomes(request["message_id"]) == ["FAILED"]


def test_no_secret_in_log_when_vendor_rejects_auth(producer, sandbox):
    from worker.sandbox import Reply

    sandbox.script("slack", Reply(200, {"ok": False, "error": "invalid_auth"}))
    request = slack_request()
    producer(request)

    row = terminal(request["message_id"])

    assert row["error"] == "slack:invalid_auth"
    from worker.store import dispatches as store

    dumped = repr(store.log_rows(uuid.UUID(request["message_id"]))) + repr(
        store.get_dispatch(uuid.UUID(request["message_id"]))
    )
    assert "xoxb-sandbox-token" not in dumped


def send_while_recording_fails(monkeypatch, producer, times: int) -> tuple[str, list[str]]:
    """Send a Slack request while recording a request fails `times` times with an error that is
    not an unreachable database (a bug); recording it FAILED (reject) still works. Returns its
    message_id and the message_id of each failed try."""
    from worker.store import dispatches

    real = dispatches.accept
    failed: list[str] = []

    def accept(request, **kwargs):
        if not request.get("invalid_request") and len(failed) < times:
            failed.append(str(kwargs["message_id"]))
            raise RuntimeError("injected fault while recording")
        return real(request, **kwargs)

    monkeypatch.setattr(dispatches, "accept", accept)
    request = slack_request()
    producer(request)
    return request["message_id"], failed


def test_a_request_the_database_did_not_take_once_is_tried_again_and_sent(
        producer, sandbox, monkeypatch):
    mid, failed = send_while_recording_fails(monkeypatch, producer, times=1)

    assert terminal(mid)["outcome"] == "SENT"
    assert failed == [mid]
    assert log_outcomes(mid) == ["SENT"]
    assert len(sandbox.requests()) == 1


def test_a_request_the_database_never_takes_is_closed_failed_not_dropped(
        producer, sandbox, monkeypatch):
    from tasks.dispatch import UNRECORDED_RETRIES

    mid, failed = send_while_recording_fails(monkeypatch, producer, times=1000)

    row = terminal(mid)
    assert failed == [mid] * (UNRECORDED_RETRIES + 1)
    assert row["outcome"] == "FAILED"
    assert row["error"] == (
        "request could not be recorded: RuntimeError: injected fault while recording")
    time.sleep(0.3)
    assert log_outcomes(mid) == ["FAILED"]
    assert sandbox.requests() == []


def test_refused_with_failed_row_when_checking_the_request_breaks(producer, sandbox, monkeypatch):
    import tasks.dispatch

    def broken(data, *, max_bytes):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(tasks.dispatch, "parse_request", broken)
    request = slack_request()
    producer(request)

    row = terminal(request["message_id"])

    assert row["outcome"] == "FAILED"
    assert row["error"] == "invalid request: the request could not be checked: RecursionError"
    assert sandbox.requests() == []
