"""Nothing lost when processes or the broker die: real worker and beat processes, real Redis,
real PostgreSQL, the sandbox. Figures are printed (run with -s to see them)."""

from __future__ import annotations

import collections
import functools
import re
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from tasks.dispatch import derived_id
from tests.conftest import wait_for
from tests.durability.conftest import wait_until
from worker.sandbox import Reply
from worker.store import dispatches as store
from worker.store.db import transaction
from worker.store.models import TERMINAL_OUTCOMES

OPS = ("slack", "zendesk", "pagerduty", "jira")


def ops_request(i: int) -> dict[str, Any]:
    """Message `i`, its channel by turn; the tag `msg-i` and a recipient of its own (PagerDuty's
    dedup_key is recipient-signal-date) let the sandbox's calls be counted per message."""
    channel = OPS[i % len(OPS)]
    tag = f"msg-{i}"
    payloads = {
        "slack": {"formatted_message": tag, "fallback_text": tag},
        "zendesk": {"subject": tag, "body": f"{tag} body"},
        "pagerduty": {"summary": tag},
        "jira": {"project_key": "OPS", "issue_type": "Incident", "summary": tag,
                 "description": f"{tag} description"},
    }
    return {"recipient": f"user{i}@example.com", "channel": channel, "priority": "HIGH",
            "message_id": str(uuid.uuid4()), "signal_type": "network_outage",
            "severity": "major", "message_payload": payloads[channel]}


def terminal_counts(ids: list[str]) -> dict[str, int]:
    """message_id -> number of terminal comms_log rows."""
    with transaction() as conn:
        rows = conn.execute(
            select(store.comms_log.c.message_id, func.count())
            .where(store.comms_log.c.message_id.in_([uuid.UUID(i) for i in ids]),
                   store.comms_log.c.outcome.in_(TERMINAL_OUTCOMES))
            .group_by(store.comms_log.c.message_id)
        ).all()
    return {str(mid): int(n) for mid, n in rows}


def calls_per_message(sandbox: Any) -> dict[str, collections.Counter[str]]:
    """vendor -> Counter(tag or key -> calls)."""
    out: dict[str, collections.Counter[str]] = {v: collections.Counter() for v in OPS}
    for call in sandbox.requests():
        if call.vendor == "slack":
            out["slack"][call.json()["text"]] += 1
        elif call.vendor == "jira":
            out["jira"][call.json()["fields"]["summary"]] += 1
        elif call.vendor == "zendesk":
            out["zendesk"][call.headers["idempotency-key"]] += 1
        elif call.vendor == "pagerduty":
            out["pagerduty"][call.json()["dedup_key"]] += 1
    return out


def _calls_at_least(sandbox: Any, n: int) -> bool:
    return len(sandbox.requests()) >= n


@pytest.mark.slow
def test_one_terminal_row_each_when_the_worker_is_sigkilled_twice_mid_run(cluster, sandbox):
    sandbox.latency = 0.2
    c = cluster(COMMS_REPLAY_AFTER=3)
    worker = c.worker().start()
    c.beat().start(ready=None)
    requests = [ops_request(i) for i in range(300)]
    ids = [r["message_id"] for r in requests]
    started = time.monotonic()
    try:
        c.send(requests)
        kills = []
        for at_least in (40, 140):
            wait_for(functools.partial(_calls_at_least, sandbox, at_least), timeout=60)
            in_flight = len(sandbox.requests())
            worker.kill()
            kills.append(in_flight)
            worker.start()
        restarted = time.monotonic()
        resent: list[str] | None = None

        def all_terminal() -> bool:
            # The producer's side of "nothing lost" (worker.producer): a message popped from Redis
            # by a worker killed before kombu recorded it as unacked is gone from the broker. What
            # no worker accepted well after the visibility timeout (10 s) is sent again.
            nonlocal resent
            if resent is None and time.monotonic() - restarted > 20:
                resent = c.resend_unaccepted(requests)
            return len(terminal_counts(ids)) == 300

        wait_for(all_terminal, timeout=120, interval=0.5)
        elapsed = time.monotonic() - started
        time.sleep(12)  # the killed workers' messages come back after the visibility timeout
    finally:
        sandbox.latency = 0.0

    counts = terminal_counts(ids)
    assert set(counts) == set(ids) and set(counts.values()) == {1}
    outcomes = collections.Counter(store.terminal_row(uuid.UUID(i))["outcome"]  # type: ignore[index]
                                   for i in ids)
    assert outcomes == {"SENT": 300}
    per = calls_per_message(sandbox)
    duplicates = {v: sum(n - 1 for n in per[v].values()) for v in OPS}
    assert all(len(per[v]) == 75 for v in OPS)  # every message reached its vendor
    # Keys make the vendor's effect exactly once: one ticket per message, one alert per key.
    assert len(sandbox.state["zendesk.tickets"]) == 75
    assert len(sandbox.state["pagerduty.alerts"]) == 75
    replays = sum(store.get_dispatch(uuid.UUID(i))["replays"] for i in ids)  # type: ignore[index]
    print(f"\nSIGKILL x2 (at {kills[0]} and {kills[1]} vendor calls): 300/300 terminal in "
          f"{elapsed:.1f}s; duplicate vendor calls {duplicates} (total "
          f"{sum(duplicates.values())}); zendesk tickets 75/75, pagerduty alerts 75/75; "
          f"replays {replays}; re-sent by the producer: {resent or []}")


