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


@app.task(name="comms.zendesk", bind=True, **_QUIET, **retry_options("zendesk"))
def send_zendesk(self: Task, message_id: str) -> Result:
    return deliver_message(self, "zendesk", message_id)


@app.task(name="comms.jira", bind=True, **_QUIET, **retry_options("jira"))
def send_jira(self: Task, message_id: str) -> Result:
    return deliver_message(self, "jira", message_id)


@app.task(name="comms.pagerduty", bind=True, **_QUIET, **retry_options("pagerduty"))
def send_pagerduty(self: Task, message_id: str) -> Result:
    return deliver_message(self, "pagerduty", message_id)


@app.task(name="comms.email", bind=True, **_QUIET, **retry_options("email"))
def send_email(self: Task, message_id: str) -> Result:
    return deliver_message(self, "email", message_id)


@app.task(name="comms.sms", bind=True, **_QUIET, **retry_options("sms"))
def send_sms(self: Task, message_id: str) -> Result:
    return deliver_message(self, "sms", message_id)


@app.task(name="comms.push", bind=True, **_QUIET, **retry_options("push"))
def send_push(self: Task, message_id: str) -> Result:
    return deliver_message(self, "push", message_id)
