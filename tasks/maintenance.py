"""Beat-driven drains: parked work whose time has come goes back on its channel's queue, and the
outbox sweep replays what the broker lost (docs/operations.md).

Both tasks are beat's: `max_retries=0`, because the next beat tick is their retry (a drain whose
worker died is not worth an ETA), and each run is bounded by COMMS_DRAIN_BATCH rows."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Task

from channels.envelope import DispatchRequest
from config.settings import get_settings
from config.tables import policies
from tasks.dispatch import route
from worker import clock
from worker.celery_app import app
from worker.store import deferral, outbox
from worker.store.models import utcnow

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


@app.task(name="comms.drain_deferred", bind=True, acks_late=True, ignore_result=True,
          max_retries=0)
def drain_deferred(self: Task) -> int:
    moved = drain_deferred_once(claimer=f"{self.request.hostname}:{self.request.id}")
    if moved:
        log.info("drained %d parked dispatches", len(moved))
    return len(moved)


@dataclass
class Sweep:
    """What one outbox sweep did (message ids as strings)."""

    replayed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)
    #: Parents whose lost fallback was started again.
    fallbacks: list[str] = field(default_factory=list)


def sweep_outbox_once(*, now: datetime | None = None, limit: int | None = None) -> Sweep:
    """Replay unfinished dispatches with no sign of life for COMMS_REPLAY_AFTER seconds (claimed and
    counted in one transaction, enqueued after its commit), close those past COMMS_MAX_REPLAYS as
    FAILED (with their fallback, as any final failure), write receipts lost with a callback, and
    start again the fallbacks whose message was lost (same derived id: still one fallback).

    A replay re-enqueues the same round with the same task id and try number as the lost message
    (a broker redelivery, made by us): the claim in `dispatches` keeps it from calling the vendor
    if the message was sent after all, or is still being sent."""
    from tasks.fallbacks import start_fallback

    settings = get_settings()
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.comms_replay_after)
    batch = limit or settings.comms_drain_batch
    replays, exhausted = outbox.claim_stale(now=now, older_than=cutoff, limit=batch,
                                            max_replays=settings.comms_max_replays)
    done = Sweep()
    for item in replays:
        route(DispatchRequest.model_validate(item.request), round_no=item.round_no,
              retries=item.retries)
        done.replayed.append(str(item.message_id))
    for lost in exhausted:
        start_fallback(lost.message_id, lost.reason)
        done.failed.append(str(lost.message_id))
    reconciled = outbox.reconcile_receipts(now=now, older_than=cutoff, limit=batch)
    done.reconciled.extend(str(mid) for mid in reconciled)
    falling_back = [ch for ch, pol in policies().items() if pol.on_final_failure == "fallback"]
    for parent in outbox.missing_fallbacks(now=now, older_than=cutoff, channels=falling_back,
                                           limit=batch):
        reason = parent.error or "failed"
        if start_fallback(parent.message_id,
                          reason if parent.state == "failed" else f"suppressed: {reason}"):
            done.fallbacks.append(str(parent.message_id))
    return done


@app.task(name="comms.sweep_outbox", bind=True, acks_late=True, ignore_result=True,
          max_retries=0)
def sweep_outbox(self: Task) -> dict[str, int]:
    done = sweep_outbox_once()
    if done.replayed or done.failed or done.reconciled or done.fallbacks:
        log.warning("outbox sweep: replayed %d, failed %d (replays exhausted), receipts "
                    "reconciled %d, lost fallbacks started %d", len(done.replayed),
                    len(done.failed), len(done.reconciled), len(done.fallbacks))
    return {"replayed": len(done.replayed), "failed": len(done.failed),
            "reconciled": len(done.reconciled), "fallbacks": len(done.fallbacks)}