@pytest.mark.slow
def test_all_reach_a_terminal_row_within_replay_time_when_redis_is_flushed(
        cluster, sandbox, broker):
    replay_after, every = 2.0, 1.0
    # COMMS_INLINE_SLOTS=0: every message goes through its channel queue (as past the bulkhead).
    c = cluster(COMMS_REPLAY_AFTER=replay_after, COMMS_DRAIN_EVERY=every, COMMS_INLINE_SLOTS=0)
    # Only comms.dispatch runs: 200 dispatches are accepted and their channel tasks wait in Redis.
    acceptor = c.worker("acceptor", queues="celery").start()
    requests = [ops_request(i) for i in range(200)]
    ids = [r["message_id"] for r in requests]
    c.send(requests)

    def accepted() -> bool:
        with transaction() as conn:
            return conn.execute(select(func.count()).select_from(store.dispatches)).scalar() == 200

    wait_for(accepted, timeout=60, interval=0.2)
    acceptor.stop()
    queued = sum(broker.llen(q) for q in OPS)
    assert queued == 200
    broker.flushdb()  # Redis restarted without persistence: every queued task is gone
    flushed = time.monotonic()
    c.worker().start()
    c.beat().start(ready=None)

    took = wait_until(lambda: len(terminal_counts(ids)) == 200, timeout=60, interval=0.5)

    since_flush = time.monotonic() - flushed
    counts = terminal_counts(ids)
    assert set(counts.values()) == {1}
    per = calls_per_message(sandbox)
    assert sum(sum(v.values()) for v in per.values()) == 200  # each sent once
    # Documented: replayed within COMMS_REPLAY_AFTER + one sweep period of the last sign of life,
    # then sent; 200 sends at 8 threads and worker start-up fit in the margin.
    assert since_flush < replay_after + every + 20
    replays = collections.Counter(store.get_dispatch(uuid.UUID(i))["replays"]  # type: ignore[index]
                                  for i in ids)
    print(f"\nRedis flushed with 200 queued: all 200 terminal {since_flush:.1f}s after the flush "
          f"({took:.1f}s after worker start; COMMS_REPLAY_AFTER={replay_after:g}s, "
          f"sweep every {every:g}s); dispatches by replays {dict(replays)}")


@pytest.mark.slow
@pytest.mark.parametrize("inline_slots", [8, 0], ids=["first-attempt-in-dispatch", "channel-task"])
def test_sent_once_more_by_the_retry_when_a_pool_child_is_killed_mid_send(
        cluster, sandbox, inline_slots):
    """prefork: the child dies mid-send, Celery retries (task_retry_on_worker_lost), the main
    process releases the dead try's lease, and the retry sends at once, not after the lease.
    Both where the first attempt runs: inside comms.dispatch, or in the channel task."""
    import os
    import signal

    c = cluster(COMMS_CLAIM_LEASE=120, COMMS_REPLAY_AFTER=600, COMMS_INLINE_SLOTS=inline_slots)
    worker = c.worker(pool="prefork", concurrency=1).start()
    request = ops_request(0)  # slack
    sandbox.script("slack", Reply(200, {"ok": True, "channel": "C1", "ts": "1.000001"},
                                  delay=30.0))
    c.send([request])
    mid = uuid.UUID(request["message_id"])
    wait_for(lambda: sandbox.requests("slack"), timeout=30)
    os.kill(_only_child(worker.pid), signal.SIGKILL)
    killed = time.monotonic()

    row = wait_for(lambda: store.terminal_row(mid), timeout=30)

    assert row["outcome"] == "SENT"
    assert time.monotonic() - killed < 20  # well before the 120 s lease would have ended
    assert len(sandbox.requests("slack")) == 2  # the lost call, and the retry's
    assert store.get_dispatch(mid)["attempts"] == 2  # type: ignore[index]
    # The lost try: the channel task's first try, or the dispatch task that made the attempt.
    lost = re.search(rf"released the claim of lost try (\S+):0 of {mid}", worker.output())
    assert lost is not None
    if not inline_slots:
        assert lost.group(1) == derived_id(mid, "slack")


