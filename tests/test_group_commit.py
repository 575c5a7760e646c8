"""Group commit: threads writing at the same moment share one statement, and each still gets its
own answer only after its own row is committed. The primitive first (plain callables, batches
forced by holding the leader), then the store's batched writes on the real PostgreSQL."""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError

from tests.conftest import wait_for
from tests.together import all_at_once
from worker.store.group_commit import GroupCommit


@dataclass(frozen=True)
class Raised:
    """What a caller got when the call raised (a returned exception would be the value itself)."""

    error: BaseException


def raised(result: Any, kind: type[BaseException]) -> bool:
    return isinstance(result, Raised) and isinstance(result.error, kind)


class Held:
    """A GroupCommit whose first batch waits until `release()`, so later calls queue up behind it
    and are written together in the next batch."""

    def __init__(self, write_many: Callable[[Sequence[Any]], Sequence[Any]],
                 write_one: Callable[[Any], Any], *, key: Callable[[Any], Any] = lambda x: x,
                 max_batch: int = 256, delay: Callable[[], float] = lambda: 0.0,
                 load_memory: float = 1.0) -> None:
        self.batches: list[list[Any]] = []
        self.gate = threading.Event()

        def held_write_many(items: Sequence[Any]) -> Sequence[Any]:
            if not self.batches:
                self.gate.wait(10)
            self.batches.append(list(items))
            return write_many(items)

        self.group = GroupCommit(held_write_many, write_one, key=key, max_batch=max_batch,
                                 delay=delay, load_memory=load_memory)
        self.results: dict[Any, Any] = {}

    def call(self, key: Any, item: Any) -> threading.Thread:
        def run() -> None:
            try:
                self.results[key] = self.group(item)
            except BaseException as exc:  # the test inspects what each caller got
                self.results[key] = Raised(exc)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def queued(self, n: int) -> bool:
        return len(self.group._queue) == n

    def run_together(self, first: Any, items: dict[Any, Any]) -> dict[Any, Any]:
        """`first` alone in the held batch, then `items` queued behind it, written together."""
        threads = [self.call("first", first)]
        wait_for(lambda: bool(self.batches) or self.group._writing, timeout=5)
        for queued, (key, item) in enumerate(items.items(), 1):  # queued in this order
            threads.append(self.call(key, item))
            wait_for(functools.partial(self.queued, queued), timeout=5)
        self.gate.set()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        return self.results


def in_one_batch(write_many: Callable[[Sequence[Any]], Sequence[Any]],
                 write_one: Callable[[Any], Any], key: Callable[[Any], Any],
                 items: list[Any]) -> list[Any]:
    """What each caller of `items` gets: the first alone, then the rest queued in order and
    written as one batch."""
    results = Held(write_many, write_one, key=key).run_together(
        items[0], dict(enumerate(items[1:], 1)))
    return [results["first"], *(results[n] for n in range(1, len(items)))]


# -- the primitive ------------------------------------------------------------------------------


def test_callers_queued_behind_a_write_share_the_next_one_and_get_their_own_results() -> None:
    held = Held(lambda items: [x * 10 for x in items], lambda x: -1)
    results = held.run_together(0, {k: k for k in range(1, 6)})
    assert held.batches[0] == [0]
    assert sorted(held.batches[1]) == [1, 2, 3, 4, 5]
    assert len(held.batches) == 2
    assert results == {"first": 0, 1: 10, 2: 20, 3: 30, 4: 40, 5: 50}


