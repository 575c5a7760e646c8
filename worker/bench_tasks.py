"""The benchmark's reference points: a separate Celery app, never part of the product's app.

`comms bench` runs these on the same broker, machine, worker count and pool as the product:

- `bench.noop`: the bare Celery floor. It does nothing but one Redis INCR, so the benchmark can see
  it finish (a Celery task costs ~20 Redis commands; the INCR is one more).
- `bench.naive`: the obvious implementation someone could write in an afternoon: one task that
  POSTs the message with `requests.post` (no session, no retries, no idempotency, no payload
  building: Slack's chat.postMessage for every message) and inserts one row with SQLAlchemy
  (plus one INCR that counts finished tasks, lost or not).

The app keeps Celery's defaults (prefetch x4, early ack, no events, no result backend), which is
what "bare Celery" is. Workers run it with `celery -A worker.bench_tasks worker`; the gevent pool
needs `worker.bench_gevent` (psycopg2 made cooperative) first.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import redis
import requests
from celery import Celery
from celery.signals import worker_init
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

BENCH_QUEUE = "bench"
NOOP_COUNTER = "comms-bench:noop-done"
NAIVE_COUNTER = "comms-bench:naive-done"
NAIVE_TABLE = "bench_naive_log"

BROKER_URL = os.environ.get("COMMS_BENCH_BROKER_URL", "redis://127.0.0.1:6379/10")

app = Celery("comms-bench", broker=BROKER_URL)
app.conf.update(
    task_default_queue=BENCH_QUEUE,
    task_ignore_result=True,
    # Every app on a broker must agree on the visibility timeout (celery-notes.md §2).
    broker_transport_options={"visibility_timeout": 3600},
    visibility_timeout=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    accept_content=["json"],
)


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(BROKER_URL)


@cache
def _engine() -> Engine:
    return create_engine(os.environ["COMMS_DATABASE_URL"])


@worker_init.connect
def _one_engine(**_: Any) -> None:
    """Build the engine before the pool starts: 64 threads missing the cache at once each built
    their own, and together opened more connections than PostgreSQL allows (lost naive sends)."""
    _engine()


@app.task(name="bench.noop")
def noop() -> None:
    _redis().incr(NOOP_COUNTER)


@app.task(name="bench.naive")
def naive(message_id: str, channel: str, body: str) -> None:
    try:
        _naive(message_id, channel, body)
    finally:
        # Counted whatever happened, so the benchmark sees the end of a run that lost messages.
        _redis().incr(NAIVE_COUNTER)


def _naive(message_id: str, channel: str, body: str) -> None:
    reply = requests.post(
        os.environ["SLACK_API_URL"] + "/chat.postMessage",
        json={"channel": "#bench", "text": body},
        headers={"Authorization": "Bearer " + os.environ["SLACK_BOT_TOKEN"]},
        timeout=(5, 30),
    )
    data: Any = reply.json()
    with _engine().begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO {NAIVE_TABLE} (message_id, channel, status, response_id)"
                " VALUES (:m, :c, :s, :r)"
            ),
            {"m": message_id, "c": channel, "s": reply.status_code, "r": str(data.get("ts"))},
        )


NAIVE_DDL = f"""
CREATE TABLE IF NOT EXISTS {NAIVE_TABLE} (
    id bigserial PRIMARY KEY,
    message_id uuid NOT NULL,
    channel text NOT NULL,
    status integer NOT NULL,
    response_id text,
    sent_at timestamptz NOT NULL DEFAULT now()
)
"""