def _only_child(pid: int) -> int:
    from pathlib import Path

    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.usefixtures("worker", "clean")
def test_receipt_written_and_nothing_resent_when_postgres_drops_connections_mid_send(
        producer, sandbox, database):
    """While the vendor is answering, PostgreSQL drops every connection of the worker's pool
    (pg_terminate_backend): recording the send meets a dead connection, is retried on a new one,
    and the message keeps its one SENT row and its one vendor call."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    from tests.conftest import log_outcomes, slack_request

    request = slack_request()
    sandbox.script("slack", Reply(200, {"ok": True, "channel": "C1", "ts": "1.000001"},
                                  delay=1.0))
    producer(request)
    wait_for(lambda: sandbox.requests("slack"), timeout=20)

    admin = create_engine(database, poolclass=NullPool)
    with admin.connect() as conn:
        dropped = conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar_one()
    admin.dispose()
    assert dropped >= 1

    def receipt() -> Any:
        try:
            return store.terminal_row(uuid.UUID(request["message_id"]))
        except OperationalError:  # this process's own pooled connections died too
            return None

    row = wait_for(receipt, timeout=30)

    assert row["outcome"] == "SENT" and row["response_id"] == "1.000001"
    assert len(sandbox.requests("slack")) == 1
    assert log_outcomes(request["message_id"]) == ["SENT"]


@pytest.mark.slow
def test_oncall_fallback_fires_when_pagerduty_dies_on_its_last_attempt(cluster, sandbox):
    """prefork: five 503s, then the pool child is SIGKILLed during the sixth (last) call. No
    retry is left, so the task fails with WorkerLostError: the FAILED row and the link_error
    fallback to Slack @oncall come from the worker's main process."""
    import os
    import signal

    from worker.sandbox.vendors import transient_error

    c = cluster(COMMS_CLAIM_LEASE=120, COMMS_REPLAY_AFTER=600)
    worker = c.worker(pool="prefork", concurrency=1).start()
    request = ops_request(2)  # pagerduty
    sandbox.script("pagerduty", *[transient_error("pagerduty")] * 5,
                   Reply(202, {"status": "success", "dedup_key": "x"}, delay=30.0))
    c.send([request])
    mid = uuid.UUID(request["message_id"])
    wait_for(lambda: len(sandbox.requests("pagerduty")) == 6, timeout=30)
    os.kill(_only_child(worker.pid), signal.SIGKILL)

    row = wait_for(lambda: store.terminal_row(mid), timeout=30)
    fallback = wait_for(lambda: store.terminal_row(uuid.UUID(derived_id(mid, "fallback"))),
                        timeout=30)

    assert row["outcome"] == "FAILED"
    assert "WorkerLostError" in row["error"]
    assert len(sandbox.requests("pagerduty")) == 6
    assert fallback["outcome"] == "SENT" and fallback["channel"] == "slack"
    assert str(fallback["parent_message_id"]) == request["message_id"]
    [post] = sandbox.requests("slack")
    assert post.json()["channel"] == "#oncall"


@pytest.mark.slow
def test_dispatch_waits_for_postgres_longer_than_its_first_backoffs(cluster, sandbox, database):
    """PostgreSQL is unreachable when comms.dispatch takes the message, for longer than the five
    doubling backoffs (31 s) it once gave up after: the message waits in Redis, retrying every
    30 s, and is accepted and sent once once the database is back."""
    from sqlalchemy.engine import make_url

    from tests.conftest import log_outcomes, slack_request
    from tests.durability.conftest import TcpForwarder

    url = make_url(database)
    db = TcpForwarder((url.host or "127.0.0.1", url.port or 5432))
    c = cluster(COMMS_DATABASE_URL=url.set(host="127.0.0.1", port=db.port).render_as_string(
        hide_password=False))
    worker = c.worker().start()
    request = slack_request()
    try:
        c.send([request])
        time.sleep(36)  # past 1 + 2 + 4 + 8 + 16 s of backoff: the sixth try is already due
        assert sandbox.requests("slack") == []
        db.open()
        row = wait_for(lambda: store.terminal_row(uuid.UUID(request["message_id"])), timeout=45)
    finally:
        db.close()

    assert row["outcome"] == "SENT"
    assert len(sandbox.requests("slack")) == 1
    assert log_outcomes(request["message_id"]) == ["SENT"]
    retries = re.findall(r"comms\.dispatch\[[^\]]+\] retry: Retry in (\d+)s", worker.output())
    assert retries[:6] == ["1", "2", "4", "8", "16", "30"]


