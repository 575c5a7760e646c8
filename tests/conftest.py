"""Test infrastructure: the real Redis, the real PostgreSQL, the sandbox over HTTP, a real worker.

Environment (all optional):
- COMMS_TEST_REDIS_URL     default redis://127.0.0.1:6379/14 (broker and chord results)
- COMMS_TEST_DATABASE_URL  default postgresql+psycopg2://postgres@127.0.0.1:5432/comms_test
  (created when missing)
- COMMS_DELAY_SCALE        retry-table delays are multiplied by this; tests use 0.01 so a 9 s
  backoff takes 90 ms. Tests that observe real timing set it back to 1 (`real_delays` fixture).

Settings must be in the environment before `worker` is imported, so this module sets them first.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import text

from worker.sandbox import Sandbox
from worker.sandbox.vendors.fcm import write_service_account

REDIS_URL = os.environ.get("COMMS_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
DATABASE_URL = os.environ.get(
    "COMMS_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/comms_test"
)
DELAY_SCALE = 0.01

SANDBOX = Sandbox().start()
_SERVICE_ACCOUNT_DIR = tempfile.mkdtemp(prefix="comms-fcm-")

os.environ.update(SANDBOX.env())
os.environ["FCM_SERVICE_ACCOUNT_FILE"] = str(
    write_service_account(_SERVICE_ACCOUNT_DIR, SANDBOX.url))
os.environ.update(
    COMMS_BROKER_URL=REDIS_URL,
    COMMS_DATABASE_URL=DATABASE_URL,
    COMMS_DELAY_SCALE=str(DELAY_SCALE),
    COMMS_VISIBILITY_TIMEOUT="600",
    COMMS_CLAIM_LEASE="30",
    COMMS_HTTP_READ_TIMEOUT="5",
    COMMS_WEBHOOK_BASE_URL="https://hooks.example.test",
)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    yield SANDBOX


@pytest.fixture(scope="session")
def database() -> str:
    """PostgreSQL at the current schema (migrations run through the product's own path)."""
    from worker.store.db import create_database, get_engine

    create_database(DATABASE_URL)
    get_engine()
    return DATABASE_URL


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    return client


@pytest.fixture(scope="session")
def celery_app(database: str, redis_client: redis.Redis) -> Any:
    redis_client.flushdb()
    from worker import app

    return app


@pytest.fixture(scope="session")
def worker(celery_app: Any) -> Iterator[Any]:
    """A real worker (threads pool) consuming every queue, in this process."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        celery_app,
        pool="threads",
        concurrency=8,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,
    ) as w:
        yield w


@pytest.fixture
def clean(database: str) -> Iterator[None]:
    """Empty tables and a sandbox with no recorded requests or scripted faults."""
    from worker.store.db import get_engine

    # DELETE, not TRUNCATE: TRUNCATE's exclusive lock can deadlock with a worker thread still
    # finishing an earlier test's retry.
    with get_engine().begin() as conn:
        for table in ("comms_log", "deferred_dispatches", "fcm_tokens", "contacts", "dispatches"):
            conn.execute(text(f"DELETE FROM {table}"))
    SANDBOX.clear()
    yield


@pytest.fixture
def real_delays() -> Iterator[None]:
    """Retry-table delays at their real length for this test."""
    from config.settings import get_settings

    settings = get_settings()
    before = settings.comms_delay_scale
    settings.comms_delay_scale = 1.0
    yield
    settings.comms_delay_scale = before


@pytest.fixture
def producer(celery_app: Any) -> Callable[[dict[str, Any]], str]:
    """Enqueue by task name from a separate Celery app, as another application would."""
    from celery import Celery

    other = Celery("producer", broker=REDIS_URL)
    other.conf.update(broker_transport_options={"visibility_timeout": 600})

    def send(request: dict[str, Any]) -> str:
        return str(other.send_task("comms.dispatch", kwargs={"request": request}).id)

    return send


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def terminal(message_id: str | uuid.UUID, timeout: float = 20.0) -> dict[str, Any]:
    from worker.store import dispatches as store

    return wait_for(lambda: store.terminal_row(uuid.UUID(str(message_id))), timeout)  # type: ignore[no-any-return]


def log_outcomes(message_id: str | uuid.UUID) -> list[str]:
    from worker.store import dispatches as store

    return [row["outcome"] for row in store.log_rows(uuid.UUID(str(message_id)))]


def make_request(channel: str, payload: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A valid request for `channel` with a fresh message_id; `overrides` replace fields."""
    return {
        "recipient": "jane@example.com",
        "channel": channel,
        "priority": "HIGH",
        "message_id": str(uuid.uuid4()),
        "signal_type": "network_outage",
        "severity": "major",
        "message_payload": payload,
        **overrides,
    }


def slack_request(**overrides: Any) -> dict[str, Any]:
    return make_request(
        "slack",
        {
            "formatted_message": "*Outage* in Leeds: data service degraded",
            "fallback_text": "Outage in Leeds: data service degraded",
        },
        **{"priority": "CRITICAL", "severity": "critical", **overrides},
    )
