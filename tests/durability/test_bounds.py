"""Bounded time and bounded effort: no Celery ETA beyond the bound (over the configuration and at
runtime), and every give-up path (replays, parkings) ends FAILED with its reason."""

from __future__ import annotations

import functools
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest

from config.settings import Settings, get_settings
from config.tables import CHANNELS, policies
from tasks.delivery import park_delay, policy_delay
from tests.conftest import log_outcomes, slack_request, terminal, wait_for
from worker.sandbox import Reply
from worker.store import deferral
from worker.store import dispatches as store
from worker.store.models import utcnow

# -- (a) over the configuration ------------------------------------------------------------------


@pytest.mark.parametrize("settings", [
    Settings(comms_visibility_timeout=3600, comms_max_countdown=300, comms_delay_scale=1.0),
    Settings(),  # as the tests run
], ids=["production-defaults", "test-environment"])
def test_every_scheduled_countdown_fits_the_bound_when_configured(settings):
    bound = settings.countdown_bound
    assert bound <= settings.comms_max_countdown
    assert bound <= settings.comms_visibility_timeout / 4
    for channel in CHANNELS:
        policy = policies()[channel]
        # Every retry-table delay at scale 1, including the last one repeated past the table.
        for retries_done in range(policy.max_retries + 1):
            assert policy.delay(retries_done) <= bound, (channel, retries_done)
    # The production bound itself is what the README documents.
    assert Settings(comms_visibility_timeout=3600).countdown_bound == 300


def test_defaults_keep_the_bound_well_under_the_visibility_timeout():
    fields = Settings.model_fields
    visibility = fields["comms_visibility_timeout"].default
    assert fields["comms_max_countdown"].default <= visibility / 4
    assert fields["comms_replay_after"].default >= fields["comms_claim_lease"].default


def test_task_level_retry_delays_fit_the_bound_when_celery_schedules_them():
    """Delays Celery picks by itself: a pool child lost (task_retry_on_worker_lost waits
    default_retry_delay) and comms.dispatch's database backoff."""
    from worker import app

    bound = Settings(comms_visibility_timeout=3600).countdown_bound
    tasks = {name: task for name, task in app.tasks.items() if name.startswith("comms.")}
    assert {f"comms.{c}" for c in CHANNELS} <= set(tasks)
    for name, task in tasks.items():
        assert task.default_retry_delay <= bound, name
        if getattr(task, "retry_backoff", False):
            # Celery's default cap is 600 s: a task with backoff must set its own.
            longest = min(getattr(task, "retry_backoff_max", 600),
                          2 ** max(task.max_retries - 1, 0))
            assert longest <= bound, name


def test_long_waits_are_parked_not_countdowns_when_longer_than_the_bound():
    bound = get_settings().countdown_bound
    email = policies()["email"]
    assert email.park_after_minutes == 15
    assert park_delay(email) == pytest.approx(15 * 60 * get_settings().comms_delay_scale)
    assert Settings(comms_delay_scale=1.0).scaled(email.park_after_minutes * 60) == 900 > bound
    # A vendor's Retry-After is never scaled: an hour stays an hour, beyond the bound.
    assert policy_delay(policies()["slack"], 0, 3600.0) == 3600.0 > bound


# -- (b) at runtime --------------------------------------------------------------------------------


def _deferred(message_id: str) -> bool:
    return "DEFERRED" in log_outcomes(message_id)


def _rate_limited(seconds: int) -> Reply:
    return Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(seconds)})


@pytest.mark.usefixtures("worker", "clean")
def test_no_published_eta_exceeds_the_bound_across_flows(producer, sandbox, eta_guard):
    bound = get_settings().countdown_bound
    # Retries within the bound: a vendor's short Retry-After and the scaled table.
    short = slack_request(message_payload={"formatted_message": "short", "fallback_text": "short"})
    sandbox.script("slack", _rate_limited(1), contains='"text": "short"')
    # A vendor asking for an hour, and one asking for just over the bound: both must park.
    hour = slack_request(message_payload={"formatted_message": "hour", "fallback_text": "hour"})
    sandbox.script("slack", _rate_limited(3600), contains='"text": "hour"')
    over = slack_request(message_payload={"formatted_message": "over", "fallback_text": "over"})
    sandbox.script("slack", _rate_limited(int(bound) + 30), contains='"text": "over"')
    # PagerDuty's 1/2/4/8/16 s table (scaled), e-mail exhausting its retries (parks 15 min).
    page: dict[str, Any] = {"recipient": "ops@example.com", "channel": "pagerduty",
                            "priority": "CRITICAL", "message_id": str(uuid.uuid4()),
                            "signal_type": "network_outage",
                            "message_payload": {"summary": "core down"}}
    sandbox.script("pagerduty", Reply(503, {"status": "unavailable"}),
                   Reply(503, {"status": "unavailable"}))
    mail: dict[str, Any] = {"recipient": "jane@example.com", "channel": "email", "priority": "HIGH",
            "message_id": str(uuid.uuid4()),
            "message_payload": {"subject": "Outage", "plain_text_body": "We are on it."}}
    sandbox.script("sendgrid", Reply(503, {"errors": [{"message": "down"}]}), repeat=True)
    for request in (short, hour, over, page, mail):
        producer(request)

    assert terminal(short["message_id"])["outcome"] == "SENT"
    assert terminal(page["message_id"])["outcome"] == "SENT"
    for parked in (hour, over, mail):
        wait_for(functools.partial(_deferred, parked["message_id"]))
    [hour_row] = deferral.pending(uuid.UUID(hour["message_id"]))
    wait = (hour_row["due_at"] - hour_row["created_at"]).total_seconds()
    assert wait == pytest.approx(3600, abs=5)
    assert store.terminal_row(uuid.UUID(hour["message_id"])) is None
    assert len(sandbox.requests("slack")) == 4  # short twice, hour once, over once
    # The guard saw the retries' ETAs (so it works) and none beyond the bound (checked at teardown).
    assert sum(1 for _, ahead in eta_guard.seen if ahead > 0.5) >= 1
    assert all(ahead <= bound + 1 for _, ahead in eta_guard.seen)


