"""Beat-driven drains: parked work whose time has come goes back on its channel's queue."""

from __future__ import annotations

import logging
import socket
from datetime import datetime

from celery import Task

from channels.envelope import DispatchRequest
from config.settings import get_settings
from tasks.dispatch import route
from worker import clock
from worker.celery_app import app
from worker.store import deferral

log = logging.getLogger(__name__)


def drain_deferred_once(*, now: datetime | None = None, limit: int | None = None,
                        claimer: str | None = None) -> list[str]:
    """Claim due parked dispatches (committed first), then enqueue each; returns their ids."""
    settings = get_settings()
    due = deferral.claim_due(now=now or clock.now(), limit=limit or settings.comms_drain_batch,
                             claimer=claimer or socket.gethostname())
    for item in due:
        route(DispatchRequest.model_validate(item.request), round_no=item.round_no)
    return [str(item.message_id) for item in due]


@app.task(name="comms.drain_deferred", bind=True, acks_late=True, ignore_result=True)
def drain_deferred(self: Task) -> int:
    moved = drain_deferred_once(claimer=f"{self.request.hostname}:{self.request.id}")
    if moved:
        log.info("drained %d parked dispatches", len(moved))
    return len(moved)
