"""Durability fixtures: real worker and beat processes (`celery -A worker worker|beat`) on their
own Redis database, so they never meet the in-process test worker (which consumes every queue on
COMMS_TEST_REDIS_URL, db 14). They share the test PostgreSQL database and the in-process sandbox.

- COMMS_TEST_DURABILITY_REDIS_URL  default redis://127.0.0.1:6379/11 (flushed per test)

Also `eta_guard`: records every task message this process publishes and fails the test if any
carries an ETA beyond the countdown bound (the runtime half of "no ETA beyond the bound").
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from config.tables import CHANNELS
from tests.conftest import REDIS_URL, wait_for

DURABILITY_REDIS_URL = os.environ.get(
    "COMMS_TEST_DURABILITY_REDIS_URL", "redis://127.0.0.1:6379/11")
if DURABILITY_REDIS_URL == REDIS_URL:
    raise RuntimeError("COMMS_TEST_DURABILITY_REDIS_URL must differ from COMMS_TEST_REDIS_URL")
ROOT = Path(__file__).resolve().parents[2]
ALL_QUEUES = ",".join(("celery", *CHANNELS, "receipts", "maintenance"))


@dataclass
class Process:
    """A `celery -A worker ...` child process with its output in a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, *, ready: str | None = "ready.", timeout: float = 30.0) -> Process:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n==== start {self.starts} ====\n".encode())
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        if ready is not None:
            marker = f"==== start {self.starts} ===="

            def up() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited:\n{self.output()[-3000:]}")
                text = self.output()
                return ready in text[text.rfind(marker):]

            wait_for(up, timeout=timeout, interval=0.1)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and any pool children)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Cluster:
    """Worker and beat processes on the durability broker, built with one environment."""

    env: dict[str, str]
    tmp: Path
    processes: list[Process] = field(default_factory=list)

    def worker(self, name: str = "w1", *, queues: str = ALL_QUEUES, pool: str = "threads",
               concurrency: int = 8) -> Process:
        argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", pool,
                "-c", str(concurrency), "-Q", queues, "--hostname", f"{name}@durability",
                "--without-gossip", "--without-mingle", "-l", "INFO"]
        proc = Process(name, argv, self.env, self.tmp / f"{name}.log")
        self.processes.append(proc)
        return proc

    def beat(self) -> Process:
        argv = [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO",
                "--schedule", str(self.tmp / "beat-schedule"),
                "--pidfile", str(self.tmp / "beat.pid")]
        proc = Process("beat", argv, self.env, self.tmp / "beat.log")
        self.processes.append(proc)
        return proc

    @contextlib.contextmanager
    def producer(self) -> Iterator[Any]:
        """A producer's own Celery app on the durability broker."""
        from celery import Celery

        producer = Celery("durability-producer", broker=DURABILITY_REDIS_URL)
        producer.conf.update(broker_transport_options={"visibility_timeout": 10})
        try:
            yield producer
        finally:
            producer.close()

    def send(self, requests: list[dict[str, Any]]) -> None:
        """Enqueue `comms.dispatch` by name on the durability broker, as a producer would."""
        with self.producer() as producer:
            for request in requests:
                producer.send_task("comms.dispatch", kwargs={"request": request})

    def resend_unaccepted(self, requests: list[dict[str, Any]]) -> list[str]:
        """What a producer that must not lose a message does (worker.producer)."""
        from worker.producer import resend_unaccepted

        with self.producer() as producer:
            return resend_unaccepted(requests, app=producer)

    def stop_all(self) -> None:
        for proc in self.processes:
            proc.kill()


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    """The durability Redis database, empty at the start and end of the test."""
    client = redis.Redis.from_url(DURABILITY_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def cluster(database: str, broker: redis.Redis, clean: None,
            tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """`cluster(**env)` -> a Cluster whose processes get the test environment, the durability
    broker and `env` (COMMS_* overrides); every process is killed at the end of the test."""
    made: list[Cluster] = []
    # pytest keeps the last three runs' directories (process logs to read after a failure).
    tmp = tmp_path

    def make(**overrides: Any) -> Cluster:
        env = dict(os.environ)
        env.pop("COMMS_RESULT_BACKEND", None)
        env.update(
            COMMS_BROKER_URL=DURABILITY_REDIS_URL,
            COMMS_VISIBILITY_TIMEOUT="10",
            COMMS_CLAIM_LEASE="5",
            COMMS_DRAIN_EVERY="1",
            PYTHONUNBUFFERED="1",
        )
        env.update({k: str(v) for k, v in overrides.items()})
        made.append(Cluster(env, tmp))
        return made[-1]

    yield make
    for c in made:
        c.stop_all()


# -- the runtime ETA guard -------------------------------------------------------------------------


@dataclass
class EtaGuard:
    bound: float
    seen: list[tuple[str, float]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        headers = headers or {}
        eta = headers.get("eta")
        if not eta:
            return
        when = datetime.fromisoformat(str(eta))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        ahead = (when - datetime.now(UTC)).total_seconds()
        with self.lock:
            self.seen.append((str(headers.get("task") or sender), ahead))
            # 1 s of slack for the time between the publish and this check.
            if when > datetime.now(UTC) + timedelta(seconds=self.bound + 1):
                self.violations.append(f"{headers.get('task') or sender}: ETA {ahead:.0f}s ahead")


@pytest.fixture
def eta_guard() -> Iterator[EtaGuard]:
    """Fails the test if any message published in this process has an ETA beyond the bound."""
    from celery.signals import before_task_publish

    from config.settings import get_settings

    guard = EtaGuard(get_settings().countdown_bound)
    before_task_publish.connect(guard, weak=False)
    try:
        yield guard
    finally:
        before_task_publish.disconnect(guard)
    assert not guard.violations, guard.violations


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> float:
    """Seconds it took `predicate` to hold (AssertionError after `timeout`)."""
    started = time.monotonic()
    wait_for(predicate, timeout=timeout, interval=interval)
    return time.monotonic() - started


# -- a database that comes back --------------------------------------------------------------------


class TcpForwarder:
    """A port that refuses connections until `open()`, then forwards them to `target`: for the
    worker, PostgreSQL is down, then back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()  # nothing listens until open(): connection refused
        self._server: socket.socket | None = None

    def open(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
