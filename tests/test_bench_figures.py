"""The benchmark's arithmetic (the runs themselves are `comms bench`, never a unit test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from worker.bench import (
    CLOCK_TICKS,
    Options,
    Phase,
    context_switches,
    environment,
    figures,
    idle_share,
    machine_jiffies,
)


def _phase(messages: int, seconds: float, cpu: dict[str, float], **extra: Any) -> Phase:
    return Phase(messages, seconds, round(messages / seconds, 1), seconds / 2, cpu, **extra)


def test_figures_are_same_run_ratios_and_per_message_costs():
    dispatch = _phase(1000, 4.0, {"workers": 4.0, "bench": 0.5, "sandbox": 0.5, "redis": 0.5,
                                  "postgres": 0.5}, redis_commands=10_000, pg_transactions=2_500,
                      pg_wal_bytes=3_456_789)
    dispatch.context_switches = {"voluntary": 30_000, "involuntary": 12_500}
    ref = {"bare": _phase(1000, 1.0, {"workers": 1.0}), "naive": _phase(1000, 5.0, {}, lost=3)}
    redis = {"used_memory": 1000, "keys_expiring": 0, "keys_without_ttl": 0}
    prod = {"dispatch": dispatch, "latency": {"rate": 125.0, "p50_ms": 6.0, "p99_ms": 16.0},
            "redis_before": redis, "redis_after": {**redis, "used_memory": 1099},
            "vendor_calls": {"messages_called_more_than_once": 0}}
    checks = {"receipts_lost": 0, "duplicate_terminal_rows": 0}

    out = figures(Options(), ref, prod, checks)

    assert out["dispatch_throughput"] == 250.0
    assert out["ratio_vs_bare_celery"] == 0.25
    assert out["ratio_vs_naive"] == 1.25
    assert out["naive_lost"] == 3
    assert out["cpu_seconds_per_1000"] == 4.0
    assert out["machine_cpu_seconds_per_1000"] == 6.0
    assert out["cpu_busy_share"] == round(6.0 / (4.0 * (os.cpu_count() or 1)), 2)
    assert out["redis_commands_per_message"] == 10.0
    assert out["worker_context_switches_per_message"] == 42.5
    assert out["pg_transactions_per_message"] == 2.5
    assert out["pg_wal_bytes_per_message"] == 3457
    assert out["redis_memory_within_10pct"] is True
    assert out["latency_p99_ms"] == 16.0
    assert out["machine_idle_share"] is None


def test_idle_share_is_the_idle_part_of_the_machine_ticks_between_two_readings():
    assert idle_share((100, 1000), (130, 1100)) == 0.3
    assert idle_share(None, (130, 1100)) is None
    assert idle_share((100, 1000), (100, 1000)) is None


def test_machine_ticks_are_read_from_proc_stat_where_there_is_one():
    ticks = machine_jiffies()
    if not os.path.exists("/proc/stat"):
        assert ticks is None
        return
    assert ticks is not None
    idle, total = ticks
    assert 0 <= idle <= total


def test_postgres_cpu_counts_a_backend_that_exited_during_the_phase(database: str) -> None:
    """A pool's overflow connections close after each use: their backends exit before the end
    of a phase, and a meter of live backends missed their CPU (the naive reference's)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from worker.bench import Meters, _proc_cpu
    from worker.store.db import get_engine

    meters = Meters.__new__(Meters)  # only the PostgreSQL meter: no Redis, no sandbox
    meters.engine = get_engine()
    meters.postmaster_pid = meters.postmaster()
    if meters.postmaster_pid is None:
        pytest.skip("PostgreSQL does not run on this machine: its CPU cannot be read from /proc")
    before = meters.postgres_cpu()

    one_use = create_engine(database, poolclass=NullPool)  # closed after use, as overflow is
    with one_use.connect() as conn:
        backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        conn.execute(text("SELECT count(*) FROM generate_series(1, 3000000)"))  # ≈ 0.3 s
        busy = _proc_cpu(backend)
    one_use.dispose()
    # Gone from /proc once reaped (a zombie keeps its entry): its CPU is the postmaster's now.
    wait_for(lambda: not os.path.exists(f"/proc/{backend}"), timeout=10)

    assert busy >= 0.1
    # Both readings are whole clock ticks; the difference of two float sums of them can fall a
    # hair short of `busy` (216.93 - 216.56 < 0.37): compare to within half a tick.
    assert meters.postgres_cpu() - before >= busy - 0.5 / CLOCK_TICKS


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's /proc")
def test_context_switches_count_every_thread_of_the_process_and_its_children() -> None:
    """A grandchild whose second thread sleeps 200 times (each sleep blocks: a voluntary switch)
    and stays alive until the second reading."""
    script = (
        "import sys, threading, time\n"
        "sys.stdin.readline()\n"
        "slept, release = threading.Event(), threading.Event()\n"
        "def sleeper():\n"
        "    for _ in range(200):\n"
        "        time.sleep(0.001)\n"
        "    slept.set()\n"
        "    release.wait()\n"
        "t = threading.Thread(target=sleeper)\n"
        "t.start()\n"
        "slept.wait()\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n"
        "release.set()\n"
        "t.join()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
         f"{script!r}])"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdin is not None and parent.stdout is not None
    try:
        # The sleeper is counted through its parent's /proc children.
        wait_for(lambda: Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text()
                 .strip())
        before = context_switches([parent.pid])
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "done"
        after = context_switches([parent.pid])
    finally:
        parent.stdin.write("end\n")
        parent.stdin.flush()
        parent.wait(10)
    assert after["voluntary"] - before["voluntary"] >= 200
    assert after["involuntary"] >= before["involuntary"]


def test_the_environment_names_what_makes_two_runs_comparable(database: str,
                                                               redis_client) -> None:
    import celery
    from sqlalchemy import create_engine

    engine = create_engine(database)
    try:
        env = environment(engine, redis_client)
    finally:
        engine.dispose()
    assert env["packages"]["celery"] == celery.__version__
    assert env["packages"]["hiredis"] is not None
    assert env["python"] == sys.version.split()[0]
    assert env["postgresql"]["autovacuum"] in ("on", "off")
    assert env["postgresql"]["server_version"]
    assert env["redis"] == redis_client.info("server")["redis_version"]


def test_wal_bytes_count_what_postgresql_wrote_since_a_position(database: str) -> None:
    from sqlalchemy import create_engine, text

    from worker.bench import Meters

    meters = Meters.__new__(Meters)  # only the PostgreSQL meters: no Redis, no sandbox
    meters.engine = create_engine(database)
    meters.database = meters.engine.url.database
    try:
        before = meters.pg_counters()["pg_wal"]
        # A regular table: temporary and unlogged ones write no WAL.
        with meters.engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS bench_wal_probe (t text)"))
            conn.execute(text("INSERT INTO bench_wal_probe SELECT repeat('x', 1000)"
                              " FROM generate_series(1, 1000)"))
        written = meters.pg_counters()["pg_wal"] - before
    finally:
        with meters.engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS bench_wal_probe"))
        meters.engine.dispose()
    assert 1_000_000 <= written < 50_000_000  # 1 000 rows of 1 KB, logged once each


class _Run:
    """A phase on a simulated clock: rows arrive at `rate` per second from t = 0."""

    def __init__(self, rate: float, target: int) -> None:
        self.now = 0.0
        self.rate = rate
        self.target = target
        self.polls = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def count(self) -> int:
        self.polls += 1
        return min(self.target, int(self.rate * self.now))


@pytest.mark.parametrize("rate", [300.0, 1500.0])
def test_the_finish_line_is_polled_seldom_but_seen_within_the_closest_interval(rate: float):
    from worker.bench import POLL_MIN, wait_for_count

    run = _Run(rate, 20_000)
    seen_at = wait_for_count(run.count, run.target, "bench", clock=run.clock, sleep=run.sleep)

    finished_at = run.target / rate
    assert finished_at <= seen_at <= finished_at + POLL_MIN + 1e-9
    # Every 50 ms would be 20 polls a second: 1 334 at 300/s, 267 at 1 500/s.
    assert run.polls < finished_at * 20 / 4


def test_a_count_that_stops_moving_ends_the_phase_as_stuck():
    from worker.bench import STALL_SECONDS, wait_for_count

    run = _Run(100.0, 20_000)
    run.rate = 0.0
    with pytest.raises(RuntimeError, match="stuck at 0/20000"):
        wait_for_count(run.count, run.target, "bench", clock=run.clock, sleep=run.sleep)
    assert STALL_SECONDS < run.now <= STALL_SECONDS + 1
