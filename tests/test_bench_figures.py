"""The benchmark's arithmetic (the runs themselves are `comms bench`, never a unit test)."""

from __future__ import annotations

import os

from worker.bench import Options, Phase, figures, idle_share, machine_jiffies


def _phase(messages: int, seconds: float, cpu: dict[str, float], **extra: int) -> Phase:
    return Phase(messages, seconds, round(messages / seconds, 1), seconds / 2, cpu, **extra)


def test_figures_are_same_run_ratios_and_per_message_costs():
    dispatch = _phase(1000, 4.0, {"workers": 4.0, "bench": 0.5, "sandbox": 0.5, "redis": 0.5,
                                  "postgres": 0.5}, redis_commands=10_000, pg_transactions=2_500)
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
    assert out["pg_transactions_per_message"] == 2.5
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
