"""Group commit: threads that make the same write at the same moment share one statement and one
transaction, each still returning only once its own row is committed.

A worker runs dozens of threads; under load many of them are waiting to write the same kind of row.
Executing a statement costs the client far more CPU than a row in it (accept and finish of one
message: 0.75 ms alone, 0.18 ms in batches of 5, 0.08 ms in batches of 20; docs/scaling.md), so
the first thread to arrive (the leader) writes every row queued behind it in one statement, and
the others wait for its commit. Nobody returns before their row is committed,
so a task is still acknowledged only after its own write: a crash loses nothing a per-row write
would not have lost, and redelivery finds what was committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from config.settings import get_settings
from worker.store.db import get_engine, is_connection_problem

Item = TypeVar("Item")
Result = TypeVar("Result")

_UNSET = object()
#: Seconds a batch with company keeps the delay on: under steady load batches keep having company,
#: and a lone write in between still waits; a second without company and nobody waits.
LOAD_MEMORY = 1.0


def enabled() -> bool:
    """Group commit is on (COMMS_DB_GROUP_COMMIT) and the database is PostgreSQL: the batched
    statements are PostgreSQL's (arrays, unnest); SQLite serialises its writers anyway."""
    return get_settings().comms_db_group_commit and get_engine().dialect.name == "postgresql"


def configured_delay() -> float:
    """COMMS_DB_GROUP_COMMIT_DELAY, read at each batch (tests change it)."""
    return get_settings().comms_db_group_commit_delay


def alone(write_one: Callable[[Item], Result], item: Item) -> Result | Exception:
    """For a `write_many` that writes an item alone after its batch's commit: the item's error is
    returned as its result, for its caller alone."""
    try:
        return write_one(item)
    except Exception as exc:
        return exc


class _Slot(Generic[Item]):
    __slots__ = ("error", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: object = _UNSET
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.result is not _UNSET or self.error is not None


class GroupCommit(Generic[Item, Result]):
    """Call `write_many` with every item submitted while the previous batch was being written.

    `write_many` gets one item per `key` (the row it writes), in key order: two processes'
    batches then lock shared rows in the same order and wait for each other instead of
    deadlocking, and no statement meets its own key twice. An item whose key is already in the
    batch is written alone with `write_one` after the commit, so its caller gets what a lone
    write coming second would get.

    `write_many(items)` writes them all in one transaction and returns one result per item, in
    order; an exception in place of a result is raised to that item's caller alone (for work
    done per item after the commit, which must not make the whole batch run again). When
    `write_many` raises for a reason other than an unreachable database (a row the database
    refuses), each item is written alone with `write_one`, so one bad row fails only its caller.
    An unreachable database fails the whole batch; each caller then retries as it would have.

    `delay()` is how long a leader holds its turn before taking the queue, so that more writes
    join it, while there is load: a batch had company (more than one item) within the last
    `load_memory` seconds (PostgreSQL's commit_delay with commit_siblings). Under light load
    nobody waits, so it costs no latency there.
    """

    def __init__(
        self,
        write_many: Callable[[Sequence[Item]], Sequence[Result | Exception]],
        write_one: Callable[[Item], Result],
        *,
        key: Callable[[Item], Any],
        max_batch: int = 256,
        delay: Callable[[], float] = lambda: 0.0,
        load_memory: float = LOAD_MEMORY,
    ) -> None:
        self._write_many = write_many
        self._write_one = write_one
        self._key = key
        self._max_batch = max_batch
        self._delay = delay
        self._load_memory = load_memory
        self._loaded_until = 0.0  # monotonic time until which a batch had company recently
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._queue: list[_Slot[Item]] = []
        self._writing = False

    def __call__(self, item: Item) -> Result:
        slot = _Slot(item)
        with self._lock:
            self._queue.append(slot)
        while not slot.done:
            with self._lock:
                while self._writing and not slot.done:
                    self._turn.wait()
                if slot.done:
                    break
                # No batch in flight: lead one, with what is queued (this slot may be past the
                # batch's end, then it leads again).
                self._writing = True
                if len(self._queue) < self._max_batch and time.monotonic() < self._loaded_until:
                    pause = self._delay()
                    if pause > 0:
                        self._turn.wait(pause)  # the lock is free meanwhile: others queue up
                batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
                if len(batch) > 1:
                    self._loaded_until = time.monotonic() + self._load_memory
            try:
                self._write(batch)
            finally:
                with self._lock:
                    for s in batch:  # interrupted (BaseException): nobody waits forever
                        if not s.done:
                            s.error = RuntimeError("the group write was interrupted")
                    self._writing = False
                    self._turn.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _write(self, batch: list[_Slot[Item]]) -> None:
        firsts: dict[Any, _Slot[Item]] = {}
        repeats: list[_Slot[Item]] = []
        for s in batch:
            key = self._key(s.item)
            if key in firsts:
                repeats.append(s)
            else:
                firsts[key] = s
        unique = [firsts[key] for key in sorted(firsts)]
        try:
            results = self._write_many([s.item for s in unique])
        except Exception as exc:
            if len(batch) == 1 or is_connection_problem(exc):
                for s in batch:
                    s.error = exc
                return
            for s in batch:  # find the row the database refused; the others succeed alone
                try:
                    s.result = self._write_one(s.item)
                except Exception as one_exc:
                    s.error = one_exc
            return
        for s, result in zip(unique, results, strict=True):
            _settle(s, result)
        for s in repeats:  # after the commit, as a lone write coming second
            _settle(s, alone(self._write_one, s.item))


def _settle(slot: _Slot[Item], result: object) -> None:
    if isinstance(result, Exception):
        slot.error = result
    else:
        slot.result = result
