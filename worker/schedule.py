"""Beat schedule: the drains that move parked and stranded work. Run exactly one beat (two would
not send twice, the drains and the sweep lock their rows, but would do every run twice)."""

from __future__ import annotations

from typing import Any

from config.settings import get_settings


def beat_schedule() -> dict[str, dict[str, Any]]:
    every = get_settings().comms_drain_every
    return {
        "drain-deferred": {"task": "comms.drain_deferred", "schedule": every,
                           # A drain that could not run in time is skipped, not stacked up.
                           "options": {"expires": every}},
        # The outbox sweep: replays what the broker lost, writes receipts lost with a callback.
        "sweep-outbox": {"task": "comms.sweep_outbox", "schedule": every,
                         "options": {"expires": every}},
    }
