"""One Celery task per channel, each declaring its retry policy (config/retry_policies.toml)."""

from __future__ import annotations

from celery import Task

from tasks.delivery import DeliveryFailed, deliver_message, retry_options
from tasks.outcomes import Result
from worker.celery_app import app

#: Final failures are expected outcomes, already recorded: no traceback in the worker log.
_QUIET = {"throws": (DeliveryFailed,)}


@app.task(name="comms.slack", bind=True, **_QUIET, **retry_options("slack"))
def send_slack(self: Task, message_id: str) -> Result:
    return deliver_message(self, "slack", message_id)
