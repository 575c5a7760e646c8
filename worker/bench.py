"""`comms bench`: how fast the dispatcher is, against bare Celery and against the naive version.

Everything is real and local: the Redis broker (its own db, default 10), PostgreSQL (its own
database, `comms_bench`, created when missing and emptied before each run), the vendor sandbox
as a subprocess with the chosen latency and error rate, and `celery worker` subprocesses.

Phases, one run:
1. reference workers (`worker.bench_tasks`, a separate Celery app): N no-op tasks
   (`bare_celery_throughput`), then N naive sends (`naive_throughput`);
2. product workers (`celery -A worker worker`): N requests through `comms.dispatch`, spread over
   the seven channels with real payloads (`dispatch_throughput`: first enqueue to the last
   first-generation terminal row committed in comms_log), then a paced run at half that rate for
   the enqueue-to-vendor latency (the sandbox records each request's arrival; the payload
   carries a `BENCH<message id>` tag to match it);
3. checks: receipts lost, duplicate terminal rows, vendor calls per message, Redis back to its
   baseline.

Figures print one per line (`name value`) and go to a JSON file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

CHANNELS = ("slack", "zendesk", "jira", "pagerduty", "email", "sms", "push")
TERMINAL = "('SENT', 'FAILED', 'SUPPRESSED')"
TAG = re.compile(r"BENCH([0-9a-f]{32})")
#: No progress for this long ends a phase as failed.
STALL_SECONDS = 90.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Options:
    messages: int = 20_000
    latency: float = 0.1
    error_rate: float = 0.0
    workers: int = 2
    concurrency: int = 64
    pool: str = "threads"
    receipt_mode: str = "inline"
    json_path: str | None = None
    broker_url: str = "redis://127.0.0.1:6379/10"
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/comms_bench"
    #: Seconds of paced sending at half the measured rate, for the latency figures.
    latency_seconds: float = 10.0
    #: Skip the bare and naive reference phases (to iterate on the product alone).
    skip_reference: bool = False
    #: Seconds Redis is given after the run to come back to its baseline (chord markers: 300).
    settle_seconds: float = 15.0


@dataclass
class Phase:
    """What one phase measured."""

    messages: int
    seconds: float
    throughput: float
    enqueue_seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    redis_commands: int = 0
    pg_transactions: int = 0
    #: Bytes of PostgreSQL write-ahead log written during the phase (the whole server's).
    pg_wal_bytes: int = 0
    #: Messages that ended without their row (the naive implementation has no retries).
    lost: int = 0
    #: Share of the machine's CPU time left idle during the phase, from /proc/stat: it also sees
    #: what the per-process figures miss (short-lived PostgreSQL backends, the kernel). None
    #: where /proc/stat is absent.
    idle_share: float | None = None
    #: The worker processes' context switches during the phase (`context_switches()`).
    context_switches: dict[str, int] = field(default_factory=dict)


# -- infrastructure ------------------------------------------------------------------------------


def prepare_database(url: str) -> Engine:
    """The bench database at the product's schema plus the naive table, every table emptied."""
    from worker.bench_tasks import NAIVE_DDL
    from worker.store import db, schema

    db.create_database(url)
    engine = create_engine(url, pool_size=2)
    schema.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(NAIVE_DDL))
    truncate(engine)
    return engine


def truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        tables = conn.execute(
            text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'"
            )
        ).scalars().all()
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SandboxProcess:
    """`comms sandbox` in its own process, so its CPU (and GIL) is not the benchmark's."""

    def __init__(self, latency: float, error_rate: float, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "sandbox", "--port", str(self.port),
             "--latency", str(latency), "--error-rate", str(error_rate)],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1
            ):
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the sandbox did not start (see {log})")
            time.sleep(0.1)

    def env(self) -> dict[str, str]:
        from worker.sandbox.vendors import sandbox_env

        return sandbox_env(self.url)

    def recorded(self) -> list[dict[str, Any]]:
        reply = requests.get(f"{self.url}/_sandbox/requests", timeout=120)
        reply.raise_for_status()
        data: list[dict[str, Any]] = reply.json()
        return data

    def clear(self) -> None:
        requests.delete(f"{self.url}/_sandbox/requests", timeout=30).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class Workers:
    """`celery worker` subprocesses of one app."""

    def __init__(self, app: str, opts: Options, env: dict[str, str], logs: Path, name: str):
        if opts.pool == "gevent":
            app = "worker.bench_gevent:" + ("app" if app == "worker" else "bench_app")
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs = []
        for i in range(opts.workers):
            log = (logs / f"{name}-{i}.log").open("w")
            self._logs.append(log)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", app, "worker", "-P", opts.pool,
                 "-c", str(opts.concurrency), "-n", f"{name}{i}@%h", "--loglevel", "WARNING",
                 "--without-mingle", "--without-gossip"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            ))

    def wait_ready(self, broker_url: str, timeout: float = 120.0) -> None:
        from celery import Celery

        probe = Celery("bench-probe", broker=broker_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a worker exited at start; see bench-results/logs/")
            if len(probe.control.ping(timeout=1.0)) >= len(self.procs):
                return
        raise RuntimeError("workers did not answer a ping in time")

    def cpu_seconds(self) -> float:
        return cpu_of(p.pid for p in self.procs)

    def context_switches(self) -> dict[str, int]:
        return context_switches(p.pid for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for log in self._logs:
            log.close()


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from its state field on (field 3), or None (gone, or not Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _proc_cpu(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU seconds of one process; with `reaped`, plus those of its children that
    have exited (the kernel adds them to the parent when it waits for them)."""
    fields = _proc_stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def with_descendants(pids: Iterable[int]) -> Iterator[int]:
    """These processes and every process under them (e.g. prefork's children)."""
    todo = list(pids)
    while todo:
        pid = todo.pop()
        yield pid
        todo.extend(_children(pid))


def cpu_of(pids: Iterable[int], *, children: bool = True) -> float:
    """User + system CPU seconds of these processes (and their children, e.g. prefork's)."""
    return sum(_proc_cpu(pid) for pid in (with_descendants(pids) if children else pids))


def context_switches(pids: Iterable[int]) -> dict[str, int]:
    """Context switches so far of every thread of these processes and their children: `voluntary`
    (a thread blocked: I/O, a lock, waiting for the GIL) and `involuntary` (preempted by the
    kernel). Their count per message shows what 64 threads contending for one GIL cost beyond
    their own work. A thread that exits mid-phase drops out of the sum (the pools keep theirs).
    Zero off Linux."""
    totals = {"voluntary": 0, "involuntary": 0}
    for pid in with_descendants(pids):
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            with contextlib.suppress(OSError):
                for line in status.read_text().splitlines():
                    name, _, value = line.partition(":")
                    if name == "voluntary_ctxt_switches":
                        totals["voluntary"] += int(value)
                    elif name == "nonvoluntary_ctxt_switches":
                        totals["involuntary"] += int(value)
    return totals


class Meters:
    """CPU of the other parties (bench, sandbox, Redis, PostgreSQL) and Redis/PG counters."""

    def __init__(self, rds: redis.Redis, engine: Engine, sandbox: SandboxProcess) -> None:
        self.rds = rds
        self.engine = engine
        self.sandbox = sandbox
        self.redis_pid = int(rds.info("server")["process_id"])
        self.database = engine.url.database
        self.postmaster_pid = self.postmaster()

    def postmaster(self) -> int | None:
        """PostgreSQL's postmaster (the parent of our connection's backend) when the server runs
        on this machine, else None."""
        with self.engine.connect() as conn:
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        fields = _proc_stat(backend)
        return int(fields[1]) if fields else None

    def postgres_cpu(self) -> float:
        """The whole server's CPU so far: the postmaster, every live process under it (backends,
        WAL writer, checkpointer, autovacuum) and those that exited. A backend that exits
        mid-phase (a pool's overflow connection, closed after each use) still counts."""
        if self.postmaster_pid is None:
            return 0.0
        return _proc_cpu(self.postmaster_pid, reaped=True) + cpu_of(
            _children(self.postmaster_pid), children=False)

    def pg_counters(self) -> dict[str, int]:
        """The database's transactions so far and the server's WAL position in bytes, in one
        query: `since` subtracts two readings like every other counter."""
        with self.engine.connect() as conn:
            row = conn.execute(text(
                "SELECT xact_commit + xact_rollback, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
                " FROM pg_stat_database WHERE datname = :d"), {"d": self.database}).one()
        return {"pg_transactions": int(row[0]), "pg_wal": int(row[1])}

    def snapshot(self) -> dict[str, Any]:
        return {
            "bench": cpu_of([os.getpid()], children=False),
            "sandbox": cpu_of([self.sandbox.proc.pid], children=False),
            "redis": cpu_of([self.redis_pid], children=False),
            "postgres": self.postgres_cpu(),
            "redis_commands": int(self.rds.info("stats")["total_commands_processed"]),
            **self.pg_counters(),
        }

    def since(self, before: dict[str, Any]) -> dict[str, Any]:
        after = self.snapshot()
        return {
            "cpu": {
                "bench": after["bench"] - before["bench"],
                "sandbox": after["sandbox"] - before["sandbox"],
                "redis": after["redis"] - before["redis"],
                "postgres": after["postgres"] - before["postgres"],
            },
            "redis_commands": after["redis_commands"] - before["redis_commands"],
            # Minus the bench's own polling, roughly one per poll (not subtracted: small).
            "pg_transactions": after["pg_transactions"] - before["pg_transactions"],
            # The whole server's WAL: what replicas receive and the disk absorbs.
            "pg_wal_bytes": after["pg_wal"] - before["pg_wal"],
        }


#: Polls of the finish line: never further apart than this, never closer than POLL_MIN.
POLL_MAX = 0.5
POLL_MIN = 0.05


def wait_for_count(count: Callable[[], int], target: int, what: str, *,
                   clock: Callable[[], float] = time.time,
                   sleep: Callable[[float], None] = time.sleep) -> float:
    """Poll until `count()` reaches `target`; the clock() time it was seen there.

    The product's count is a query over comms_log whose cost grows with the run (2.4 ms of
    PostgreSQL CPU at 8 400 rows): polled every 50 ms through a 20 000-message run it would take
    ≈ 0.16 ms of PostgreSQL CPU per message from the run it measures. So the poll waits a
    quarter of the time the current rate needs to finish (POLL_MAX at most), and closes in to
    POLL_MIN at the end: the finish is still seen within POLL_MIN of when it happens while the
    rate holds."""
    last, last_change = -1, clock()
    previous: tuple[float, int] | None = None
    while True:
        seen = count()
        now = clock()
        if seen >= target:
            return now
        if seen != last:
            last, last_change = seen, now
        elif now - last_change > STALL_SECONDS:
            raise RuntimeError(f"{what}: stuck at {seen}/{target} for {STALL_SECONDS:.0f}s")
        pause = POLL_MIN
        if previous is not None and now > previous[0] and seen > previous[1]:
            rate = (seen - previous[1]) / (now - previous[0])
            pause = min(POLL_MAX, max(POLL_MIN, (target - seen) / rate / 4))
        previous = (now, seen)
        sleep(pause)


# -- requests ------------------------------------------------------------------------------------


def bench_request(i: int, message_id: uuid.UUID) -> dict[str, Any]:
    """Request i: channels in turn, each with a real payload carrying the message's tag."""
    channel = CHANNELS[i % len(CHANNELS)]
    tag = f"BENCH{message_id.hex}"
    payloads: dict[str, dict[str, Any]] = {
        "slack": {"formatted_message": f"*Outage* in Leeds: data degraded ({tag})",
                  "fallback_text": f"Outage in Leeds ({tag})"},
        "zendesk": {"subject": "Data outage", "body": f"Line 1\n\n{tag}", "tags": ["outage"]},
        "jira": {"project_key": "OPS", "issue_type": "Incident", "summary": f"Outage {tag}",
                 "description": "First paragraph\n\nSecond", "labels": ["outage"]},
        "pagerduty": {"summary": f"Leeds core down {tag}", "custom_details": {"cells": 12}},
        "email": {"subject": f"Your data service is degraded {tag}",
                  "plain_text_body": "We are on it.", "html_body": "<p>We are on it.</p>",
                  "customer_name": "Jane Doe"},
        "sms": {"sms_body": f"Meow Mobile: data is degraded in your area {tag}"},
        "push": {"push_title": "Service degraded", "push_body": f"We are on it {tag}",
                 "deep_link_url": "meow://status"},
    }
    request: dict[str, Any] = {
        "recipient": f"customer{i}@bench.example.com",
        "channel": channel,
        # Quiet hours never defer CRITICAL, so SMS and push go now, whatever the hour.
        "priority": "CRITICAL" if channel in ("sms", "push") else "HIGH",
        "message_id": str(message_id),
        "signal_type": "network_outage",
        "severity": "major",
        "message_payload": payloads[channel],
    }
    if channel in ("email", "sms", "push"):
        request["customer"] = {"name": "Jane Doe", "phone": "+14155550123",
                               "timezone": "Europe/London",
                               "fcm_token": f"fcm-{message_id.hex}"}
    return request


# -- phases --------------------------------------------------------------------------------------


def reference_phases(opts: Options, env: dict[str, str], engine: Engine, meters: Meters,
                     logs: Path) -> dict[str, Phase]:
    from celery import Celery

    from worker.bench_tasks import NAIVE_COUNTER, NAIVE_TABLE, NOOP_COUNTER

    rds = meters.rds
    rds.flushdb()
    workers = Workers("worker.bench_tasks", opts, env, logs, "ref")
    out: dict[str, Phase] = {}
    try:
        workers.wait_ready(opts.broker_url)
        producer = Celery("bench-producer", broker=opts.broker_url)
        producer.conf.update(broker_transport_options={"visibility_timeout": 3600})

        def bare(i: int) -> None:
            producer.send_task("bench.noop", queue="bench")

        out["bare"] = run_phase(
            opts.messages, bare, lambda: int(rds.get(NOOP_COUNTER) or 0), workers, meters,
            "bare celery")

        def naive(i: int) -> None:
            producer.send_task("bench.naive", queue="bench",
                               args=[str(uuid.uuid4()), CHANNELS[i % 7], f"message {i}"])

        out["naive"] = run_phase(
            opts.messages, naive, lambda: int(rds.get(NAIVE_COUNTER) or 0), workers, meters,
            "naive")
        with engine.connect() as conn:
            rows = int(conn.execute(text(f"SELECT count(*) FROM {NAIVE_TABLE}")).scalar_one())
        out["naive"].lost = opts.messages - rows
    finally:
        workers.stop()
    return out


def machine_jiffies() -> tuple[int, int] | None:
    """(idle, total) CPU time of the whole machine so far, in clock ticks; None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return idle + iowait, user + nice + system + idle + iowait + irq + softirq + steal


def idle_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] == before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def run_phase(n: int, send: Callable[[int], None], count: Callable[[], int], workers: Workers,
              meters: Meters, what: str, *, already: int = 0) -> Phase:
    before = meters.snapshot()
    jiffies = machine_jiffies()
    workers_before = workers.cpu_seconds()
    switches_before = workers.context_switches()
    start = time.time()
    for i in range(n):
        send(i)
    enqueued = time.time()
    done = wait_for_count(count, already + n, what)
    used = meters.since(before)
    cpu = {"workers": workers.cpu_seconds() - workers_before, **used["cpu"]}
    switches = {k: v - switches_before[k] for k, v in workers.context_switches().items()}
    seconds = done - start
    return Phase(n, round(seconds, 3), round(n / seconds, 1), round(enqueued - start, 3),
                 {k: round(v, 2) for k, v in cpu.items()},
                 used["redis_commands"], used["pg_transactions"], used["pg_wal_bytes"],
                 idle_share=idle_share(jiffies, machine_jiffies()), context_switches=switches)


def first_generation_terminals(engine: Engine) -> Callable[[], int]:
    def count() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text(
                f"SELECT count(*) FROM comms_log WHERE outcome IN {TERMINAL}"
                " AND parent_message_id IS NULL")).scalar_one())
    return count


def product_phases(opts: Options, env: dict[str, str], engine: Engine, meters: Meters,
                   sandbox: SandboxProcess, logs: Path) -> dict[str, Any]:
    from celery import Celery

    rds = meters.rds
    rds.flushdb()
    truncate(engine)
    workers = Workers("worker", opts, env, logs, "comms")
    out: dict[str, Any] = {}
    try:
        workers.wait_ready(opts.broker_url)
        time.sleep(1.0)
        out["redis_before"] = redis_state(rds)
        producer = Celery("bench-producer", broker=opts.broker_url)
        producer.conf.update(broker_transport_options={"visibility_timeout": 3600})
        counter = first_generation_terminals(engine)
        sandbox.clear()
        requests_ = [bench_request(i, uuid.uuid4()) for i in range(opts.messages)]

        def send(i: int) -> None:
            producer.send_task("comms.dispatch", kwargs={"request": requests_[i]})

        out["dispatch"] = run_phase(opts.messages, send, counter, workers, meters, "dispatch")
        out["vendor_calls"] = vendor_calls(sandbox.recorded())
        sandbox.clear()
        rate = out["dispatch"].throughput / 2
        out["latency"] = latency_phase(opts, rate, producer, counter, sandbox)
        out["redis_after"] = settle_redis(rds, out["redis_before"], opts.settle_seconds)
    finally:
        workers.stop()
    return out


def vendor_calls(recorded: list[dict[str, Any]]) -> dict[str, int]:
    """Vendor requests per tagged message: a message called more than once is a duplicate send
    (with --error-rate 0; with errors, retries are expected)."""
    per: Counter[str] = Counter()
    untagged = 0
    for req in recorded:
        match = TAG.search(req["body"])
        if match is None:
            untagged += 1
        else:
            per[match.group(1)] += 1
    return {"messages_called": len(per), "calls": sum(per.values()),
            "messages_called_more_than_once": sum(1 for c in per.values() if c > 1),
            "untagged_calls": untagged}


def latency_phase(opts: Options, rate: float, producer: Any, counter: Callable[[], int],
                  sandbox: SandboxProcess) -> dict[str, Any]:
    n = max(100, min(opts.messages, int(rate * opts.latency_seconds)))
    ids = [uuid.uuid4() for _ in range(n)]
    reqs = [bench_request(i, ids[i]) for i in range(n)]
    sent_at: dict[str, float] = {}
    already = counter()
    start = time.monotonic()
    for i, req in enumerate(reqs):
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        sent_at[ids[i].hex] = time.time()
        producer.send_task("comms.dispatch", kwargs={"request": req})
    wait_for_count(counter, already + n, "latency run")
    arrived: dict[str, float] = {}
    for rec in sandbox.recorded():
        match = TAG.search(rec["body"])
        if match is not None and match.group(1) in sent_at:
            key = match.group(1)
            arrived[key] = min(arrived.get(key, rec["at"]), rec["at"])
    took = {k: (arrived[k] - sent_at[k]) * 1000 for k in arrived}
    millis = sorted(took.values())
    if not millis:
        return {"rate": round(rate, 1), "messages": n, "matched": 0}
    index = {mid.hex: i for i, mid in enumerate(ids)}
    # The ten slowest, with when they were sent and their channel: a tail of one channel or of
    # one moment (a stall) reads differently from one spread over the run.
    slowest = sorted(took, key=took.__getitem__, reverse=True)[:10]
    return {
        "rate": round(rate, 1),
        "messages": n,
        "matched": len(millis),
        "p50_ms": round(statistics.median(millis), 1),
        "p99_ms": round(millis[min(len(millis) - 1, int(len(millis) * 0.99))], 1),
        "max_ms": round(millis[-1], 1),
        "slowest": [{"sent_s": round(sent_at[k] - sent_at[ids[0].hex], 2),
                     "ms": round(took[k], 1),
                     "channel": CHANNELS[index[k] % len(CHANNELS)]} for k in slowest],
    }


def redis_state(rds: redis.Redis) -> dict[str, Any]:
    return {"used_memory": int(rds.info("memory")["used_memory"]), "keys": int(rds.dbsize())}


def settle_redis(rds: redis.Redis, before: dict[str, Any], wait: float) -> dict[str, Any]:
    """Redis after the run, given up to `wait` s to come back within 10 % of its baseline.

    Keys left are classed: with a TTL (e.g. Celery 5.7's chord "done" markers, `<group>.c`, kept
    300 s to stop late duplicates) they go by themselves; without one they are a leak."""
    deadline = time.monotonic() + wait
    while True:
        now = redis_state(rds)
        if now["used_memory"] <= before["used_memory"] * 1.10 or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    prefixes: Counter[str] = Counter()
    expiring, max_ttl, leaked = 0, 0, []
    for key in rds.scan_iter(count=1000):
        name = key.decode(errors="replace")
        if name.startswith("_kombu") or name.startswith("unacked"):
            continue
        prefixes[re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", name)] += 1
        ttl = int(rds.ttl(key))
        if ttl >= 0:
            expiring += 1
            max_ttl = max(max_ttl, ttl)
        else:
            leaked.append(name)
    now.update(key_patterns=dict(prefixes.most_common(8)), keys_expiring=expiring,
               keys_expiring_max_ttl=max_ttl, keys_without_ttl=len(leaked),
               keys_without_ttl_sample=leaked[:20])
    return now


def receipt_checks(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        duplicates = conn.execute(text(
            f"SELECT count(*) FROM (SELECT message_id FROM comms_log WHERE outcome IN {TERMINAL}"
            " GROUP BY message_id HAVING count(*) > 1) d")).scalar_one()
        lost = conn.execute(text(
            "SELECT count(*) FROM dispatches d WHERE d.state <> 'deferred' AND NOT EXISTS"
            f" (SELECT 1 FROM comms_log l WHERE l.message_id = d.message_id"
            f" AND l.outcome IN {TERMINAL})")).scalar_one()
        deferred = conn.execute(text(
            "SELECT count(*) FROM dispatches WHERE state = 'deferred'")).scalar_one()
        outcomes = conn.execute(text(
            "SELECT channel, outcome, count(*) FROM comms_log GROUP BY 1, 2 ORDER BY 1, 2")).all()
        dispatched = conn.execute(text("SELECT count(*) FROM dispatches")).scalar_one()
    return {
        "dispatches": int(dispatched),
        "receipts_lost": int(lost),
        "duplicate_terminal_rows": int(duplicates),
        "deferred": int(deferred),
        "outcomes": {f"{c}:{o}": int(n) for c, o, n in outcomes},
    }


# -- the environment -----------------------------------------------------------------------------

#: The packages whose version moves the figures (the hot path's libraries).
PACKAGES = ("celery", "kombu", "redis", "hiredis", "sqlalchemy", "psycopg2-binary", "pydantic",
            "pydantic-core", "email-validator", "urllib3")
#: PostgreSQL settings that change its cost per message (autovacuum off: tables never analyzed,
#: dead rows never reclaimed during a run).
PG_SETTINGS = ("autovacuum", "synchronous_commit", "fsync", "shared_buffers", "commit_delay",
               "wal_level", "jit")


def environment(engine: Engine, rds: redis.Redis) -> dict[str, Any]:
    """What two runs must share for their figures to compare: the libraries, the servers and
    their settings, the CPU."""
    from importlib.metadata import PackageNotFoundError, version

    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    with engine.connect() as conn:
        settings: dict[str, str] = dict(conn.execute(
            text("SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"),
            {"names": list(PG_SETTINGS)}).all())
        server = conn.execute(text("SHOW server_version")).scalar_one()
    return {
        "python": sys.version.split()[0],
        "packages": packages,
        "cpu_model": cpu_model(),
        "postgresql": {"server_version": server, **settings},
        "redis": rds.info("server")["redis_version"],
    }


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return None


# -- the run -------------------------------------------------------------------------------------


def worker_env(opts: Options, sandbox: SandboxProcess, fcm_dir: str) -> dict[str, str]:
    from worker.sandbox.vendors.fcm import write_service_account

    env = dict(os.environ)
    env.update(sandbox.env())
    env.update(
        COMMS_BROKER_URL=opts.broker_url,
        COMMS_BENCH_BROKER_URL=opts.broker_url,
        COMMS_DATABASE_URL=opts.database_url,
        COMMS_RECEIPT_MODE=opts.receipt_mode,
        COMMS_WEBHOOK_BASE_URL=env.get("COMMS_WEBHOOK_BASE_URL", "https://hooks.example.test"),
        FCM_SERVICE_ACCOUNT_FILE=str(write_service_account(fcm_dir, sandbox.url)),
        PYTHONUNBUFFERED="1",
    )
    return env


def figures(opts: Options, ref: dict[str, Phase], prod: dict[str, Any],
            checks: dict[str, Any]) -> dict[str, Any]:
    dispatch: Phase = prod["dispatch"]
    out: dict[str, Any] = {"dispatch_throughput": dispatch.throughput}
    if ref:
        bare, naive = ref["bare"], ref["naive"]
        out.update(
            bare_celery_throughput=bare.throughput,
            ratio_vs_bare_celery=round(dispatch.throughput / bare.throughput, 3),
            naive_throughput=naive.throughput,
            ratio_vs_naive=round(dispatch.throughput / naive.throughput, 3),
            naive_lost=naive.lost,
        )
    latency = prod["latency"]
    per_k = 1000 / dispatch.messages
    machine_cpu = sum(dispatch.cpu.values())
    out.update(
        latency_rate=latency["rate"],
        latency_p50_ms=latency.get("p50_ms"),
        latency_p99_ms=latency.get("p99_ms"),
        cpu_seconds_per_1000=round(dispatch.cpu["workers"] * per_k, 2),
        # Everything on the machine (workers, producer, sandbox, Redis, PostgreSQL), and the share
        # of the machine's cores it kept busy: below ≈ 0.9 the run was not CPU-bound.
        machine_cpu_seconds_per_1000=round(machine_cpu * per_k, 2),
        cpu_busy_share=round(machine_cpu / (dispatch.seconds * (os.cpu_count() or 1)), 2),
        machine_idle_share=dispatch.idle_share,
        worker_context_switches_per_message=round(
            sum(dispatch.context_switches.values()) / dispatch.messages, 1),
        redis_commands_per_message=round(dispatch.redis_commands / dispatch.messages, 1),
        pg_transactions_per_message=round(dispatch.pg_transactions / dispatch.messages, 2),
        pg_wal_bytes_per_message=round(dispatch.pg_wal_bytes / dispatch.messages),
        redis_memory_before=prod["redis_before"]["used_memory"],
        redis_memory_after=prod["redis_after"]["used_memory"],
        redis_memory_within_10pct=prod["redis_after"]["used_memory"]
        <= prod["redis_before"]["used_memory"] * 1.10,
        redis_keys_expiring=prod["redis_after"]["keys_expiring"],
        redis_keys_without_ttl=prod["redis_after"]["keys_without_ttl"],
        receipts_lost=checks["receipts_lost"],
        duplicate_terminal_rows=checks["duplicate_terminal_rows"],
        duplicate_vendor_calls=prod["vendor_calls"]["messages_called_more_than_once"],
    )
    return out


@contextlib.contextmanager
def exclusive(opts: Options) -> Iterator[None]:
    """One benchmark at a time on this machine: a second would flush the first one's broker db."""
    lock = Path(tempfile.gettempdir()) / "comms-bench.lock"
    with lock.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another comms bench is running (lock {lock})") from None
        yield


def run(opts: Options) -> dict[str, Any]:
    with exclusive(opts):
        return _run(opts)


def _run(opts: Options) -> dict[str, Any]:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = Path("bench-results") / "logs" / stamp
    logs.mkdir(parents=True, exist_ok=True)
    engine = prepare_database(opts.database_url)
    rds = redis.Redis.from_url(opts.broker_url)
    sandbox = SandboxProcess(opts.latency, opts.error_rate, logs / "sandbox.log")
    fcm = tempfile.TemporaryDirectory(prefix="comms-bench-fcm-")
    fcm_dir = fcm.name
    try:
        env = worker_env(opts, sandbox, fcm_dir)
        meters = Meters(rds, engine, sandbox)
        env_info = environment(engine, rds)
        ref = {} if opts.skip_reference else reference_phases(opts, env, engine, meters, logs)
        prod = product_phases(opts, env, engine, meters, sandbox, logs)
        checks = receipt_checks(engine)
    finally:
        sandbox.stop()
        engine.dispose()
        fcm.cleanup()
    result = {
        "figures": figures(opts, ref, prod, checks),
        "options": asdict(opts),
        "machine": {"nproc": os.cpu_count(), "date": stamp,
                    "memory_gb": round(
                        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    **env_info},
        "phases": {name: asdict(phase) for name, phase in ref.items()}
        | {"dispatch": asdict(prod["dispatch"])},
        "latency": prod["latency"],
        "vendor_calls": prod["vendor_calls"],
        "redis": {"before": prod["redis_before"], "after": prod["redis_after"]},
        "checks": checks,
        "logs": str(logs),
    }
    path = Path(opts.json_path or Path("bench-results") / f"{stamp}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    result["json"] = str(path)
    return result


def main(opts: Options) -> int:
    result = run(opts)
    for name, value in result["figures"].items():
        print(f"{name} {value}")
    print(f"# json {result['json']}")
    bad = result["figures"]["receipts_lost"] or result["figures"]["duplicate_terminal_rows"]
    return 1 if bad else 0
