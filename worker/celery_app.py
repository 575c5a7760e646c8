"""The Celery app: JSON only, late acks, one queue per channel, one visibility timeout everywhere.

Crash semantics (celery-notes.md §3, docs/operations.md "Crash semantics"): tasks ack late, so a
message whose whole worker dies is delivered again after the visibility timeout (or replayed by the
outbox sweep, whichever comes first); a pool child killed mid-task is retried through
`task_retry_on_worker_lost` (bounded by the task's max_retries), its lease released by the main
process (tasks/receipts.py); the claim in `dispatches` keeps any other copy of a message from
calling the vendor while a live lease is held, and from calling it at all once the send is recorded.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from kombu import Queue  # type: ignore[attr-defined]

from config.settings import Settings, get_settings
from config.tables import CHANNELS

#: Celery's default queue: `comms.dispatch` listens there, so a producer with a bare
#: `Celery(broker=...).send_task("comms.dispatch", ...)` and no routing of ours reaches it.
DISPATCH_QUEUE = "celery"

#: Queue per channel, so a slow vendor cannot starve the others and operators scale each apart
#: (`-Q sms,email`); `receipts` and `maintenance` carry our own bookkeeping.
QUEUES = (DISPATCH_QUEUE, *CHANNELS, "receipts", "maintenance")

#: Task name -> queue: the one place routing is declared.
ROUTES = {
    "comms.dispatch": DISPATCH_QUEUE,
    **{f"comms.{channel}": channel for channel in CHANNELS},
    "comms.receipt": "receipts",
    "comms.fallback": DISPATCH_QUEUE,
    "comms.drain_deferred": "maintenance",
    "comms.sweep_outbox": "maintenance",
}


def celery_config(settings: Settings) -> dict[str, Any]:
    visibility = {"visibility_timeout": settings.comms_visibility_timeout}
    redis = settings.comms_broker_url.startswith(("redis://", "rediss://"))
    transport_options: dict[str, Any] = dict(visibility)
    if redis:
        # Redeliver a dead worker's messages promptly once the timeout has passed (kombu 5.7 sweeps
        # only every Nth call otherwise, lagging up to ~100 s).
        transport_options.update(unacked_restore_interval=5, unacked_restore_throttle=1)
    return {
        "broker_url": settings.comms_broker_url,
        "result_backend": settings.result_backend,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": dict(visibility),
        "visibility_timeout": settings.comms_visibility_timeout,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        # A pool child killed mid-send: retry the task (max_retries bounds it, after
        # default_retry_delay) rather than ack it as failed (the default) or requeue it for ever
        # (reject_on_worker_lost, which must stay off: not both).
        "task_retry_on_worker_lost": True,
        "task_reject_on_worker_lost": False,
        # Reserve one message per pool slot: a killed worker strands as few as possible.
        "worker_prefetch_multiplier": 1,
        # Cold shutdown (SIGQUIT, REMAP_SIGTERM=SIGQUIT, a second SIGTERM): let a send in flight
        # finish its HTTP call (connect + read timeouts), then push unacked messages back to Redis
        # instead of leaving them for the visibility timeout; also when only ETA retries are held.
        "worker_soft_shutdown_timeout": settings.comms_http_connect_timeout
        + settings.comms_http_read_timeout + 5.0,
        "worker_enable_soft_shutdown_on_idle": True,
        "task_ignore_result": True,
        "result_expires": 3600,
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": DISPATCH_QUEUE,
        "task_routes": {name: {"queue": queue} for name, queue in ROUTES.items()},
        "task_create_missing_queues": False,
        # Task events cost ~15 % of worker CPU (docs/scaling.md). Off by default: Flower switches
        # them on in running workers (its enable_events), or start workers with -E.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
    }


class CommsTask(Task):
    #: Celery writes repr(return value) for its success log line on every task, logged or not;
    #: a short bound keeps that from costing ≈ 0.3 ms per message (docs/scaling.md).
    resultrepr_maxsize = 120


def create_app(settings: Settings | None = None) -> Celery:
    app = Celery("meow-comms", include=["tasks"], task_cls=CommsTask)
    app.conf.update(celery_config(settings or get_settings()))
    from worker import logs, schedule

    app.conf.beat_schedule = schedule.beat_schedule()
    logs.quiet_expected_failures()
    return app


app = create_app()
