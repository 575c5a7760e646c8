"""The same message_id dispatches once: twice in a row, and 20 times at once."""

from __future__ import annotations

import time

import pytest

from tests.conftest import log_outcomes, slack_request, terminal
from tests.together import all_at_once
from worker.sandbox import Reply

pytestmark = pytest.mark.usefixtures("worker", "clean")


def test_one_vendor_call_when_same_message_id_sent_twice(producer, sandbox):
    request = slack_request()
    producer(request)
    terminal(request["message_id"])
    producer(request)
    time.sleep(1.0)  # give a wrong second dispatch the time to show itself

    assert len(sandbox.requests("slack")) == 1
    assert log_outcomes(request["message_id"]) == ["SENT"]


def test_one_vendor_call_when_same_message_id_sent_20_times_concurrently(producer, sandbox):
    request = slack_request()
    # A slow vendor keeps the first send in flight while the duplicates arrive.
    sandbox.script("slack", Reply(200, {"ok": True, "ts": "1.000001"}, delay=0.5))
    all_at_once(producer, [(request,)] * 20)

    terminal(request["message_id"])
    time.sleep(1.0)

    assert len(sandbox.requests("slack")) == 1
    assert log_outcomes(request["message_id"]) == ["SENT"]
