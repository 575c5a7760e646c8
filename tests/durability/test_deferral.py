"""Durable deferral: parked work waits in PostgreSQL and beat's drain moves it exactly once.

E-mail's 15-minute round runs on a real `celery beat` and worker (scaled clock: COMMS_DELAY_SCALE
turns 15 minutes into seconds); quiet hours use COMMS_CLOCK_OFFSET to stand at 03:00 and 08:00 in
the customer's zone."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select

from config.settings import get_settings
from config.tables import policies
from tests.conftest import log_outcomes, terminal, wait_for
from worker.sandbox import Reply
from worker.store import deferral
from worker.store import dispatches as store
from worker.store.db import transaction
from worker.store.models import utcnow


def email_request(**extra: Any) -> dict[str, Any]:
    return {"recipient": "jane@example.com", "channel": "email", "priority": "HIGH",
            "message_id": str(uuid.uuid4()), "signal_type": "network_outage",
            "message_payload": {"subject": "Your data service",
                                "plain_text_body": "We are restoring it."},
            **extra}


def _unavailable() -> Reply:
    return Reply(503, {"errors": [{"message": "service unavailable", "field": None}]})


# -- the interval is really 15 minutes -----------------------------------------------------------


def test_email_park_interval_is_fifteen_minutes_when_configured():
    import tomllib

    from config.tables import HERE

    raw = tomllib.loads((HERE / "retry_policies.toml").read_text())
    assert raw["email"]["on_final_failure"] == "park"
    assert raw["email"]["park_after_minutes"] == 15
    assert policies()["email"].park_after_minutes == 15


@pytest.mark.usefixtures("worker", "clean", "real_delays")
def test_parked_due_fifteen_minutes_later_when_email_exhausts_retries_at_scale_one(
        producer, sandbox):
    # Retry-After: 0 makes the four attempts immediate (a vendor's value is never scaled), so the
    # scale-1 parking is observed without waiting out the 1/3/9 s table.
    now_503 = Reply(503, {"errors": [{"message": "down"}]}, {"Retry-After": "0"})
    sandbox.script("sendgrid", now_503, now_503, now_503, now_503)
    request = email_request()
    producer(request)

    wait_for(lambda: "DEFERRED" in log_outcomes(request["message_id"]))

    mid = uuid.UUID(request["message_id"])
    [parked] = deferral.pending(mid)
    deferred_row = next(r for r in store.log_rows(mid) if r["outcome"] == "DEFERRED")
    wait = (parked["due_at"] - deferred_row["dispatched_at"]).total_seconds()
    assert wait == pytest.approx(15 * 60, abs=2)
    assert parked["status"] == "pending" and parked["round_no"] == 1
    assert log_outcomes(mid) == ["RETRYING"] * 3 + ["DEFERRED"]
    assert len(sandbox.requests("sendgrid")) == 4


# -- a real beat drives the next round -------------------------------------------------------------

#: 15 minutes x 0.002 = 1.8 s; the 1/3/9 s table becomes milliseconds.
BEAT_SCALE = 0.002


@pytest.mark.slow
def test_one_new_round_by_beat_then_sent_when_email_fails_all_attempts(cluster, sandbox):
    c = cluster(COMMS_DELAY_SCALE=BEAT_SCALE)
    c.worker().start()
    c.beat().start(ready=None)
    sandbox.script("sendgrid", *[_unavailable()] * 4)
    request = email_request()
    c.send([request])

    row = terminal(request["message_id"], timeout=30)

    mid = uuid.UUID(request["message_id"])
    assert row["outcome"] == "SENT"
    assert log_outcomes(mid) == ["RETRYING"] * 3 + ["DEFERRED", "SENT"]
    calls = sandbox.requests("sendgrid")
    assert len(calls) == 5
    gap = calls[4].at - calls[3].at
    park = 15 * 60 * BEAT_SCALE
    assert park <= gap < park + 5  # due time, then the next drain (every second)
    [parked] = deferral.pending(mid)
    assert parked["status"] == "enqueued" and parked["claimed_by"]
    time.sleep(2)  # more drains run: nothing more is sent
    assert len(sandbox.requests("sendgrid")) == 5


@pytest.mark.slow
def test_failed_after_max_parkings_rounds_when_email_always_fails(cluster, sandbox):
    c = cluster(COMMS_DELAY_SCALE=BEAT_SCALE)
    c.worker().start()
    c.beat().start(ready=None)
    sandbox.script("sendgrid", _unavailable(), repeat=True)
    request = email_request()
    c.send([request])

    row = terminal(request["message_id"], timeout=60)

    email = policies()["email"]
    assert email.max_parkings == 3
    rounds = email.max_parkings + 1
    assert row["outcome"] == "FAILED"
    assert row["error"] == "retries exhausted: sendgrid:http_503"
    assert log_outcomes(request["message_id"]) == (
        (["RETRYING"] * 3 + ["DEFERRED"]) * email.max_parkings + ["RETRYING"] * 3 + ["FAILED"])
    assert len(sandbox.requests("sendgrid")) == rounds * (email.max_retries + 1)
    assert [p["round_no"] for p in deferral.pending(uuid.UUID(request["message_id"]))] == [1, 2, 3]


# -- quiet hours -----------------------------------------------------------------------------------


def _offset_to(target: datetime) -> float:
    return (target - utcnow()).total_seconds()


@pytest.mark.usefixtures("worker", "clean")
def test_sms_at_three_local_is_sent_once_at_eight_by_the_drain(producer, sandbox):
    from tasks.maintenance import drain_deferred_once

    settings = get_settings()
    zone = ZoneInfo("Asia/Tokyo")
    local = utcnow().astimezone(zone)
    three = local.replace(hour=3, minute=0, second=0, microsecond=0)
    if three <= local:
        three += timedelta(days=1)
    eight = three.replace(hour=8)
    request: dict[str, Any] = {"recipient": "kenji@example.com", "channel": "sms",
                               "priority": "HIGH",
                               "message_id": str(uuid.uuid4()),
                               "signal_type": "network_outage",
                               "message_payload": {"sms_body": "Your data service is degraded."},
                               "customer": {"phone": "+14155550123", "timezone": "Asia/Tokyo"}}
    mid = uuid.UUID(request["message_id"])
    try:
        settings.comms_clock_offset = _offset_to(three)
        producer(request)
        wait_for(lambda: log_outcomes(mid) == ["DEFERRED"])
        [parked] = deferral.pending(mid)
        assert parked["due_at"] == eight
        assert sandbox.requests("twilio") == []

        settings.comms_clock_offset = _offset_to(eight - timedelta(minutes=1))
        assert drain_deferred_once() == []  # 07:59: not yet

        settings.comms_clock_offset = _offset_to(eight + timedelta(seconds=20))
        assert drain_deferred_once() == [str(mid)]
        assert drain_deferred_once() == []
        row = terminal(mid)
    finally:
        settings.comms_clock_offset = 0.0

    assert row["outcome"] == "SENT"
    assert log_outcomes(mid) == ["DEFERRED", "SENT"]
    [call] = sandbox.requests("twilio")
    assert call.form()["To"] == "+14155550123"


# -- two drains racing -----------------------------------------------------------------------------


def _park_many(n: int, due: datetime) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    now = utcnow()
    request = {"recipient": "jane@example.com", "channel": "slack", "priority": "LOW",
               "message_payload": {"formatted_message": "x", "fallback_text": "x"}}
    with transaction() as conn:
        conn.execute(insert(store.dispatches), [
            {"message_id": mid, "channel": "slack", "recipient": "jane@example.com",
             "priority": "LOW", "request": {**request, "message_id": str(mid)},
             "state": "deferred", "attempts": 4, "replays": 0, "parkings": 1,
             "created_at": now, "updated_at": now} for mid in ids])
        conn.execute(insert(deferral.deferred), [
            {"message_id": mid, "round_no": 1, "due_at": due, "reason": "test",
             "status": "pending", "created_at": now} for mid in ids])
    return ids


@pytest.mark.usefixtures("clean")
def test_each_row_enqueued_once_when_two_drains_race_over_1000_due_rows(monkeypatch):
    from tasks import maintenance

    ids = _park_many(1000, utcnow() - timedelta(seconds=1))
    enqueued: dict[str, list[str]] = {"A": [], "B": []}
    current = threading.local()

    def record(req: Any, round_no: int = 0, retries: int = 0) -> None:
        assert round_no == 1 and retries == 0
        enqueued[current.name].append(str(req.message_id))

    monkeypatch.setattr(maintenance, "route", record)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def drain(name: str) -> None:
        current.name = name
        try:
            start.wait()
            while maintenance.drain_deferred_once(limit=25, claimer=name):
                pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(n,)) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert not errors
    a, b = set(enqueued["A"]), set(enqueued["B"])
    assert len(enqueued["A"]) + len(enqueued["B"]) == 1000  # no row enqueued twice...
    assert a.isdisjoint(b)
    assert a | b == {str(i) for i in ids}  # ...and none left behind
    with transaction() as conn:
        claims = dict(conn.execute(select(deferral.deferred.c.message_id,
                                          deferral.deferred.c.claimed_by)).all())
        states = {s for (s,) in conn.execute(select(store.dispatches.c.state)).all()}
    assert {claims[uuid.UUID(m)] for m in a} <= {"A"} and {claims[uuid.UUID(m)] for m in b} <= {"B"}
    assert states == {"queued"}
    print(f"\ndrain race: A enqueued {len(a)}, B enqueued {len(b)}, overlap 0")


@pytest.mark.usefixtures("worker", "clean")
def test_nothing_lost_or_sent_twice_when_a_drain_dies_after_its_commit(sandbox, monkeypatch):
    """The drain's claim committed, then its process died before enqueueing: the rows are
    `queued` and stale, so the outbox sweep replays them; two sweeps at once replay each once."""
    from tasks import maintenance
    from tasks.dispatch import route

    ids = _park_many(20, utcnow() - timedelta(seconds=1))
    monkeypatch.setattr(maintenance, "route", lambda *a, **k: None)  # the crash: nothing enqueued
    assert len(maintenance.drain_deferred_once()) == 20
    later = utcnow() + timedelta(seconds=get_settings().comms_replay_after + 1)
    replays: list[tuple[Any, int, int]] = []
    lock = threading.Lock()

    def record(req: Any, round_no: int = 0, retries: int = 0) -> None:
        with lock:
            replays.append((req, round_no, retries))

    monkeypatch.setattr(maintenance, "route", record)
    start = threading.Barrier(2)

    def sweep() -> None:
        start.wait()
        while maintenance.sweep_outbox_once(now=later, limit=3).replayed:
            pass

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert sorted(str(r.message_id) for r, _, _ in replays) == sorted(str(i) for i in ids)
    assert {(n, k) for _, n, k in replays} == {(1, 0)}  # the lost round, from its first try
    for req, round_no, retries in replays:  # the broker delivers them this time
        route(req, round_no=round_no, retries=retries)
    for mid in ids:
        assert terminal(mid)["outcome"] == "SENT"
        assert store.get_dispatch(mid)["replays"] == 1  # type: ignore[index]
    assert len(sandbox.requests("slack")) == 20