@pytest.mark.slow
def test_a_group_commit_batch_killed_mid_transaction_leaves_nothing_and_each_gets_one_row(
        cluster, sandbox, database):
    """Seven receipts in one group-commit batch, the worker SIGKILLed while that batch's
    transaction has written six of them and waits on the seventh: none of the seven is committed,
    and after the restart each message ends with exactly one terminal row.

    The batch is made by holding uncommitted terminal rows (the partial unique index makes the
    worker's insert wait for them): one for the first message to finish, so the other seven queue
    up behind its stuck batch, and one for the last of those seven in key order, the order in
    which the batch writes, so the batch stops after the other six."""
    from sqlalchemy import create_engine, insert, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.pool import NullPool

    from worker.store.models import utcnow

    requests = [ops_request(4 * i) for i in range(8)]  # all Slack
    first, rest = requests[0], sorted(requests[1:], key=lambda r: uuid.UUID(r["message_id"]))
    last = rest[-1]
    sandbox.latency = 0.1
    for r in rest:  # the first message's reply comes at 0.1 s, the others' at 0.6 s
        tag = r["message_payload"]["fallback_text"]
        sandbox.script("slack", Reply(200, {"ok": True, "channel": "C1", "ts": f"9.{tag}"},
                                      delay=0.5), contains=f'"{tag}"')
    admin = create_engine(database, poolclass=NullPool)

    def hold_terminal_row(request: dict[str, Any]) -> Any:
        conn = admin.connect()
        conn.begin()
        conn.execute(insert(store.comms_log).values(
            message_id=uuid.UUID(request["message_id"]), recipient="held", channel="slack",
            outcome="FAILED", dispatched_at=utcnow(), retry_count=0, error="held by the test"))
        return conn

    def locked(request: dict[str, Any]) -> bool:
        """Its dispatch row is being written by a transaction still open (the batch)."""
        with admin.connect() as conn:
            trans = conn.begin()
            try:
                conn.execute(text("SELECT 1 FROM dispatches WHERE message_id = :m "
                                  "FOR UPDATE NOWAIT"), {"m": uuid.UUID(request["message_id"])})
            except OperationalError:
                return True
            finally:
                trans.rollback()
        return False

    def finish_waiting_on_a_lock() -> bool:
        """The batched finish is waiting for a lock (its text starts the same for any batch; the
        rest, with the arrays written in, is cut at track_activity_query_size)."""
        with admin.connect() as conn:
            return bool(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND ltrim(query, E' \\n') LIKE 'WITH i AS (%'"
            )).scalar_one())

    c = cluster(COMMS_REPLAY_AFTER=3)
    worker = c.worker().start()
    c.beat().start(ready=None)
    hold_first, hold_last = hold_terminal_row(first), hold_terminal_row(last)
    try:
        c.send(requests)
        wait_for(lambda: len(sandbox.requests("slack")) == 8, timeout=30)
        wait_for(finish_waiting_on_a_lock, timeout=10)  # the first message's batch, stuck
        time.sleep(2.0)  # the other seven replies (0.6 s) are in: their receipts queue up
        hold_first.rollback()  # the first batch commits; the next takes the seven queued
        wait_for(lambda: all(locked(r) for r in rest[:-1]), timeout=10)
        assert finish_waiting_on_a_lock()  # ... and waits on the last one's held row
        worker.kill()
        hold_last.rollback()  # the killed batch's statement ends; its transaction is lost
        wait_for(lambda: not finish_waiting_on_a_lock(), timeout=10)
        wait_for(lambda: not any(locked(r) for r in rest), timeout=10)

        ids = [r["message_id"] for r in requests]
        assert terminal_counts(ids) == {first["message_id"]: 1}  # none of the seven committed
        assert {store.get_dispatch(uuid.UUID(r["message_id"]))["state"]  # type: ignore[index]
                for r in rest} == {"sending"}

        worker.start()
        wait_for(lambda: len(terminal_counts(ids)) == 8, timeout=90, interval=0.5)
        time.sleep(12)  # the killed worker's messages come back after the visibility timeout
    finally:
        sandbox.latency = 0.0
        for conn in (hold_first, hold_last):
            conn.close()
        admin.dispose()

    assert terminal_counts(ids) == dict.fromkeys(ids, 1)
    rows = {i: store.terminal_row(uuid.UUID(i)) for i in ids}
    assert {r["outcome"] for r in rows.values()} == {"SENT"}  # type: ignore[index]
    assert all(r["recipient"] != "held" for r in rows.values())  # type: ignore[index]