def test_a_row_the_batch_cannot_take_fails_only_its_own_caller() -> None:
    def write_many(items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise ValueError("13 refused")
        return list(items)

    def write_one(x: int) -> int:
        return write_many([x])[0]

    held = Held(write_many, write_one)
    results = held.run_together(0, {1: 1, 13: 13, 2: 2})
    assert results["first"] == 0 and results[1] == 1 and results[2] == 2
    assert raised(results[13], ValueError)


def test_an_unreachable_database_fails_the_whole_batch_without_writing_rows_one_by_one() -> None:
    written_alone: list[int] = []

    def write_many(items: Sequence[int]) -> list[int]:
        if len(items) > 1:
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return list(items)

    held = Held(write_many, written_alone.append)
    results = held.run_together(0, {1: 1, 2: 2})
    assert results["first"] == 0
    assert raised(results[1], OperationalError) and raised(results[2], OperationalError)
    assert written_alone == []


def test_a_batch_is_at_most_max_batch_and_every_caller_is_answered() -> None:
    held = Held(lambda items: list(items), lambda x: x, max_batch=2)
    results = held.run_together(0, {k: k for k in range(1, 6)})
    assert [len(b) for b in held.batches] == [1, 2, 2, 1]
    expected: dict[Any, int] = {"first": 0, **{k: k for k in range(1, 6)}}
    assert results == expected


def test_an_error_returned_for_one_item_is_raised_to_that_caller_and_nothing_runs_again() -> None:
    written_alone: list[int] = []

    def write_many(items: Sequence[int]) -> list[int | Exception]:
        return [KeyError(x) if x == 2 else x for x in items]

    def write_one(x: int) -> int:
        written_alone.append(x)
        return x

    held = Held(write_many, write_one)
    results = held.run_together(0, {1: 1, 2: 2, 3: 3})
    assert results["first"] == 0 and results[1] == 1 and results[3] == 3
    assert raised(results[2], KeyError)
    assert written_alone == []


def test_an_interrupted_batch_answers_its_callers_instead_of_leaving_them_waiting() -> None:
    class Interrupted(BaseException):
        pass

    def write_many(items: Sequence[int]) -> list[int]:
        if len(items) > 1:
            raise Interrupted
        return list(items)

    held = Held(write_many, lambda x: x)
    results = held.run_together(0, {1: 1, 2: 2})
    leader = [r for r in (results[1], results[2]) if raised(r, Interrupted)]
    follower = [r for r in (results[1], results[2]) if raised(r, RuntimeError)]
    assert len(leader) == 1 and len(follower) == 1
    assert "interrupted" in str(follower[0].error)
    # The group still works afterwards.
    assert held.group(7) == 7


def test_under_load_a_leader_holds_its_turn_so_more_writes_join_and_alone_it_does_not() -> None:
    paused = threading.Event()
    pauses: list[float] = []

    def delay() -> float:
        pauses.append(0.5)
        paused.set()
        return 0.5

    held = Held(lambda items: list(items), lambda x: x, delay=delay, load_memory=0.3)
    held.run_together(1, {2: 2, 3: 3})
    assert held.batches == [[1], [2, 3]]
    assert pauses == []  # no batch had company before [2, 3]: its leader did not wait

    # After company, the next leader pauses, and a write arriving meanwhile joins its batch.
    leader = held.call("leader", 4)
    assert paused.wait(5)
    joiner = held.call("joiner", 5)
    leader.join(10)
    joiner.join(10)
    assert held.batches[-1] == [4, 5] and len(pauses) == 1
    assert held.results["leader"] == 4 and held.results["joiner"] == 5

    # Company a moment ago: a lone write still waits. Past `load_memory` without company: not.
    assert held.group(6) == 6 and held.batches[-1] == [6] and len(pauses) == 2
    time.sleep(0.4)
    assert held.group(7) == 7 and len(pauses) == 2


# -- the store's batched writes on PostgreSQL ---------------------------------------------------


@pytest.fixture(params=[True, False], ids=["group-commit", "one-by-one"])
def grouped_or_not(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """The test runs with group commit and without: the answers must be the same."""
    from config.settings import get_settings

    monkeypatch.setattr(get_settings(), "comms_db_group_commit", request.param)
    return bool(request.param)


def accept_binds(mid: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    from worker.store.models import utcnow

    now = utcnow()
    binds = {
        "b_mid": mid, "b_channel": "slack", "b_recipient": "#ops", "b_priority": "high",
        "b_signal_type": "outage", "b_severity": "critical", "b_parent": None,
        "b_request": {"channel": "slack", "text": f"m {mid}"}, "b_state": "sending",
        "b_holder": f"task-{mid}:0", "b_lease_until": now + timedelta(seconds=60),
        "b_attempts": 1, "b_now": now,
    }
    binds.update(overrides)
    return binds


def finish_binds(mid: uuid.UUID, outcome: str = "SENT", response_id: str | None = "r-1",
                 error: str | None = None, retry_count: int = 0) -> dict[str, Any]:
    from worker.store.dispatches import STATE_FOR
    from worker.store.models import utcnow

    now = utcnow()
    return {"b_mid": mid, "b_state": STATE_FOR[outcome], "b_response_id": response_id,
            "b_error": error, "b_now": now, "l_outcome": outcome, "l_dispatched_at": now,
            "l_response_id": response_id, "l_retry_count": retry_count, "l_error": error}


def rows(sql: str, **params: Any) -> list[tuple[Any, ...]]:
    from worker.store.db import get_engine

    with get_engine().connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


@pytest.mark.usefixtures("clean")
def test_accepting_many_records_each_request_once_and_reports_repeats() -> None:
    from worker.store.dispatches import Accepted, _accept_many, _accept_one, message_key

    old, new, twice = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    _accept_one(accept_binds(old, b_state="queued", b_holder=None, b_lease_until=None,
                             b_attempts=0))
    got = in_one_batch(_accept_many, _accept_one, message_key, [
        accept_binds(new), accept_binds(old), accept_binds(twice),
        accept_binds(twice, b_holder="redelivered:0")])
    assert got == [Accepted(True, "sending"), Accepted(False, "queued"),
                   Accepted(True, "sending"), Accepted(False, "sending")]
    stored = rows("SELECT message_id, channel, recipient, priority, signal_type, severity, "
                  "state, claimed_by, attempts, replays, parkings, request::text "
                  "FROM dispatches WHERE message_id = :m", m=new)
    assert stored == [(new, "slack", "#ops", "high", "outage", "critical", "sending",
                       f"task-{new}:0", 1, 0, 0, f'{{"channel": "slack", "text": "m {new}"}}')]
    assert rows("SELECT claimed_by FROM dispatches WHERE message_id = :m", m=twice) == [
        (f"task-{twice}:0",)]


@pytest.mark.usefixtures("clean")
def test_finishing_many_writes_one_terminal_row_each_and_fills_only_missing_ones() -> None:
    from worker.store.dispatches import _accept_many, _finish_many, _finish_one, message_key

    sent, failed, done_before, twice = (uuid.uuid4() for _ in range(4))
    _accept_many([accept_binds(m) for m in (sent, failed, done_before, twice)])
    assert _finish_one(finish_binds(done_before, response_id="first")) is True

    got = in_one_batch(_finish_many, _finish_one, message_key, [
        finish_binds(sent, response_id="ts-1", retry_count=2),
        finish_binds(failed, "FAILED", response_id=None, error="HTTP 400: bad"),
        finish_binds(done_before, response_id="second"),
        finish_binds(twice, response_id="a"),
        finish_binds(twice, response_id="b"),
    ])
    assert got == [True, True, False, True, False]
    log = rows("SELECT message_id, outcome, response_id, retry_count, error, channel, recipient, "
               "signal_type, severity FROM comms_log ORDER BY id")
    assert sorted(log, key=lambda r: str(r[0])) == sorted([
        (done_before, "SENT", "first", 0, None, "slack", "#ops", "outage", "critical"),
        (sent, "SENT", "ts-1", 2, None, "slack", "#ops", "outage", "critical"),
        (failed, "FAILED", None, 0, "HTTP 400: bad", "slack", "#ops", "outage", "critical"),
        (twice, "SENT", "a", 0, None, "slack", "#ops", "outage", "critical"),
    ], key=lambda r: str(r[0]))
    states = {r[0]: r[1] for r in rows("SELECT message_id, state FROM dispatches")}
    assert states == {sent: "sent", failed: "failed", done_before: "sent", twice: "sent"}
    assert rows("SELECT claimed_by, lease_until FROM dispatches WHERE message_id = :m",
                m=sent) == [(None, None)]


@pytest.mark.usefixtures("clean")
def test_a_terminal_state_without_its_row_gets_the_row_in_a_batch_too() -> None:
    from worker.store.dispatches import _accept_many, _finish_many

    mid = uuid.uuid4()
    _accept_many([accept_binds(mid)])
    from worker.store.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("UPDATE dispatches SET state = 'sent' WHERE message_id = :m"),
                     {"m": mid})
    assert _finish_many([finish_binds(mid, response_id="late")]) == [True]
    assert rows("SELECT outcome, response_id FROM comms_log WHERE message_id = :m", m=mid) == [
        ("SENT", "late")]


@pytest.mark.usefixtures("clean")
def test_a_write_after_the_commit_that_fails_leaves_the_batch_answered_as_written() -> None:
    from worker.store.dispatches import _accept_many, _finish_many, _finish_one, message_key

    sent, failed = uuid.uuid4(), uuid.uuid4()
    _accept_many([accept_binds(sent), accept_binds(failed)])
    held = Held(_finish_many, _finish_one, key=message_key)
    results = held.run_together(finish_binds(sent), {
        failed: finish_binds(failed, "FAILED", error="HTTP 500"),
        "again": finish_binds(failed, "FAILED", error="HTTP 500"),
        "never accepted": finish_binds(uuid.uuid4()),  # no dispatch row: the lone write raises
    })
    # True, not False: told "not written now", a failure's caller would skip its fallback.
    assert results["first"] is True and results[failed] is True and results["again"] is False
    assert raised(results["never accepted"], AttributeError)
    assert sorted(r[0] for r in rows("SELECT outcome FROM comms_log")) == ["FAILED", "SENT"]


@pytest.mark.usefixtures("clean")
def test_a_request_the_database_refuses_fails_alone_and_its_batch_is_recorded() -> None:
    from worker.store.dispatches import Accepted, _accept_many, _accept_one, message_key

    good, bad, also_good, first = (uuid.uuid4() for _ in range(4))
    held = Held(_accept_many, _accept_one, key=message_key)
    results = held.run_together(accept_binds(first), {
        good: accept_binds(good),
        bad: accept_binds(bad, b_priority="far-too-long-for-the-column"),
        also_good: accept_binds(also_good),
    })
    assert len(held.batches[1]) == 3  # written together, refused together, then one by one
    assert results[good] == results[also_good] == results["first"] == Accepted(True, "sending")
    assert raised(results[bad], DataError)
    accepted = {r[0] for r in rows("SELECT message_id FROM dispatches")}
    assert accepted == {first, good, also_good}


@pytest.mark.usefixtures("clean", "grouped_or_not")
def test_threads_accepting_and_finishing_at_once_each_get_exactly_their_rows() -> None:
    from worker.store import dispatches as store

    mids = [uuid.uuid4() for _ in range(48)]
    answers: dict[uuid.UUID, tuple[Any, ...]] = {}

    def one_message(mid: uuid.UUID) -> None:
        first = store.accept({"n": str(mid)}, message_id=mid, channel="slack", recipient="#ops",
                             priority="high", signal_type=None, severity=None,
                             parent_message_id=None, claim_for=f"t-{mid}:0", lease_seconds=60)
        again = store.accept({"n": str(mid)}, message_id=mid, channel="slack", recipient="#ops",
                             priority="high", signal_type=None, severity=None,
                             parent_message_id=None, claim_for=f"u-{mid}:0", lease_seconds=60)
        written = store.finish(mid, "SENT", response_id=f"r-{mid}")
        repeated = store.finish(mid, "SENT", response_id="other")
        answers[mid] = (first, again, written, repeated)

    all_at_once(one_message, [(m,) for m in mids])
    expected = (store.Accepted(True, "sending"), store.Accepted(False, "sending"), True, False)
    assert answers == dict.fromkeys(mids, expected)
    log = rows("SELECT message_id, outcome, response_id FROM comms_log")
    assert sorted(log, key=lambda r: str(r[0])) == sorted(
        [(m, "SENT", f"r-{m}") for m in mids], key=lambda r: str(r[0]))


def contacts_table() -> list[tuple[Any, ...]]:
    return rows("SELECT email, name, phone, timezone, sms_opt_out, push_enabled, "
                "email_unsubscribed, updated_at FROM contacts ORDER BY email")


def tokens_table() -> list[tuple[Any, ...]]:
    return rows("SELECT token, email, created_at FROM fcm_tokens ORDER BY token")


@pytest.mark.usefixtures("clean")
def test_merging_profiles_in_one_batch_leaves_what_merging_them_one_by_one_leaves() -> None:
    from channels.contacts import Contact
    from worker.store import contacts
    from worker.store.contacts import _Merge, _merge_many, _merge_one
    from worker.store.db import get_engine
    from worker.store.models import utcnow

    def seed() -> None:
        with get_engine().begin() as conn:
            conn.execute(text("DELETE FROM fcm_tokens"))
            conn.execute(text("DELETE FROM contacts"))
        contacts.set_flags("ann@example.com", sms_opt_out=True)
        _merge_one(_Merge("ann@example.com", {"phone": "+15550100", "name": "Ann"}, None,
                          utcnow() - timedelta(days=1)))
        _merge_one(_Merge("dan@example.com", {"name": "Dan"}, None, yesterday))

    yesterday = utcnow() - timedelta(days=1)
    at = utcnow()
    merges = [
        _Merge("ann@example.com", {}, None, at),
        _Merge("bob@example.com", {"name": "Bob", "phone": "+15550111"}, "tok-1", at),
        _Merge("ann@example.com", {"timezone": "Asia/Tokyo"}, "tok-2",
               at + timedelta(seconds=1)),
        _Merge("bob@example.com", {}, "tok-3", at + timedelta(seconds=2)),
        _Merge("cat@example.com", {}, None, at),
        _Merge("dan@example.com", {}, None, at),
    ]
    seed()
    alone = [_merge_one(m) for m in merges]
    alone_state = (contacts_table(), tokens_table())
    seed()
    together = in_one_batch(_merge_many, _merge_one, lambda m: m.email, merges)

    assert together == alone
    assert (contacts_table(), tokens_table()) == alone_state
    # And what both left is what the rules say: consent kept, fields filled, newest token first.
    assert together[2] == Contact(email="ann@example.com", name="Ann", phone="+15550100",
                                  timezone="Asia/Tokyo", sms_opt_out=True,
                                  fcm_tokens=("tok-2",))
    assert together[3] == Contact(email="bob@example.com", name="Bob", phone="+15550111",
                                  fcm_tokens=("tok-3", "tok-1"))
    assert together[4] == Contact(email="cat@example.com")
    updated = {r[0]: r[-1] for r in contacts_table()}
    assert updated["dan@example.com"] == yesterday  # a merge without fields only ensures
    assert updated["ann@example.com"] == at + timedelta(seconds=1)


@pytest.mark.usefixtures("clean", "grouped_or_not")
def test_threads_merging_the_same_recipients_at_once_each_see_their_own_token() -> None:
    from worker.store import contacts

    recipients = [f"r{n}@example.com" for n in range(4)]
    calls = [(recipients[n % 4], f"tok-{n}") for n in range(40)]
    seen: dict[str, Any] = {}

    def merge(email: str, token: str) -> None:
        seen[token] = contacts.merge_profile(email, {"fcm_token": token, "name": email[:2]})

    all_at_once(merge, calls)
    assert {tok: (c.email, c.name, tok in c.fcm_tokens) for tok, c in seen.items()} == {
        tok: (email, email[:2], True) for email, tok in calls}
    assert tokens_table() and sorted((t[0], t[1]) for t in tokens_table()) == sorted(
        (tok, email) for email, tok in calls)


@pytest.mark.usefixtures("clean")
def test_an_import_locks_contacts_in_the_order_merges_do_so_neither_deadlocks() -> None:
    """A merge batch holds `a@` and wants `z@`; an import of [z@, a@] that took z@ first would
    hold it while waiting for a@: a deadlock, and PostgreSQL aborts one of them."""
    from worker.store import contacts
    from worker.store.contacts import ImportRow
    from worker.store.db import get_engine

    for email in ("a@example.com", "z@example.com"):
        contacts.set_flags(email, sms_opt_out=False)
    imported: list[Any] = []

    def import_z_then_a() -> None:
        try:
            imported.append(contacts.import_rows([ImportRow("z@example.com", name="Zed"),
                                                  ImportRow("a@example.com", name="Ann")]))
        except Exception as exc:  # the deadlock victim, if it is the import
            imported.append(exc)

    merge = get_engine().connect()
    importer = threading.Thread(target=import_z_then_a)
    try:
        with merge.begin():
            merge.execute(text("SELECT 1 FROM contacts WHERE email = 'a@example.com' FOR UPDATE"))
            importer.start()
            # The import is now waiting for a@ (and, written in file order, holds z@).
            wait_for(lambda: rows("SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] > 0,
                     timeout=10)
            merge.execute(text("UPDATE contacts SET timezone = 'UTC' "
                               "WHERE email = 'z@example.com'"))
        importer.join(20)
    finally:
        merge.close()
    assert imported == [2]
    assert rows("SELECT email, name, timezone FROM contacts ORDER BY email") == [
        ("a@example.com", "Ann", None), ("z@example.com", "Zed", "UTC")]