# -- bounded replays and parkings ------------------------------------------------------------------


def _parked_times(mid: uuid.UUID, n: int) -> bool:
    return log_outcomes(mid).count("DEFERRED") == n


def _accept_lost(request: dict[str, Any]) -> uuid.UUID:
    """A dispatch accepted in PostgreSQL whose channel task the broker then lost."""
    mid = uuid.UUID(request["message_id"])
    from channels.envelope import parse_request

    req = parse_request(request, max_bytes=get_settings().comms_max_request_bytes)
    store.accept(req.model_dump(mode="json"), message_id=mid, channel=req.channel,
                 recipient=str(req.recipient), priority=req.priority,
                 signal_type=req.signal_type, severity=req.severity, parent_message_id=None)
    return mid


@pytest.mark.usefixtures("worker", "clean")
def test_failed_with_reason_then_fallback_when_replays_are_exhausted(sandbox, monkeypatch):
    from tasks import maintenance
    from tasks.dispatch import derived_id

    settings = get_settings()
    page = {"recipient": "ops@example.com", "channel": "pagerduty", "priority": "CRITICAL",
            "message_id": str(uuid.uuid4()), "signal_type": "network_outage",
            "message_payload": {"summary": "core down"}}
    mid = _accept_lost(page)
    lost: list[tuple[str, int, int]] = []
    # The broker loses every replay too.
    monkeypatch.setattr(maintenance, "route", lambda req, round_no=0, retries=0: lost.append(
        (str(req.message_id), round_no, retries)))
    step = timedelta(seconds=settings.comms_replay_after + 1)
    now = utcnow()

    assert maintenance.sweep_outbox_once(now=now).replayed == []  # not stale yet
    for n in range(1, settings.comms_max_replays + 1):
        now += step
        done = maintenance.sweep_outbox_once(now=now)
        assert done.replayed == [str(mid)]
        assert store.get_dispatch(mid)["replays"] == n  # type: ignore[index]
        # A second sweep at the same moment finds nothing: the replay touched the row.
        assert maintenance.sweep_outbox_once(now=now).replayed == []
    now += step
    done = maintenance.sweep_outbox_once(now=now)

    assert done.replayed == [] and done.failed == [str(mid)]
    row = terminal(mid)
    assert row["outcome"] == "FAILED"
    assert row["error"] == (
        f"no progress after {settings.comms_max_replays} replays (last state queued)")
    assert lost == [(str(mid), 0, 0)] * settings.comms_max_replays
    assert sandbox.requests("pagerduty") == []
    # Exhausted like any final failure: PagerDuty falls back to Slack @oncall.
    fallback = terminal(derived_id(mid, "fallback"))
    assert fallback["outcome"] == "SENT"
    assert "core down" in sandbox.requests("slack")[0].json()["text"]


@pytest.mark.usefixtures("worker", "clean")
def test_failed_with_reason_when_a_vendor_keeps_asking_for_hours(sandbox):
    """Re-parking for a long Retry-After is bounded by COMMS_MAX_PARKINGS."""
    settings = get_settings()
    request = slack_request()
    mid = uuid.UUID(request["message_id"])
    sandbox.script("slack", _rate_limited(7200), repeat=True)
    from tasks.maintenance import drain_deferred_once

    _accept_lost(request)
    from channels.envelope import DispatchRequest
    from tasks.dispatch import route

    route(DispatchRequest.model_validate(store.get_dispatch(mid)["request"]))  # type: ignore[index]
    now = utcnow()
    for n in range(1, settings.comms_max_parkings + 1):
        wait_for(functools.partial(_parked_times, mid, n))
        now += timedelta(hours=2, seconds=5)
        assert drain_deferred_once(now=now) == [str(mid)]

    row = terminal(mid)
    assert row["outcome"] == "FAILED"
    assert row["error"].startswith(
        f"parked {settings.comms_max_parkings} times without being sent")
    assert len(sandbox.requests("slack")) == settings.comms_max_parkings + 1
    time.sleep(0.2)
    assert log_outcomes(mid).count("FAILED") == 1


def test_receipt_callback_retries_database_outages_within_the_bound():
    """The chord body meets "too many clients" or a restart: it retries with backoff (1 s doubling,
    at most 30 s, well within the countdown bound) instead of leaving the row for the sweep."""
    from sqlalchemy.exc import OperationalError

    from tasks.receipts import record_receipt

    assert record_receipt.autoretry_for == (OperationalError,)
    assert record_receipt.max_retries == 10
    assert record_receipt.retry_backoff is True
    assert record_receipt.retry_backoff_max <= get_settings().countdown_bound


def test_dispatch_waits_out_an_hour_of_database_outage_within_the_bound():
    """Until comms.dispatch has inserted the dispatch row, the task message is the only record of
    the request: an outage shorter than an hour must not drop it."""
    from sqlalchemy.exc import OperationalError

    from tasks.dispatch import dispatch

    assert dispatch.autoretry_for == (OperationalError,)
    assert dispatch.retry_backoff is True and dispatch.retry_jitter is False
    assert dispatch.retry_backoff_max <= get_settings().countdown_bound
    assert dispatch.max_retries is not None
    delays = [min(2 ** n, dispatch.retry_backoff_max) for n in range(dispatch.max_retries)]
    assert 3600 <= sum(delays) <= 3700
