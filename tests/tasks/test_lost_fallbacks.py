"""A fallback is a Celery message like any other, and can be lost the same ways (Redis flushed, a
worker killed as it took the message, the failing process dead before it enqueued it). The outbox
sweep finds a failed parent of a falling-back channel with no fallback dispatch and starts it
again; a bug in the first attempt falls back as a channel task's failure does."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from config.settings import get_settings
from tasks import maintenance
from tasks.dispatch import derived_id
from tests.conftest import log_outcomes, make_request, terminal, wait_for
from worker.celery_app import app
from worker.sandbox import Reply
from worker.store import dispatches as store
from worker.store.models import utcnow

pytestmark = pytest.mark.usefixtures("worker", "clean")


def pagerduty() -> dict[str, Any]:
    return make_request("pagerduty", {"summary": "Leeds core down"})


def _refused() -> Reply:
    return Reply(400, {"status": "invalid event", "message": "Event object is invalid",
                       "errors": ["Length of 'routing_key' is incorrect"]})


def _past_replay_after() -> Any:
    return utcnow() + timedelta(seconds=get_settings().comms_replay_after + 1)


@pytest.fixture
def lose_fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every fallback dispatch enqueued in this process is lost on its way to Redis; returns the
    message ids that were lost."""
    lost: list[str] = []
    send_task = app.send_task

    def losing(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        request = (kwargs or {}).get("request")
        if name == "comms.dispatch" and isinstance(request, dict) and request.get(
                "parent_message_id"):
            lost.append(request["message_id"])
            return None
        return send_task(name, args, kwargs, **options)

    monkeypatch.setattr(app, "send_task", losing)
    return lost


def test_sweep_starts_the_oncall_post_of_a_page_whose_fallback_was_lost(
        producer, sandbox, lose_fallbacks, monkeypatch):
    sandbox.script("pagerduty", _refused())
    request = pagerduty()
    producer(request)
    assert terminal(request["message_id"])["outcome"] == "FAILED"
    fallback_id = derived_id(request["message_id"], "fallback")
    wait_for(lambda: lose_fallbacks == [fallback_id])
    assert sandbox.requests("slack") == []

    assert maintenance.sweep_outbox_once().fallbacks == []  # not before COMMS_REPLAY_AFTER
    monkeypatch.undo()  # the broker keeps messages again
    done = maintenance.sweep_outbox_once(now=_past_replay_after())

    assert done.fallbacks == [request["message_id"]]
    row = terminal(fallback_id)
    assert row["outcome"] == "SENT"
    assert row["parent_message_id"] == uuid.UUID(request["message_id"])
    (post,) = sandbox.requests("slack")
    assert post.json()["channel"] == "#oncall"
    assert post.json()["text"].startswith(
        "@oncall PagerDuty page failed (pagerduty:invalid_event Event object is invalid")
    # Started once: the next sweep finds the fallback dispatch.
    assert maintenance.sweep_outbox_once(now=_past_replay_after()).fallbacks == []


def test_sweep_leaves_alone_what_has_no_fallback_to_start(producer, sandbox, lose_fallbacks):
    sandbox.script("pagerduty", Reply(202, {"status": "success", "dedup_key": "k"}))
    sent = pagerduty()
    invalid = make_request("pagerduty", {"no_summary": True})
    slack = make_request("slack", {"formatted_message": "x", "fallback_text": "x"})
    sandbox.script("slack", Reply(200, {"ok": False, "error": "channel_not_found"}))
    for request in (sent, invalid, slack):
        producer(request)
    assert terminal(sent["message_id"])["outcome"] == "SENT"
    assert terminal(invalid["message_id"])["outcome"] == "FAILED"  # invalid: never falls back
    assert terminal(slack["message_id"])["outcome"] == "FAILED"  # Slack's policy: log only

    assert maintenance.sweep_outbox_once(now=_past_replay_after()).fallbacks == []
    assert lose_fallbacks == []


def test_a_bug_in_the_attempt_still_falls_back(producer, sandbox, monkeypatch):
    import tasks.delivery
    from channels.base import deliver

    def broken(channel: Any, notification: Any, transport: Any) -> Any:
        if notification.request.channel == "pagerduty":
            raise RuntimeError("boom")
        return deliver(channel, notification, transport)

    monkeypatch.setattr(tasks.delivery, "deliver", broken)
    request = pagerduty()
    producer(request)

    assert terminal(request["message_id"])["outcome"] == "FAILED"
    row = terminal(derived_id(request["message_id"], "fallback"))
    assert row["outcome"] == "SENT"
    assert log_outcomes(request["message_id"]) == ["FAILED"]
    (post,) = sandbox.requests("slack")
    assert "RuntimeError: boom" in post.json()["text"]
    parent = store.get_dispatch(uuid.UUID(request["message_id"]))
    assert parent is not None and parent["error"] == "RuntimeError: boom"
