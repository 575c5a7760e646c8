"""A message the broker lost is sent again by its producer, and the copy of a message that was
only slow changes nothing: one dispatch, one vendor call, one terminal row.

A message lost between Redis and a worker (kombu pops it before it records it as unacked; a
worker killed in between loses it) looks to the product exactly like one never enqueued, so that
is how these tests lose one."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from tests.conftest import log_outcomes, make_request, slack_request, terminal, wait_for
from worker.producer import resend_unaccepted, wait
from worker.sandbox import Reply
from worker.store import dispatches as store

pytestmark = pytest.mark.usefixtures("worker", "clean")


def test_wait_sends_again_a_message_nobody_accepted(celery_app, sandbox):
    request = slack_request()  # "lost": never reached a worker

    receipt = wait(request["message_id"], timeout=20, resend=request, resend_after=0.5,
                   app=celery_app)

    assert receipt["dispatch_receipt"]["status"] == "sent"
    (call,) = sandbox.requests("slack")
    assert call.json()["text"] == request["message_payload"]["fallback_text"]
    assert log_outcomes(request["message_id"]) == ["SENT"]


def test_wait_does_not_send_again_a_message_already_accepted(celery_app, producer, sandbox,
                                                             caplog):
    request = slack_request()
    # A slow vendor: the message is accepted long before its terminal row, and wait() must see
    # that through several re-send deadlines.
    sandbox.script("slack", Reply(200, {"ok": True, "ts": "1.000001"}, delay=1.0))
    producer(request)
    wait_for(lambda: store.get_dispatch(uuid.UUID(request["message_id"])))  # accepted, in flight

    with caplog.at_level(logging.WARNING, logger="worker.producer"):
        wait(request["message_id"], timeout=10, resend=request, resend_after=0.1, app=celery_app)
    time.sleep(1.0)  # a wrong re-send would also show itself as a second call

    assert "sending it again" not in caplog.text
    assert len(sandbox.requests("slack")) == 1
    assert log_outcomes(request["message_id"]) == ["SENT"]


def test_resend_unaccepted_sends_only_the_lost_ones(celery_app, producer, sandbox):
    delivered, lost = (
        make_request("slack", {"formatted_message": text, "fallback_text": text})
        for text in ("delivered", "lost")
    )
    producer(delivered)
    terminal(delivered["message_id"])

    again = resend_unaccepted([delivered, lost], app=celery_app)
    terminal(lost["message_id"])
    time.sleep(1.0)

    assert again == [lost["message_id"]]
    assert sorted(call.json()["text"] for call in sandbox.requests("slack")) == ["delivered",
                                                                                  "lost"]
    assert log_outcomes(delivered["message_id"]) == ["SENT"]
    assert log_outcomes(lost["message_id"]) == ["SENT"]


def test_resend_refuses_what_it_cannot_do(celery_app):
    request = slack_request()
    del request["message_id"]

    with pytest.raises(ValueError, match="message_id"):
        resend_unaccepted([request], app=celery_app)
    with pytest.raises(ValueError, match="message_id"):
        wait(uuid.uuid4(), timeout=1, resend=request, app=celery_app)
    with pytest.raises(ValueError, match="resend must be the request"):
        wait(uuid.uuid4(), timeout=1, resend=slack_request(), app=celery_app)
    same = slack_request()
    with pytest.raises(ValueError, match="resend_after"):
        wait(same["message_id"], timeout=1, resend=same, resend_after=0, app=celery_app)
